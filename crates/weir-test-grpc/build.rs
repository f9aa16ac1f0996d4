//! Compiles orders.proto with protox (this machine has no protoc), keeps the descriptor set for
//! tests that need reflection, and generates the tonic server and client from it.

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let proto_root = manifest_dir.join("../../examples/protos");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    // The Compiler's own encoding keeps the google.api.http options; a
    // prost_types::FileDescriptorSet would drop them (prost keeps no extensions).
    let mut compiler = match protox::Compiler::new([&proto_root]) {
        Ok(c) => c,
        Err(err) => panic!("cannot read {}: {err}", proto_root.display()),
    };
    compiler.include_imports(true);
    if let Err(err) = compiler.open_file("weir/test/v1/orders.proto") {
        // miette's report shows the file, line and column; the Debug of the error does not.
        panic!("orders.proto does not compile: {err}");
    }
    std::fs::write(
        out_dir.join("orders_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .expect("OUT_DIR is writable");
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("tonic code generation");
}
