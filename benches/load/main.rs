//! natter's load generator: starts the release server (or uses one already
//! running on this machine), drives one scenario over real WebSockets on
//! loopback, and reports what it saw from outside (throughput, latency
//! percentiles, lost and duplicated messages) and from inside (the server's
//! CPU time and memory from `/proc`, store commits from `/metrics`).
//!
//! ```text
//! cargo bench --bench load -- ingest   [--clients 50] [--in-flight 10] [--messages 5000]
//! cargo bench --bench load -- fanout   [--subscribers 1000] [--publishers 5] [--rate 500] [--duration-s 10]
//! cargo bench --bench load -- idle     [--connections 10000] [--rooms 10]
//! cargo bench --bench load -- recovery [--messages 10000]        # and --messages 100000
//! cargo bench --bench load -- mixed    [--rooms 200] [--users 2000] [--duration-s 30]
//! cargo bench --bench load -- churn    [--rooms 50000]
//! cargo bench --bench load -- SCENARIO --help                    # every option
//! ```
//!
//! - `ingest`: C clients, each in its own room, each keeping W sends in flight
//!   until it has M acks. Acked messages/s, ack latency (send → ack), rows in
//!   the database afterwards (must be C×M), server CPU per message.
//! - `fanout`: S subscribers and P publishers in one room; the publishers send
//!   R messages/s in total for D seconds, each text carrying its send time and
//!   a per-publisher sequence number. Deliveries/s, end-to-end latency, lost
//!   and duplicated deliveries (both must be 0), server CPU per delivery.
//! - `idle`: N connections that said `hello` into a few rooms and then only
//!   listen. Time to connect them all, server RSS per connection.
//! - `churn`: one connection joins and leaves R distinct rooms in turn. Server
//!   RSS before, at its sampled peak, and after the rooms' grace period.
//! - `recovery`: K messages seeded into the database between two server runs;
//!   one client reconnects with the `serverOffset` before them. Time from
//!   `hello` to `synced`, missing and duplicated (both must be 0), server RSS
//!   growth during the replay.
//! - `mixed`: a compressed busy hour: rooms of Zipf-distributed sizes, users
//!   in 1–3 rooms (some with a second tab) who type, save drafts, send
//!   (sometimes twice with the same `clientOffset`) and reconnect with their
//!   `serverOffset`. Everything above, with loss and duplication checked per
//!   connection against every acknowledged message.
//!
//! `cargo bench` builds `target/release/natter` along with this bench. Each run
//! starts it on 127.0.0.1:0 with a fresh SQLite file in a temp dir and
//! `--sends-per-10s 0 --max-connections 0 --max-connections-per-ip 0
//! --max-frame-bytes 65536` (plus `--server-arg=...`), reads its
//! `listening on http://HOST:PORT` line, runs the scenario, stops it with
//! SIGTERM and waits. `--url ws://HOST:PORT` targets a server already running
//! on this machine instead (`--pid` adds its CPU and memory, `--db` its row
//! counts). All traffic stays on loopback; connections beyond
//! `--conns-per-ip` come from 127.0.0.2, 127.0.0.3, ... Every loop is bounded
//! in count and time, and `--timeout-s` caps the whole run.
//!
//! Output: a readable summary, then one line `RESULT {json}` whose keys carry
//! their units. The exit code is 1 when a correctness check failed (rows,
//! lost, duplicated, missing, server exit code), 2 when the run itself failed.
//! "Server CPU" is utime+stime of the server process over the measured
//! window, in clock ticks (10 ms each), so windows under a second are coarse;
//! "peak RSS" is its VmHWM, reset at the start of the window. `client_cpu_pct`
//! is this process's own CPU: near 100 % per client thread, the load
//! generator, not the server, set the pace. `listen_overflows` counts
//! connects the kernel dropped because an accept queue was full.
//!
//! # Layout
//! - `main.rs`: the command line, dispatch to a scenario, the `RESULT` line.
//! - `ingest.rs`, `fanout.rs`, `idle.rs`, `recovery.rs`, `mixed.rs` (with
//!   `mixed/actor.rs` and `mixed/verdict.rs`): one scenario each, with its
//!   options.
//! - `client.rs`: the load clients' WebSockets, frames and handshakes.
//! - `server.rs`: the server process (through `natter-test-support`) or
//!   the one behind `--url`, and the database's row counts.
//! - `measure.rs`: the server seen from inside: `/proc` and `/metrics`.
//! - `stats.rs`: the clock, seeded randomness, histograms and rounding.

mod churn;
mod client;
mod fanout;
mod idle;
mod ingest;
mod measure;
mod mixed;
mod recovery;
mod server;
mod stats;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::{Map, Value};
use tokio::time::timeout;

use crate::stats::{Hist, epoch, ms, r3};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// natter load generator: run one scenario against the release server.
#[derive(Debug, Parser)]
#[command(name = "load", disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// Use a server already running on this machine (ws://HOST:PORT, loopback only).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// With --url: the server's process id, for its CPU time and memory.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// With --url: the server's database file, opened read-only for row counts.
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// The natter binary to start (default: target/release/natter).
    #[arg(long, global = true, value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Extra option for the started server (repeatable), e.g. --server-arg=--history-on-join=0.
    #[arg(
        long = "server-arg",
        global = true,
        allow_hyphen_values = true,
        value_name = "ARG"
    )]
    server_args: Vec<String>,
    /// Seed for every random choice (population, timings).
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Give up (and stop the server) after this many seconds.
    #[arg(long = "timeout-s", global = true, default_value_t = 900)]
    timeout_s: u64,
    /// Worker threads of the load generator (default: one per core).
    #[arg(long = "client-threads", global = true)]
    client_threads: Option<usize>,
    /// Connections per loopback source address: 127.0.0.1 first, then 127.0.0.2, ...
    #[arg(long = "conns-per-ip", global = true, default_value_t = 20_000)]
    conns_per_ip: usize,
    /// Keep the temp dir (database and server log) and print its path.
    #[arg(long, global = true)]
    keep: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Write throughput: clients in their own rooms, sends pipelined.
    Ingest(ingest::IngestArgs),
    /// Broadcast: publishers at a fixed rate into one room of many subscribers.
    Fanout(fanout::FanoutArgs),
    /// Memory per idle connection and time to connect them.
    Idle(idle::IdleArgs),
    /// Replay of a long backlog on reconnect.
    Recovery(recovery::RecoveryArgs),
    /// A compressed busy hour: Zipf rooms, typing, drafts, retries, reconnects.
    Mixed(mixed::MixedArgs),
    /// Memory of rooms nobody stays in: one connection joins and leaves many.
    Churn(churn::ChurnArgs),
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; a bare `cargo bench` gives no scenario.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() <= 1 {
        let _ = Cli::command().print_help();
        println!("\n(no scenario given: nothing to run)");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    epoch();
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let threads = cli.common.client_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let limit = Duration::from_secs(cli.common.timeout_s);
    let outcome = runtime.block_on(async { timeout(limit, run(&cli, nofile)).await });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(Ok(report)) => {
            report.print();
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Err(e)) => {
            eprintln!("load: error: {e}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!(
                "load: error: gave up after --timeout-s {}",
                cli.common.timeout_s
            );
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli, nofile: u64) -> Res<Report> {
    let bench = Bench::new(cli.common.clone(), nofile)?;
    match &cli.scenario {
        Scenario::Ingest(args) => ingest::run(&bench, args).await,
        Scenario::Fanout(args) => fanout::run(&bench, args).await,
        Scenario::Idle(args) => idle::run(&bench, args).await,
        Scenario::Recovery(args) => recovery::run(&bench, args).await,
        Scenario::Mixed(args) => mixed::run(&bench, args).await,
        Scenario::Churn(args) => churn::run(&bench, args).await,
    }
}

/// What every scenario shares: the options and a run id that keeps this
/// run's rooms and clientOffsets apart from any earlier run's.
struct Bench {
    common: Common,
    run: String,
    nofile: u64,
}

impl Bench {
    fn new(common: Common, nofile: u64) -> Res<Bench> {
        if common.conns_per_ip == 0 {
            return Err("--conns-per-ip must be at least 1".into());
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let run = format!(
            "{:06x}",
            (nanos ^ common.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & 0xff_ffff
        );
        Ok(Bench {
            common,
            run,
            nofile,
        })
    }

    /// Loopback source address for the `index`-th connection: 127.0.0.1
    /// (the kernel's choice) for the first block, then 127.0.0.2, ...
    fn source_for(&self, index: usize) -> Option<Ipv4Addr> {
        let block = index / self.common.conns_per_ip;
        (block > 0).then(|| Ipv4Addr::new(127, 0, 0, (1 + block).min(254) as u8))
    }

    /// Refuse a connection count this process cannot hold open.
    fn check_fds(&self, connections: usize) -> Res<()> {
        if connections as u64 + 256 > self.nofile {
            return Err(format!(
                "{connections} connections need more open files than this process may have ({}); \
                 raise the hard limit (ulimit -Hn) or ask for fewer",
                self.nofile
            )
            .into());
        }
        if self.common.conns_per_ip * 254 < connections {
            return Err("--conns-per-ip is too small for that many connections".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// A scenario's result: a readable summary and the figures for `RESULT`.
struct Report {
    scenario: &'static str,
    params: Value,
    duration_s: f64,
    figures: Map<String, Value>,
    lines: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn new(scenario: &'static str, params: Value) -> Report {
        Report {
            scenario,
            params,
            duration_s: 0.0,
            figures: Map::new(),
            lines: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn fig(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_string(), value.into());
    }

    /// `{prefix}_p50_ms`, `_p90_ms`, `_p99_ms`, `_max_ms` (null without samples).
    fn hist(&mut self, prefix: &str, hist: &Hist) {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            let value = (!hist.is_empty()).then(|| ms(hist.value_at_quantile(q)));
            self.fig(&format!("{prefix}_{name}_ms"), value);
        }
        let max = (!hist.is_empty()).then(|| ms(hist.max()));
        self.fig(&format!("{prefix}_max_ms"), max);
    }

    fn line(&mut self, line: String) {
        self.lines.push(line);
    }

    /// A correctness check: a failed one is listed and makes the exit code 1.
    fn check(&mut self, ok: bool, failure: String) {
        if !ok {
            self.failures.push(failure);
        }
    }

    fn print(&self) {
        println!("== natter load: {} {}", self.scenario, self.params);
        for line in &self.lines {
            println!("{line}");
        }
        if self.failures.is_empty() {
            println!("checks          all passed");
        }
        for failure in &self.failures {
            println!("CHECK FAILED    {failure}");
        }
        let mut result = Map::new();
        result.insert("scenario".into(), self.scenario.into());
        result.insert("params".into(), self.params.clone());
        result.insert("duration_s".into(), r3(self.duration_s).into());
        for (key, value) in &self.figures {
            result.insert(key.clone(), value.clone());
        }
        result.insert("ok".into(), self.failures.is_empty().into());
        result.insert("failures".into(), self.failures.clone().into());
        println!("RESULT {}", Value::Object(result));
    }
}
