//! The command line (contract §1): `run` (the default), `validate`, `explain`, `version`.
//! Exit codes: 0 clean stop, 1 invalid config or usage, 2 could not bind or start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use weir_config::{Overrides, ProcessEnv};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    about = "weir: an API gateway in one binary",
    disable_version_flag = true
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default command).
    Run(RunArgs),
    /// Check a configuration file without starting anything.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show which route a request would take, and why, without sending it.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The request method, e.g. GET.
        method: String,
        /// The request URL, e.g. http://api.example.com/v2/orders/5.
        url: String,
        /// A request header, 'Name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Print the version, git commit and enabled features.
    Version,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The configuration file [default: $WEIR_CONFIG, else ./weir.yaml].
    #[arg(
        short = 'c',
        long = "config",
        env = "WEIR_CONFIG",
        default_value = "weir.yaml"
    )]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Replace the first listener's address.
    #[arg(long)]
    listen: Option<String>,
    /// Replace admin.listen.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Replace observability.log.level (error, warn, info, debug, trace).
    #[arg(long)]
    log_level: Option<String>,
    /// Replace observability.log.format (json, text).
    #[arg(long)]
    log_format: Option<String>,
    /// Replace workers (runtime threads; 0 = one per CPU).
    #[arg(long)]
    workers: Option<usize>,
}

/// Parses the command line and runs the command.
#[must_use]
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Validate { config }) => validate(&config.config),
        Some(Command::Explain {
            config,
            method,
            url,
            headers,
        }) => explain(&config.config, &method, &url, &headers),
        Some(Command::Version) => {
            println!(
                "weir {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("WEIR_GIT_COMMIT")
            );
            println!("features: {}", crate::FEATURES.join(", "));
            ExitCode::SUCCESS
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match weir_config::load_file(path, &ProcessEnv, &Overrides::default()) {
        Ok(loaded) => {
            println!(
                "ok: {} routes, {} upstreams",
                loaded.routes.routes().len(),
                loaded.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            ExitCode::from(1)
        }
    }
}

fn explain(path: &std::path::Path, method: &str, url: &str, headers: &[String]) -> ExitCode {
    let loaded = match weir_config::load_file(path, &ProcessEnv, &Overrides::default()) {
        Ok(l) => l,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(1);
        }
    };
    match crate::explain::explain(&loaded, method, url, headers) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen.clone(),
        admin_listen: args.admin_listen.clone(),
        log_level: args.log_level.clone(),
        log_format: args.log_format.clone(),
        workers: args.workers,
    };
    let loaded = match weir_config::load_file(&args.config.config, &ProcessEnv, &overrides) {
        Ok(l) => l,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(1);
        }
    };
    crate::logging::init(&loaded.settings.log);
    let workers = match loaded.settings.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    // Thread per core, as nginx runs process per core: every worker is a current-thread
    // runtime with its own listening sockets and idle upstream connections, so a connection
    // is served start to end on one thread with no work stealing or cross-thread wake-ups.
    // This thread is worker 0 and also runs the admin API, health checks and signals.
    let main_rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (halt, halt_rx) = tokio::sync::watch::channel(false);
    let mut handles = vec![main_rt.handle().clone()];
    let mut threads = Vec::new();
    for index in 1..workers {
        match spawn_worker(index, halt_rx.clone()) {
            Ok((handle, thread)) => {
                handles.push(handle);
                threads.push(thread);
            }
            Err(e) => {
                eprintln!("cannot start worker thread {index}: {e}");
                let _ = halt.send(true);
                return ExitCode::from(2);
            }
        }
    }
    let path = args.config.config.clone();
    let source = crate::reload::Source {
        path: path.clone(),
        load: std::sync::Arc::new(move || weir_config::load_file(&path, &ProcessEnv, &overrides)),
    };
    let code = main_rt.block_on(serve(loaded, &handles, source));
    let _ = halt.send(true);
    for t in threads {
        let _ = t.join();
    }
    code
}

/// Starts worker thread `index` with its own current-thread runtime, which runs until `halt`.
fn spawn_worker(
    index: usize,
    mut halt: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(tokio::runtime::Handle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("weir-worker-{index}"))
        .spawn(move || {
            weir_infra::client::set_worker_index(index);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async move {
                let _ = halt.wait_for(|h| *h).await;
            });
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("worker thread exited at start"))??;
    Ok((handle, thread))
}

async fn serve(
    loaded: weir_config::Loaded,
    workers: &[tokio::runtime::Handle],
    source: crate::reload::Source,
) -> ExitCode {
    let version = loaded.version.clone();
    let workers_count = workers.len();
    let running = match crate::start::start_on(loaded, workers, Some(source)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(version = %version, workers = workers_count, "weir started");
    crate::signals::wait_for_stop(&running.control).await;
    tracing::info!("draining: no new connections, waiting for in-flight requests");
    if running.shutdown().await {
        tracing::info!("stopped cleanly");
    } else {
        tracing::warn!("shutdown_grace elapsed with requests still in flight; stopping anyway");
    }
    ExitCode::SUCCESS
}
