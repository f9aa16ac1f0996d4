//! The `weir` binary. Everything lives in the library; see `weir::cli`.

#[cfg(all(feature = "jemalloc", target_os = "linux"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
