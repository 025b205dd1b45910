//! `quernd`, the quern daemon: parses flags, sets up logging, binds the
//! socket and runs [`quern_daemon::run`] until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use quern_daemon::config::{Config, Overrides};
use tokio_util::sync::CancellationToken;

/// mimalloc keeps a heap per thread: under glibc's malloc the CPU pool's
/// threads waited on each other's arena locks (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The quern background job daemon.
#[derive(Parser, Debug)]
#[command(name = "quernd", version, about)]
struct Args {
    /// The Unix socket to serve on [default: $XDG_RUNTIME_DIR/quern/quernd.sock]
    #[arg(long, env = "QUERN_SOCKET")]
    socket: Option<PathBuf>,
    /// Where the job database and logs live [default: $XDG_STATE_HOME/quern]
    #[arg(long, env = "QUERN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A TOML configuration file
    #[arg(long)]
    config: Option<PathBuf>,
    /// How many jobs may run at once [default: number of CPUs]
    #[arg(long)]
    concurrency: Option<usize>,
}

/// mimalloc's option numbers (`mi_option_e` in mimalloc 2's `mimalloc.h`;
/// libmimalloc-sys names only some of them).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Memory freed goes back to the kernel at once and arenas are committed
    // as used: with mimalloc's defaults quernd held 63 MiB with 100k jobs
    // queued (P5's limit is 64 MiB), 43 MiB with these.
    // SAFETY: mi_option_set only stores the option's value; it is called
    // before any thread but this one exists.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
    let args = Args::parse();
    init_tracing();
    quern_daemon::platform::ignore_file_size_signal();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quernd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(Overrides {
        state_dir: args.state_dir,
        socket: args.socket,
        concurrency: args.concurrency,
        config_file: args.config,
    })?;
    // Bind before the runtime starts any threads: binding sets the umask
    // for a moment, which is process-wide.
    let listener = quern_daemon::bind(&config.socket)?;
    let socket = config.socket.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quernd")
        .build()?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;
        quern_daemon::run(config, listener, shutdown).await?;
        anyhow::Ok(())
    });
    // Leave no socket file behind for the next start to puzzle over.
    let _ = std::fs::remove_file(&socket);
    result
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// Logs to the journal when systemd started us with its journal attached,
/// otherwise to stderr. `RUST_LOG` filters either way.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
    }
}
