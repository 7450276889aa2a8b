//! The server a scenario talks to: natter started through
//! `natter-test-support` with a fresh database in a temp dir and the
//! benchmark's options, stopped with SIGTERM, or the one behind `--url`; and
//! the rows its database holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use natter_test_support::{Launch, Server};

use crate::client::Target;
use crate::stats::r3;
use crate::{Bench, Common, Report, Res};

/// Options the server always gets in a benchmark: no rate limit, no
/// connection caps, the default frame limit. `--server-arg` overrides them.
const BENCH_FLAGS: &[(&str, &str)] = &[
    ("--sends-per-10s", "0"),
    ("--max-connections", "0"),
    ("--max-connections-per-ip", "0"),
    ("--max-frame-bytes", "65536"),
];
/// Longest the server may take to print its address, or to exit after SIGTERM.
const SERVER_WAIT: Duration = Duration::from_secs(30);

/// How the server stopped.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    pub exit_code: Option<i32>,
    pub shutdown_ms: f64,
}

/// Start natter on 127.0.0.1:0 with a fresh SQLite file in a temp dir
/// (`natter-load-*`, holding its log too), and wait for its address.
pub fn start(bench: &Bench, scenario_flags: &[(&str, &str)]) -> Res<Server> {
    let dir = tempfile::Builder::new().prefix("natter-load-").tempdir()?;
    let db = dir.path().join("chat.db");
    let server = Launch::new(natter_bin(&bench.common)?)
        .args(server_args(&bench.common, scenario_flags))
        .wait(SERVER_WAIT)
        .start_in(dir, db)?;
    Ok(server)
}

/// Where a server started here listens, and its process.
pub fn target(server: &Server) -> Res<Target> {
    Ok(Target::local(server.addr.parse()?, server.pid()))
}

/// SIGTERM, then wait for the exit (SIGKILL after `SERVER_WAIT`, an error).
/// The wait blocks this thread, so the runtime is told.
pub fn stop(server: &mut Server) -> Res<Stopped> {
    let stopped = tokio::task::block_in_place(|| server.stop())?;
    Ok(Stopped {
        exit_code: stopped.status.code(),
        shutdown_ms: r3(stopped.took.as_secs_f64() * 1000.0),
    })
}

/// The server binary: `--bin`, else the release build cargo made for this
/// bench; built with `cargo build --release` if it is missing.
fn natter_bin(common: &Common) -> Res<PathBuf> {
    if let Some(bin) = &common.bin {
        if bin.exists() {
            return Ok(bin.clone());
        }
        return Err(format!("--bin {}: no such file", bin.display()).into());
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        PathBuf::from(env!("CARGO_BIN_EXE_natter")),
        manifest.join("target/release/natter"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    eprintln!("load: target/release/natter is missing; running `cargo build --release`");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--release", "--bin", "natter"])
        .current_dir(manifest)
        .status();
    match candidates.iter().find(|p| p.exists()) {
        Some(found) if built.is_ok_and(|s| s.success()) => Ok(found.clone()),
        _ => Err("target/release/natter is missing: run `cargo build --release` first".into()),
    }
}

/// The server's options: the benchmark flags, the scenario's, then the
/// user's `--server-arg`s, which replace a default of the same name.
fn server_args(common: &Common, scenario: &[(&str, &str)]) -> Vec<String> {
    let given: Vec<&str> = common
        .server_args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let mut args = Vec::new();
    for (flag, value) in BENCH_FLAGS.iter().chain(scenario) {
        if !given.contains(flag) {
            args.push((*flag).to_string());
            args.push((*value).to_string());
        }
    }
    args.extend(common.server_args.iter().cloned());
    args
}

/// The server a scenario talks to: started here with a fresh database, or
/// the one behind `--url`.
pub struct Env {
    pub target: Target,
    server: Option<Server>,
    pub db: Option<PathBuf>,
    stopped: Option<Stopped>,
}

impl Env {
    pub async fn open(bench: &Bench, scenario_flags: &[(&str, &str)]) -> Res<Env> {
        if let Some(url) = &bench.common.url {
            return Ok(Env {
                target: Target::external(url, bench.common.pid).await?,
                server: None,
                db: bench.common.db.clone(),
                stopped: None,
            });
        }
        let server = start(bench, scenario_flags)?;
        eprintln!("load: server pid {} on {}", server.pid(), server.addr);
        Ok(Env {
            target: target(&server)?,
            db: Some(server.db.clone()),
            server: Some(server),
            stopped: None,
        })
    }

    /// Stop the server if this run started it (once).
    pub fn stop(&mut self) -> Res<()> {
        if let Some(server) = self.server.as_mut().filter(|s| s.child.is_some()) {
            self.stopped = Some(stop(server)?);
        }
        Ok(())
    }

    /// Shutdown figures and checks; keeps the temp dir with `--keep`.
    pub fn finish(&mut self, bench: &Bench, report: &mut Report) {
        stopped_figures(self.stopped, report);
        if bench.common.keep
            && let Some(server) = self.server.as_mut()
        {
            report.line(format!("kept            {}", server.keep_dir().display()));
        }
    }
}

pub fn stopped_figures(stopped: Option<Stopped>, report: &mut Report) {
    if let Some(stopped) = stopped {
        report.fig("shutdown_ms", stopped.shutdown_ms);
        report.fig("server_exit_code", stopped.exit_code);
        report.line(format!(
            "shutdown        {:.0} ms after SIGTERM, exit code {:?}",
            stopped.shutdown_ms, stopped.exit_code
        ));
        report.check(
            stopped.exit_code == Some(0),
            format!("the server exited with {:?}, not 0", stopped.exit_code),
        );
    }
}

/// Messages stored per room (read-only), for rooms starting with `prefix`.
pub fn rows_by_room(db: &Path, prefix: &str) -> Res<HashMap<String, u64>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT room, count(*) FROM messages GROUP BY room")?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
    })?;
    let mut counts = HashMap::new();
    for row in rows {
        let (room, count) = row?;
        if room.starts_with(prefix) {
            counts.insert(room, count);
        }
    }
    Ok(counts)
}
