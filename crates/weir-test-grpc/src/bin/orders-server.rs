//! The order service of `examples/protos/weir/test/v1/orders.proto` as a standalone process,
//! for benchmarks (`bench/grpc.sh`) and manual tries:
//!
//! ```text
//! orders-server --listen 127.0.0.1:19180 [--threads N]
//! ```
//!
//! Plaintext HTTP/2 with prior knowledge (h2c), the same fixed answers as
//! [`weir_test_grpc::TestServer`]. It prints `listening on ADDR` once it accepts connections
//! and runs until SIGTERM or Ctrl-C; SIGUSR1 prints `orders-server: calls N`.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use weir_test_grpc::TestServer;

const USAGE: &str = "usage: orders-server --listen ADDR:PORT [--threads N]\n\
    \n  --listen ADDR:PORT  where to listen (plaintext HTTP/2, h2c) [127.0.0.1:50051]\
    \n  --threads N         tokio worker threads [the CPUs this process may run on]";

struct Args {
    listen: SocketAddr,
    threads: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 50051).into();
    let mut threads = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "--listen" | "-l" => {
                let text = value("an address")?;
                listen = text
                    .parse()
                    .map_err(|err| format!("--listen {text}: {err}"))?;
            }
            "--threads" => {
                let text = value("a number")?;
                match text.parse::<usize>() {
                    Ok(n) if n > 0 => threads = Some(n),
                    _ => return Err(format!("--threads {text}: not a positive number")),
                }
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(Args { listen, threads })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("orders-server: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("orders-server: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("orders-server: cannot listen on {addr}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let server = TestServer::start_on(listener).await;
    println!("orders-server: listening on {}", server.addr);
    let stopped_by = run_until_stopped(&server).await;
    println!(
        "orders-server: {stopped_by}, stopping after {} calls",
        server.calls()
    );
    drop(server);
    ExitCode::SUCCESS
}

/// Runs until SIGTERM or Ctrl-C (SIGINT) and names the one that came. On SIGUSR1 it prints
/// `orders-server: calls N` (calls served so far) and goes on: a benchmark compares that
/// with the client's count to prove that every success it counted reached the service.
#[cfg(unix)]
async fn run_until_stopped(server: &TestServer) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut usr1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(term), Ok(usr1)) => (term, usr1),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("orders-server: cannot watch SIGTERM/SIGUSR1 ({err}); Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = tokio::signal::ctrl_c() => return "SIGINT",
            _ = usr1.recv() => println!("orders-server: calls {}", server.calls()),
        }
    }
}

#[cfg(not(unix))]
async fn run_until_stopped(_server: &TestServer) -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
