//! The `natter` binary: parse the command line, set up logging, open the store, bind, serve, exit.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use natter::App;
use natter::config::{BackupArgs, Cli, Command, ServeConfig};
use tokio::net::{TcpListener, TcpSocket};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, exit 1: clap's usage block is noise in a service log.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("natter: error: {first} (see natter --help)");
            return ExitCode::FAILURE;
        }
    };
    init_logging();
    if let Some(Command::Backup(args)) = cli.command {
        return backup(&args);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("natter: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli.serve)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("natter: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn backup(args: &BackupArgs) -> ExitCode {
    match natter::store::backup(&args.db, &args.dest) {
        Ok(report) => {
            println!(
                "backed up {} to {}: {} messages, newest id {}, {} bytes",
                args.db.display(),
                args.dest.display(),
                report.messages,
                report.newest_id,
                report.bytes
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("natter: error: backup failed: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    let addr = config.addr.clone();
    // Every WebSocket is a file descriptor; the common soft limit of 1,024
    // would cap natter far below what it can hold.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (config.max_connections as u64).saturating_add(256) > limit => {
            tracing::warn!(
                limit,
                max_connections = config.max_connections,
                "the open-file limit is below --max-connections; raise it (LimitNOFILE=) or lower --max-connections"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot raise the open-file limit"),
    }
    let app = App::open(config)?;
    let listener = bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let shutdown =
        natter::shutdown::listen().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    // The one line on stdout: scripts and tests read the real port from it.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{local}");
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!(%local, "natter is serving");
    app.serve(listener, shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

/// Pending connections the kernel queues before natter accepts them. The
/// usual default of 128 overflows when every open page reconnects at once
/// after a restart, and each overflowed connect then waits a second for its
/// SYN to be retried.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let socket = if candidate.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A restarted natter can bind while old connections are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    }))
}

/// Logs go to stderr; `RUST_LOG` overrides the default level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("natter=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
