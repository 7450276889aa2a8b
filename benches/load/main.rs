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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, CommandFactory, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;
type Ws = WebSocketStream<TcpStream>;
/// Latencies in microseconds.
type Hist = Histogram<u32>;

/// Options the server always gets in a benchmark: no rate limit, no
/// connection caps, the default frame limit. `--server-arg` overrides them.
const BENCH_FLAGS: &[(&str, &str)] = &[
    ("--sends-per-10s", "0"),
    ("--max-connections", "0"),
    ("--max-connections-per-ip", "0"),
    ("--max-frame-bytes", "65536"),
];
/// Longest a single connect + `hello` + `synced` may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);
/// Longest the server may take to print its address, or to exit after SIGTERM.
const SERVER_WAIT: Duration = Duration::from_secs(30);
/// Client read buffer per connection: frames are small, and `idle` holds many.
const CLIENT_READ_BUFFER: usize = 8 * 1024;

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
    pid: Option<i32>,
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
    Ingest(IngestArgs),
    /// Broadcast: publishers at a fixed rate into one room of many subscribers.
    Fanout(FanoutArgs),
    /// Memory per idle connection and time to connect them.
    Idle(IdleArgs),
    /// Replay of a long backlog on reconnect.
    Recovery(RecoveryArgs),
    /// A compressed busy hour: Zipf rooms, typing, drafts, retries, reconnects.
    Mixed(MixedArgs),
}

#[derive(Debug, Clone, Args)]
struct IngestArgs {
    /// Clients (C), each in its own room.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Unacknowledged sends each client keeps in flight (W).
    #[arg(long = "in-flight", default_value_t = 10)]
    in_flight: usize,
    /// Messages each client sends (M).
    #[arg(long, default_value_t = 5_000)]
    messages: u64,
    /// Bytes of text per message.
    #[arg(long = "text-bytes", default_value_t = 64)]
    text_bytes: usize,
}

#[derive(Debug, Clone, Args)]
struct FanoutArgs {
    /// Subscribers (S): connections that only listen.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Publishers (P), sharing the rate evenly.
    #[arg(long, default_value_t = 5)]
    publishers: usize,
    /// Messages per second offered in total (R).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds of publishing (D).
    #[arg(long = "duration-s", default_value_t = 10.0)]
    duration_s: f64,
    /// Longest wait for the last deliveries after publishing stops.
    #[arg(long = "drain-s", default_value_t = 10.0)]
    drain_s: f64,
    /// Bytes of text per message.
    #[arg(long = "text-bytes", default_value_t = 64)]
    text_bytes: usize,
}

#[derive(Debug, Clone, Args)]
struct IdleArgs {
    /// Connections (N) to open and keep open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Handshakes in progress at once. Above 128 (the server's listen
    /// backlog) the accept queue overflows and clients wait for SYN retries.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Seconds to wait after the last `synced` before sampling memory.
    #[arg(long = "settle-s", default_value_t = 3.0)]
    settle_s: f64,
}

#[derive(Debug, Clone, Args)]
struct RecoveryArgs {
    /// Messages (K) seeded into the database while the server is down.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Clients replaying the backlog at the same time.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Bytes of text per seeded message.
    #[arg(long = "text-bytes", default_value_t = 100)]
    text_bytes: usize,
}

#[derive(Debug, Clone, Args)]
struct MixedArgs {
    /// Rooms (R); their sizes follow a Zipf law.
    #[arg(long, default_value_t = 200)]
    rooms: usize,
    /// Users (U), each in 1–3 rooms.
    #[arg(long, default_value_t = 2_000)]
    users: usize,
    /// Seconds of activity (D).
    #[arg(long = "duration-s", default_value_t = 30.0)]
    duration_s: f64,
    /// Zipf exponent of room popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Mean pause before each of a user's messages (typing adds ~1.2 s).
    #[arg(long = "send-every-s", default_value_t = 20.0)]
    send_every_s: f64,
    /// Mean seconds between a connection's reconnects (0: never).
    #[arg(long = "reconnect-every-s", default_value_t = 120.0)]
    reconnect_every_s: f64,
    /// Percent of sends sent twice with the same clientOffset (a retry).
    #[arg(long = "retry-pct", default_value_t = 5.0)]
    retry_pct: f64,
    /// Percent of messages preceded by typing and draft frames.
    #[arg(long = "typing-pct", default_value_t = 60.0)]
    typing_pct: f64,
    /// Percent of compositions abandoned (draft cleared, nothing sent).
    #[arg(long = "abandon-pct", default_value_t = 10.0)]
    abandon_pct: f64,
    /// Percent of users with a second tab (same nick, same rooms).
    #[arg(long = "second-tab-pct", default_value_t = 10.0)]
    second_tab_pct: f64,
    /// Longest wait for acks and deliveries after the activity stops.
    #[arg(long = "drain-s", default_value_t = 10.0)]
    drain_s: f64,
    /// Bytes of text per message.
    #[arg(long = "text-bytes", default_value_t = 80)]
    text_bytes: usize,
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
        Scenario::Ingest(args) => ingest(&bench, args).await,
        Scenario::Fanout(args) => fanout(&bench, args).await,
        Scenario::Idle(args) => idle(&bench, args).await,
        Scenario::Recovery(args) => recovery(&bench, args).await,
        Scenario::Mixed(args) => mixed(&bench, args).await,
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

    /// The server binary: `--bin`, else the release build cargo made for this
    /// bench; built with `cargo build --release` if it is missing.
    fn natter_bin(&self) -> Res<PathBuf> {
        if let Some(bin) = &self.common.bin {
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
    fn server_args(&self, scenario: &[(&str, &str)]) -> Vec<String> {
        let given: Vec<&str> = self
            .common
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
        args.extend(self.common.server_args.iter().cloned());
        args
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
// Clock, randomness, histograms
// ---------------------------------------------------------------------------

/// The one time base of the process: send times in message texts and
/// receive times are both measured from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// SplitMix64: small, fast, and the same sequence for the same `--seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x9e37_79b9_7f4a_7c15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    fn percent(&mut self, pct: f64) -> bool {
        self.unit() * 100.0 < pct
    }
    /// Exponentially distributed wait with the given mean (a Poisson process).
    fn exp(&mut self, mean_s: f64) -> Duration {
        Duration::from_secs_f64((-mean_s * (1.0 - self.unit()).ln()).clamp(0.0, 86_400.0))
    }
}

fn new_hist() -> Hist {
    // 2 significant digits (1 % resolution) keeps a histogram per connection small.
    let mut hist = Histogram::new_with_bounds(1, 3_600_000_000, 2)
        .expect("constant histogram bounds are valid");
    hist.auto(true);
    hist
}

fn record(hist: &mut Hist, us: u64) {
    hist.saturating_record(us.max(1));
}

fn merge(into: &mut Hist, from: &Hist) {
    // Same bounds everywhere and auto-resize on: adding cannot fail.
    let _ = into.add(from);
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Rounded to 3 decimals, for JSON and the summary.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(kib: u64) -> f64 {
    r3(kib as f64 / 1024.0)
}

fn hist_text(hist: &Hist) -> String {
    if hist.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.9)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        hist.len()
    )
}

// ---------------------------------------------------------------------------
// Frames and connections
// ---------------------------------------------------------------------------

/// The fields of a server frame the scenarios look at; the rest is skipped.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, rename = "clientOffset", borrow)]
    client_offset: Option<Cow<'a, str>>,
    #[serde(default, rename = "serverOffset")]
    server_offset: Option<i64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Cow<'a, str>>,
}

fn parse(text: &str) -> Res<Frame<'_>> {
    serde_json::from_str(text).map_err(|e| {
        let start: String = text.chars().take(120).collect();
        format!("unexpected frame from the server ({e}): {start}").into()
    })
}

/// The send frame. Rooms, texts and offsets made here are plain ASCII without
/// quotes or backslashes, so no escaping is needed.
fn send_frame(room: &str, text: &str, client_offset: &str) -> String {
    format!(r#"{{"type":"send","room":"{room}","text":"{text}","clientOffset":"{client_offset}"}}"#)
}

/// `head` padded with `x` to `bytes` (never shorter than `head`).
fn padded(head: String, bytes: usize) -> String {
    let mut text = head;
    if text.len() < bytes {
        text.push(' ');
        while text.len() < bytes {
            text.push('x');
        }
    }
    text
}

/// Where to connect, and what is known about the server behind it.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    ws_url: String,
    metrics_url: String,
    /// The server's process, when it runs on this machine and is known.
    pid: Option<i32>,
}

impl Target {
    fn local(addr: SocketAddr, pid: i32) -> Target {
        Target {
            addr,
            ws_url: format!("ws://{addr}/ws"),
            metrics_url: format!("http://{addr}/metrics"),
            pid: Some(pid),
        }
    }

    /// `ws://HOST:PORT[/ws]`, which must resolve to a loopback address.
    async fn external(url: &str, pid: Option<i32>) -> Res<Target> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or("--url must look like ws://127.0.0.1:3000")?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr = tokio::net::lookup_host(host_port)
            .await
            .map_err(|e| format!("--url {url}: {e}"))?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| format!("--url {url}: the load generator only targets loopback"))?;
        Ok(Target {
            addr,
            ws_url: format!("ws://{host_port}/ws"),
            metrics_url: format!("http://{host_port}/metrics"),
            pid,
        })
    }
}

/// Open a WebSocket to the target, from `source` when given.
async fn open_ws(target: &Target, source: Option<Ipv4Addr>) -> Res<Ws> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (Some(ip), true) = (source, target.addr.is_ipv4()) {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(target.ws_url.as_str(), stream, Some(config))
            .await?;
    Ok(ws)
}

/// The next text frame; `None` once the connection is closed. Cancel-safe.
async fn recv_text(ws: &mut Ws) -> Res<Option<tokio_tungstenite::tungstenite::Utf8Bytes>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Some(text)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn send_text(ws: &mut Ws, text: String) -> Res<()> {
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// Say `hello` and read until `synced`, handing every frame before it to
/// `seen`. Returns `synced.serverOffset`. The caller bounds the time.
async fn hello(
    ws: &mut Ws,
    nick: &str,
    rooms: &[&str],
    server_offset: Option<i64>,
    mut seen: impl FnMut(&Frame<'_>),
) -> Res<i64> {
    let mut frame = json!({"type": "hello", "nick": nick, "rooms": rooms});
    if let Some(offset) = server_offset {
        frame["serverOffset"] = offset.into();
    }
    send_text(ws, frame.to_string()).await?;
    loop {
        let text = recv_text(ws)
            .await?
            .ok_or("the server closed the connection during the handshake")?;
        let frame = parse(&text)?;
        match &*frame.kind {
            "synced" => return Ok(frame.server_offset.unwrap_or(0)),
            "error" => {
                let code = frame.code.as_deref().unwrap_or("?");
                return Err(format!("hello refused: {code}").into());
            }
            _ => seen(&frame),
        }
    }
}

/// Connect and say `hello`, within `HANDSHAKE_WAIT`.
async fn join(
    target: &Target,
    source: Option<Ipv4Addr>,
    nick: &str,
    rooms: &[&str],
    server_offset: Option<i64>,
) -> Res<Ws> {
    timeout(HANDSHAKE_WAIT, async {
        let mut ws = open_ws(target, source).await?;
        hello(&mut ws, nick, rooms, server_offset, |_| {}).await?;
        Ok(ws)
    })
    .await
    .map_err(|_| "connect + hello took longer than 30 s")?
}

/// Connect `count` clients with at most `parallel` handshakes at once.
async fn join_many(
    bench: &Bench,
    target: &Target,
    count: usize,
    parallel: usize,
    first_index: usize,
    who: impl Fn(usize) -> (String, String),
) -> Res<Vec<Ws>> {
    let results: Vec<Res<Ws>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (nick, room) = who(i);
            let source = bench.source_for(first_index + i);
            async move { join(target, source, &nick, &[room.as_str()], None).await }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// A natter process started by this run; killed if dropped while running.
struct Server {
    child: Option<Child>,
    pid: i32,
    addr: SocketAddr,
    log: PathBuf,
}

/// How the server stopped.
#[derive(Debug, Clone, Copy)]
struct Stopped {
    exit_code: Option<i32>,
    shutdown_ms: f64,
}

impl Server {
    /// Start `bin` on 127.0.0.1:0 with `db`, logging to `log`, and wait for its address.
    fn start(bin: &Path, db: &Path, log: &Path, args: &[String]) -> Res<Server> {
        let log_file = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut child = Command::new(bin)
            .args(["--addr", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("the server has no stdout")?;
        let mut server = Server {
            pid: child.id() as i32,
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(SERVER_WAIT) {
            Ok(addr) => server.addr = addr.parse()?,
            Err(_) => {
                return Err(format!(
                    "the server printed no `listening on` line; its log ({}):\n{}",
                    server.log.display(),
                    log_tail(&server.log)
                )
                .into());
            }
        }
        Ok(server)
    }

    fn target(&self) -> Target {
        Target::local(self.addr, self.pid)
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `SERVER_WAIT`).
    async fn stop(&mut self) -> Res<Stopped> {
        let mut child = self.child.take().ok_or("the server was already stopped")?;
        let started = Instant::now();
        // SAFETY: kill(2) with our own child's pid; it touches no memory of ours.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Stopped {
                    exit_code: status.code(),
                    shutdown_ms: r3(started.elapsed().as_secs_f64() * 1000.0),
                });
            }
            if started.elapsed() > SERVER_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the server did not exit within 30 s of SIGTERM and was killed; log: {}",
                    self.log.display()
                )
                .into());
            }
            sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The server a scenario talks to: started here with a fresh database, or
/// the one behind `--url`.
struct Env {
    target: Target,
    server: Option<Server>,
    dir: Option<tempfile::TempDir>,
    db: Option<PathBuf>,
    stopped: Option<Stopped>,
}

impl Env {
    async fn open(bench: &Bench, scenario_flags: &[(&str, &str)]) -> Res<Env> {
        if let Some(url) = &bench.common.url {
            return Ok(Env {
                target: Target::external(url, bench.common.pid).await?,
                server: None,
                dir: None,
                db: bench.common.db.clone(),
                stopped: None,
            });
        }
        let dir = tempfile::Builder::new().prefix("natter-load-").tempdir()?;
        let db = dir.path().join("chat.db");
        let log = dir.path().join("server.log");
        let server = Server::start(
            &bench.natter_bin()?,
            &db,
            &log,
            &bench.server_args(scenario_flags),
        )?;
        eprintln!("load: server pid {} on {}", server.pid, server.addr);
        Ok(Env {
            target: server.target(),
            server: Some(server),
            dir: Some(dir),
            db: Some(db),
            stopped: None,
        })
    }

    /// Stop the server if this run started it.
    async fn stop(&mut self) -> Res<()> {
        if let Some(mut server) = self.server.take() {
            self.stopped = Some(server.stop().await?);
        }
        Ok(())
    }

    /// Shutdown figures and checks; keeps the temp dir with `--keep`.
    fn finish(&mut self, bench: &Bench, report: &mut Report) {
        stopped_figures(self.stopped, report);
        if bench.common.keep
            && let Some(dir) = self.dir.take()
        {
            report.line(format!("kept            {}", dir.keep().display()));
        }
    }
}

fn stopped_figures(stopped: Option<Stopped>, report: &mut Report) {
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
fn rows_by_room(db: &Path, prefix: &str) -> Res<HashMap<String, u64>> {
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

// ---------------------------------------------------------------------------
// Measuring the server from inside: /proc and /metrics
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct ProcSample {
    cpu_us: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// utime+stime (all threads) and VmRSS/VmHWM of a process.
fn read_proc(pid: i32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(ProcSample {
        cpu_us: (utime + stime) * 1_000_000 / clock_ticks_per_s(),
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// Connections the kernel refused because an accept queue was full (every
/// listener in this network namespace, so other processes' too). Each one
/// costs its client a SYN retry after 1 s or more.
fn listen_overflows() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let at = names
                .split_whitespace()
                .position(|n| n == "ListenOverflows")?;
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// Reset VmHWM to the current RSS, so the next reading is the window's peak.
fn reset_peak_rss(pid: i32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn self_pid() -> i32 {
    std::process::id() as i32
}

/// The counters of `/metrics` the reports use.
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    messages: f64,
    duplicates: f64,
    replayed: f64,
    commits: f64,
    commit_seconds: f64,
}

async fn scrape(target: &Target) -> Option<Scrape> {
    let fetch = async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        client.get(&target.metrics_url).send().await?.text().await
    };
    let body = timeout(Duration::from_secs(5), fetch).await.ok()?.ok()?;
    let mut scrape = Scrape::default();
    for line in body.lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match name {
            "natter_messages_total" => scrape.messages = value,
            "natter_duplicate_sends_total" => scrape.duplicates = value,
            "natter_replayed_messages_total" => scrape.replayed = value,
            "natter_store_commit_seconds_count" => scrape.commits = value,
            "natter_store_commit_seconds_sum" => scrape.commit_seconds = value,
            _ => {}
        }
    }
    Some(scrape)
}

/// The measured window: samples taken at its start.
struct Window {
    started: Instant,
    server: Option<ProcSample>,
    client: Option<ProcSample>,
    metrics: Option<Scrape>,
    peak_reset: bool,
    overflows: Option<u64>,
}

/// Samples at the start and end of the window.
struct Measured {
    secs: f64,
    server: Option<(ProcSample, ProcSample)>,
    client_cpu_us: Option<u64>,
    peak_reset: bool,
    metrics: Option<(Scrape, Scrape)>,
    listen_overflows: Option<u64>,
}

impl Window {
    async fn begin(target: &Target) -> Window {
        let metrics = scrape(target).await;
        let peak_reset = target.pid.is_some_and(reset_peak_rss);
        Window {
            server: target.pid.and_then(read_proc),
            client: read_proc(self_pid()),
            metrics,
            peak_reset,
            overflows: listen_overflows(),
            started: Instant::now(),
        }
    }

    async fn end(&self, target: &Target) -> Measured {
        let secs = self.started.elapsed().as_secs_f64();
        let server_after = target.pid.and_then(read_proc);
        let client_after = read_proc(self_pid());
        let metrics_after = scrape(target).await;
        Measured {
            secs,
            server: self.server.zip(server_after),
            client_cpu_us: self
                .client
                .zip(client_after)
                .map(|(a, b)| b.cpu_us.saturating_sub(a.cpu_us)),
            peak_reset: self.peak_reset,
            metrics: self.metrics.zip(metrics_after),
            listen_overflows: self
                .overflows
                .zip(listen_overflows())
                .map(|(a, b)| b.saturating_sub(a)),
        }
    }
}

impl Measured {
    fn server_cpu_us(&self) -> Option<u64> {
        self.server.map(|(a, b)| b.cpu_us.saturating_sub(a.cpu_us))
    }

    /// Server CPU µs per unit of work (message, delivery, connection).
    fn cpu_per(&self, units: u64) -> Option<f64> {
        let cpu = self.server_cpu_us()?;
        (units > 0).then(|| r3(cpu as f64 / units as f64))
    }

    fn rss_before_kib(&self) -> Option<u64> {
        self.server.map(|(a, _)| a.rss_kib)
    }

    fn peak_kib(&self) -> Option<u64> {
        self.server.map(|(_, b)| b.hwm_kib)
    }

    /// The figures every scenario reports, and their summary lines.
    fn report(&self, report: &mut Report) {
        let pct = |us: u64| r3(us as f64 / 1e6 / self.secs.max(1e-9) * 100.0);
        match self.server {
            Some((before, after)) => {
                let cpu = after.cpu_us.saturating_sub(before.cpu_us);
                report.fig("server_cpu_ms", r3(ms(cpu)));
                report.fig("server_cpu_pct", pct(cpu));
                report.fig("rss_before_mib", mib(before.rss_kib));
                report.fig("rss_after_mib", mib(after.rss_kib));
                report.fig("peak_rss_mib", mib(after.hwm_kib));
                report.line(format!(
                    "server          cpu {:.0} ms ({:.0} % of a core); rss {:.1} -> {:.1} MiB, peak {:.1} MiB{}",
                    ms(cpu),
                    pct(cpu),
                    mib(before.rss_kib),
                    mib(after.rss_kib),
                    mib(after.hwm_kib),
                    if self.peak_reset { " (in the window)" } else { " (since start)" }
                ));
            }
            None => {
                for key in [
                    "server_cpu_ms",
                    "server_cpu_pct",
                    "rss_before_mib",
                    "rss_after_mib",
                    "peak_rss_mib",
                ] {
                    report.fig(key, Value::Null);
                }
                report.line("server          no /proc figures (pass --pid with --url)".into());
            }
        }
        if let Some(cpu) = self.client_cpu_us {
            report.fig("client_cpu_pct", pct(cpu));
            report.line(format!(
                "load generator  cpu {:.0} ms ({:.0} % of a core)",
                ms(cpu),
                pct(cpu)
            ));
        }
        report.fig("listen_overflows", self.listen_overflows);
        if let Some(overflows) = self.listen_overflows.filter(|&n| n > 0) {
            report.line(format!(
                "kernel          {overflows} connects overflowed an accept queue (each waits >= 1 s for a SYN retry)"
            ));
        }
        if let Some((a, b)) = self.metrics {
            let commits = b.commits - a.commits;
            let messages = b.messages - a.messages;
            let replayed = b.replayed - a.replayed;
            let avg_ms =
                (commits > 0.0).then(|| r3((b.commit_seconds - a.commit_seconds) * 1e3 / commits));
            let per_commit = (commits > 0.0).then(|| r3(messages / commits));
            report.fig("commits", commits);
            report.fig("msgs_per_commit", per_commit);
            report.fig("commit_avg_ms", avg_ms);
            report.fig("server_replayed_msgs", replayed);
            report.line(format!(
                "store           {commits} commits, {:.1} msgs/commit, {:.2} ms/commit; {replayed} msgs replayed from the store",
                per_commit.unwrap_or(0.0),
                avg_ms.unwrap_or(0.0)
            ));
        }
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

// ---------------------------------------------------------------------------
// ingest
// ---------------------------------------------------------------------------

/// What one ingest client saw.
struct IngestOut {
    acked: u64,
    errors: u64,
    ack_mismatches: u64,
    own_messages: u64,
    latency: Hist,
}

async fn ingest(bench: &Bench, args: &IngestArgs) -> Res<Report> {
    if args.clients == 0 || args.in_flight == 0 || args.messages == 0 {
        return Err("--clients, --in-flight and --messages must be at least 1".into());
    }
    bench.check_fds(args.clients)?;
    let params = json!({"clients": args.clients, "in_flight": args.in_flight,
        "messages_per_client": args.messages, "text_bytes": args.text_bytes});
    let mut report = Report::new("ingest", params);
    let mut env = Env::open(bench, &[]).await?;
    let target = env.target.clone();
    let prefix = format!("i-{}-", bench.run);

    eprintln!("load: connecting {} clients", args.clients);
    let sockets = join_many(bench, &target, args.clients, 64, 0, |i| {
        (format!("ingest{i}"), format!("{prefix}{i}"))
    })
    .await?;

    let window = Window::begin(&target).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(bench.common.timeout_s);
    let tasks: Vec<JoinHandle<Res<IngestOut>>> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let room = format!("{prefix}{i}");
            let offsets = format!("{}-{i}", bench.run);
            let args = args.clone();
            tokio::spawn(ingest_client(ws, room, offsets, args, deadline))
        })
        .collect();
    let mut latency = new_hist();
    let (mut acked, mut errors, mut mismatches, mut own) = (0, 0, 0, 0);
    for task in tasks {
        let out = task.await??;
        acked += out.acked;
        errors += out.errors;
        mismatches += out.ack_mismatches;
        own += out.own_messages;
        merge(&mut latency, &out.latency);
    }
    let measured = window.end(&target).await;
    env.stop().await?;

    let expected = args.clients as u64 * args.messages;
    report.duration_s = measured.secs;
    let rate = r3(acked as f64 / measured.secs);
    report.fig("acked", acked);
    report.fig("acked_per_s", rate);
    report.hist("ack", &latency);
    report.fig("cpu_us_per_msg", measured.cpu_per(acked));
    report.fig("send_errors", errors);
    report.fig("own_messages_received", own);
    report.line(format!(
        "acked           {acked} of {expected} messages in {:.2} s = {rate:.0} msg/s",
        measured.secs
    ));
    report.line(format!("ack latency     {}", hist_text(&latency)));
    report.line(format!(
        "server cpu      {} µs per message",
        measured
            .cpu_per(acked)
            .map_or("?".into(), |v| format!("{v:.1}"))
    ));
    measured.report(&mut report);
    report.check(
        acked == expected,
        format!("{acked} acks, expected {expected}"),
    );
    report.check(
        errors == 0,
        format!("{errors} sends answered with an error"),
    );
    report.check(
        mismatches == 0,
        format!("{mismatches} acks out of send order"),
    );
    report.check(
        own == expected,
        format!("senders saw {own} of their own {expected} messages"),
    );
    match &env.db {
        Some(db) => {
            let rows: u64 = rows_by_room(db, &prefix)?.values().sum();
            report.fig("rows_in_db", rows);
            report.line(format!("rows in db      {rows} (expected {expected})"));
            report.check(
                rows == expected,
                format!("{rows} rows in the database, expected {expected}"),
            );
        }
        None => report.fig("rows_in_db", Value::Null),
    }
    env.finish(bench, &mut report);
    Ok(report)
}

/// Keep `in_flight` sends outstanding until `messages` are acked.
async fn ingest_client(
    mut ws: Ws,
    room: String,
    offsets: String,
    args: IngestArgs,
    deadline: tokio::time::Instant,
) -> Res<IngestOut> {
    let mut out = IngestOut {
        acked: 0,
        errors: 0,
        ack_mismatches: 0,
        own_messages: 0,
        latency: new_hist(),
    };
    // (sequence number, send time) of every unanswered send, in send order.
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut next = 0u64;
    let send = |seq: u64| {
        let text = padded(format!("ingest {room} {seq}"), args.text_bytes);
        send_frame(&room, &text, &format!("{offsets}-{seq}"))
    };
    while next < args.messages && (next as usize) < args.in_flight {
        in_flight.push_back((next, now_us()));
        send_text(&mut ws, send(next)).await?;
        next += 1;
    }
    while out.acked + out.errors < args.messages {
        let text = timeout_at(deadline, recv_text(&mut ws))
            .await
            .map_err(|_| "ingest: timed out waiting for acks")??
            .ok_or("ingest: the server closed the connection")?;
        let frame = parse(&text)?;
        match &*frame.kind {
            "ack" | "error" => {
                let (seq, sent) = in_flight.pop_front().ok_or("ingest: an ack for nothing")?;
                let expected = format!("{offsets}-{seq}");
                let answered = frame
                    .client_offset
                    .as_deref()
                    .or(frame.reference.as_deref());
                if answered != Some(expected.as_str()) {
                    out.ack_mismatches += 1;
                }
                if frame.kind == "ack" {
                    out.acked += 1;
                    record(&mut out.latency, now_us().saturating_sub(sent));
                } else {
                    out.errors += 1;
                }
                if next < args.messages {
                    in_flight.push_back((next, now_us()));
                    send_text(&mut ws, send(next)).await?;
                    next += 1;
                }
            }
            "message" => out.own_messages += 1,
            _ => {}
        }
    }
    // The broadcast of the last messages may trail their acks.
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while out.own_messages < args.messages {
        match timeout_at(settle.min(deadline), recv_text(&mut ws)).await {
            Ok(Ok(Some(text))) => {
                if parse(&text)?.kind == "message" {
                    out.own_messages += 1;
                }
            }
            _ => break,
        }
    }
    let _ = ws.close(None).await;
    Ok(out)
}

// ---------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------

/// Counters every subscriber adds to, for the drain and the delivery rate.
struct FanoutShared {
    publishers: usize,
    room: String,
    unique: AtomicU64,
    last_delivery_us: AtomicU64,
    stop: CancellationToken,
}

/// What one subscriber saw.
struct SubscriberOut {
    received: u64,
    duplicates: u64,
    gaps: u64,
    foreign: u64,
    latency: Hist,
}

/// What one publisher did.
struct PublisherOut {
    sent: u64,
    acked: u64,
    errors: u64,
    first_send_us: u64,
    latency: Hist,
}

async fn fanout(bench: &Bench, args: &FanoutArgs) -> Res<Report> {
    if args.subscribers == 0 || args.publishers == 0 || args.rate <= 0.0 || args.duration_s <= 0.0 {
        return Err("--subscribers, --publishers, --rate and --duration-s must be positive".into());
    }
    bench.check_fds(args.subscribers + args.publishers)?;
    let params = json!({"subscribers": args.subscribers, "publishers": args.publishers,
        "rate_per_s": args.rate, "duration_s": args.duration_s, "text_bytes": args.text_bytes});
    let mut report = Report::new("fanout", params);
    let mut env = Env::open(bench, &[]).await?;
    let target = env.target.clone();
    let shared = Arc::new(FanoutShared {
        publishers: args.publishers,
        room: format!("f-{}", bench.run),
        unique: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });

    eprintln!("load: connecting {} subscribers", args.subscribers);
    let room = shared.room.clone();
    let connect_started = Instant::now();
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for chunk_start in (0..args.subscribers).step_by(500) {
        let count = 500.min(args.subscribers - chunk_start);
        let sockets = join_many(bench, &target, count, 64, chunk_start, |i| {
            (format!("sub{}", chunk_start + i), room.clone())
        })
        .await?;
        // Start reading at once: presence diffs flow while the rest join.
        for ws in sockets {
            subscribers.push(tokio::spawn(fanout_subscriber(ws, shared.clone())));
        }
    }
    let publishers = join_many(bench, &target, args.publishers, 16, args.subscribers, |i| {
        (format!("pub{i}"), room.clone())
    })
    .await?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    // Let the presence diffs of the join storm go out before measuring.
    sleep(Duration::from_millis(700)).await;

    let total = (args.rate * args.duration_s).round() as u64;
    eprintln!(
        "load: publishing {total} messages over {} s",
        args.duration_s
    );
    let window = Window::begin(&target).await;
    let drain = Duration::from_secs_f64(args.drain_s.max(0.0));
    let publish_until = Instant::now() + Duration::from_secs_f64(args.duration_s);
    let tasks: Vec<JoinHandle<Res<PublisherOut>>> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, ws)| {
            let count = total / args.publishers as u64
                + u64::from((p as u64) < total % args.publishers as u64);
            let plan = PublisherPlan {
                index: p,
                room: room.clone(),
                offsets: format!("f{}-{p}", bench.run),
                count,
                until: publish_until,
                drain,
                text_bytes: args.text_bytes,
                stop: shared.stop.clone(),
            };
            tokio::spawn(fanout_publisher(ws, plan))
        })
        .collect();
    let mut ack_latency = new_hist();
    let (mut sent, mut acked, mut errors, mut first_send) = (0, 0, 0, u64::MAX);
    for task in tasks {
        let out = task.await??;
        sent += out.sent;
        acked += out.acked;
        errors += out.errors;
        first_send = first_send.min(out.first_send_us);
        merge(&mut ack_latency, &out.latency);
    }
    let expected = acked * args.subscribers as u64;
    let drain_until = Instant::now() + drain;
    while shared.unique.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        sleep(Duration::from_millis(10)).await;
    }
    let measured = window.end(&target).await;
    shared.stop.cancel();
    let mut latency = new_hist();
    let (mut received, mut duplicates, mut gaps, mut foreign) = (0, 0, 0, 0);
    for task in subscribers {
        let out = task.await??;
        received += out.received;
        duplicates += out.duplicates;
        gaps += out.gaps;
        foreign += out.foreign;
        merge(&mut latency, &out.latency);
    }
    env.stop().await?;

    let unique = received - duplicates;
    let lost = expected.saturating_sub(unique);
    let delivering_s = shared
        .last_delivery_us
        .load(Ordering::Relaxed)
        .saturating_sub(first_send) as f64
        / 1e6;
    let rate = if delivering_s > 0.0 {
        r3(received as f64 / delivering_s)
    } else {
        0.0
    };
    report.duration_s = measured.secs;
    report.fig("connect_s", r3(connect_s));
    report.fig("sent", sent);
    report.fig("acked", acked);
    report.fig("sent_per_s", r3(sent as f64 / args.duration_s));
    report.fig("deliveries", received);
    report.fig("deliveries_expected", expected);
    report.fig("deliveries_per_s", rate);
    report.fig(
        "offered_deliveries_per_s",
        r3(args.rate * args.subscribers as f64),
    );
    report.hist("e2e", &latency);
    report.hist("ack", &ack_latency);
    report.fig("lost", lost);
    report.fig("duplicated", duplicates);
    report.fig("sequence_gaps", gaps);
    report.fig("cpu_us_per_delivery", measured.cpu_per(received));
    report.fig("cpu_us_per_msg", measured.cpu_per(acked));
    report.line(format!(
        "connected       {} subscribers + {} publishers in {connect_s:.2} s",
        args.subscribers, args.publishers
    ));
    report.line(format!(
        "published       {sent} sent, {acked} acked ({:.0}/s offered)",
        args.rate
    ));
    report.line(format!(
        "delivered       {received} of {expected} in {delivering_s:.2} s = {rate:.0}/s (offered {:.0}/s)",
        args.rate * args.subscribers as f64
    ));
    report.line(format!("e2e latency     {}", hist_text(&latency)));
    report.line(format!("ack latency     {}", hist_text(&ack_latency)));
    report.line(format!(
        "lost {lost}, duplicated {duplicates}, sequence gaps {gaps}; server cpu {} µs per delivery",
        measured
            .cpu_per(received)
            .map_or("?".into(), |v| format!("{v:.2}"))
    ));
    measured.report(&mut report);
    report.check(
        sent == total,
        format!("published {sent} of {total} messages"),
    );
    report.check(acked == sent, format!("{acked} of {sent} sends acked"));
    report.check(
        errors == 0,
        format!("{errors} sends answered with an error"),
    );
    report.check(lost == 0, format!("{lost} deliveries lost"));
    report.check(
        duplicates == 0,
        format!("{duplicates} deliveries duplicated"),
    );
    report.check(foreign == 0, format!("{foreign} unexpected messages"));
    env.finish(bench, &mut report);
    Ok(report)
}

/// Listen until stopped, checking each publisher's sequence numbers.
async fn fanout_subscriber(mut ws: Ws, shared: Arc<FanoutShared>) -> Res<SubscriberOut> {
    let mut out = SubscriberOut {
        received: 0,
        duplicates: 0,
        gaps: 0,
        foreign: 0,
        latency: new_hist(),
    };
    let mut last_seq = vec![0u64; shared.publishers];
    loop {
        let text = tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            got = recv_text(&mut ws) => match got? {
                Some(text) => text,
                None => break,
            },
        };
        let frame = parse(&text)?;
        if frame.kind != "message" {
            continue;
        }
        let now = now_us();
        let stamp = frame.text.as_deref().and_then(parse_stamp);
        let (Some((publisher, seq, sent)), Some(room)) = (stamp, frame.room.as_deref()) else {
            out.foreign += 1;
            continue;
        };
        if room != shared.room || publisher >= last_seq.len() {
            out.foreign += 1;
            continue;
        }
        out.received += 1;
        record(&mut out.latency, now.saturating_sub(sent));
        let last = &mut last_seq[publisher];
        if seq <= *last {
            out.duplicates += 1;
            continue;
        }
        out.gaps += seq - *last - 1;
        *last = seq;
        shared.unique.fetch_add(1, Ordering::Relaxed);
        shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
    }
    Ok(out)
}

/// `"{publisher} {seq} {send µs} ..."` → its three numbers.
fn parse_stamp(text: &str) -> Option<(usize, u64, u64)> {
    let mut words = text.split(' ');
    let publisher = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    let sent = words.next()?.parse().ok()?;
    Some((publisher, seq, sent))
}

/// What one publisher is to send.
struct PublisherPlan {
    index: usize,
    room: String,
    offsets: String,
    count: u64,
    until: Instant,
    drain: Duration,
    text_bytes: usize,
    stop: CancellationToken,
}

/// Send `plan.count` messages evenly until `plan.until`, then wait for the last acks.
async fn fanout_publisher(mut ws: Ws, plan: PublisherPlan) -> Res<PublisherOut> {
    let mut out = PublisherOut {
        sent: 0,
        acked: 0,
        errors: 0,
        first_send_us: u64::MAX,
        latency: new_hist(),
    };
    if plan.count == 0 {
        tokio::spawn(listen_until(ws, plan.stop));
        return Ok(out);
    }
    let started = Instant::now();
    let span = plan
        .until
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-3);
    let per_s = plan.count as f64 / span;
    let mut tick = tokio::time::interval(Duration::from_secs_f64((1.0 / per_s).max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent_at: VecDeque<u64> = VecDeque::new();
    let give_up = tokio::time::Instant::from_std(plan.until + plan.drain);
    while out.acked + out.errors < plan.count {
        tokio::select! {
            _ = tick.tick(), if out.sent < plan.count => {
                // Everything due by now, so the offered rate holds even when a tick is late.
                let due = ((started.elapsed().as_secs_f64() * per_s).ceil() as u64).min(plan.count);
                while out.sent < due {
                    out.sent += 1;
                    let now = now_us();
                    out.first_send_us = out.first_send_us.min(now);
                    let text = padded(format!("{} {} {now}", plan.index, out.sent), plan.text_bytes);
                    let frame = send_frame(&plan.room, &text, &format!("{}-{}", plan.offsets, out.sent));
                    sent_at.push_back(now);
                    ws.feed(Message::text(frame)).await?;
                }
                ws.flush().await?;
            }
            got = timeout_at(give_up, recv_text(&mut ws)) => {
                let Ok(got) = got else { break };
                let text = got?.ok_or("fanout: the server closed a publisher")?;
                let frame = parse(&text)?;
                if frame.kind == "ack" || frame.kind == "error" {
                    let sent = sent_at.pop_front().unwrap_or_default();
                    if frame.kind == "ack" {
                        out.acked += 1;
                        record(&mut out.latency, now_us().saturating_sub(sent));
                    } else {
                        out.errors += 1;
                    }
                }
            }
        }
    }
    // Keep reading this publisher's copies of the broadcast until the run
    // stops, so the server never finds it slow.
    tokio::spawn(listen_until(ws, plan.stop));
    Ok(out)
}

/// Read and drop frames until `stop` or the connection ends (pings get their pongs).
async fn listen_until(mut ws: Ws, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            got = recv_text(&mut ws) => if !matches!(got, Ok(Some(_))) { break },
        }
    }
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

async fn idle(bench: &Bench, args: &IdleArgs) -> Res<Report> {
    if args.connections == 0 || args.rooms == 0 {
        return Err("--connections and --rooms must be at least 1".into());
    }
    bench.check_fds(args.connections)?;
    let params = json!({"connections": args.connections, "rooms": args.rooms,
        "concurrency": args.concurrency, "settle_s": args.settle_s});
    let mut report = Report::new("idle", params);
    let mut env = Env::open(bench, &[]).await?;
    let target = Arc::new(env.target.clone());
    sleep(Duration::from_millis(500)).await;
    let baseline = target.pid.and_then(read_proc);

    eprintln!("load: opening {} idle connections", args.connections);
    let window = Window::begin(&target).await;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let stop = CancellationToken::new();
    let (done_tx, mut done_rx) = mpsc::channel::<Result<u64, String>>(1024);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (gate, stop, done, target) =
            (gate.clone(), stop.clone(), done_tx.clone(), target.clone());
        let room = format!("idle-{}-{}", bench.run, i % args.rooms);
        let source = bench.source_for(i);
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t0 = now_us();
            let joined = join(&target, source, &format!("idle{i}"), &[room.as_str()], None).await;
            drop(permit);
            let ws = match joined {
                Ok(ws) => {
                    let _ = done.send(Ok(now_us() - t0)).await;
                    ws
                }
                Err(e) => {
                    let _ = done.send(Err(e.to_string())).await;
                    return;
                }
            };
            drop(done);
            // Idle, but reading: presence diffs arrive, pings get their pongs.
            listen_until(ws, stop).await;
        }));
    }
    drop(done_tx);
    let mut connect = new_hist();
    let mut failures: Vec<String> = Vec::new();
    let all_done = Instant::now() + Duration::from_secs(bench.common.timeout_s);
    while connect.len() as usize + failures.len() < args.connections {
        match timeout_at(all_done.into(), done_rx.recv()).await {
            Ok(Some(Ok(us))) => record(&mut connect, us),
            Ok(Some(Err(e))) => failures.push(e),
            _ => break,
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    let connected = connect.len();
    eprintln!(
        "load: {connected} connected in {connect_s:.2} s; settling {} s",
        args.settle_s
    );
    sleep(Duration::from_secs_f64(args.settle_s.max(0.0))).await;
    let with_all = target.pid.and_then(read_proc);
    let measured = window.end(&target).await;
    env.stop().await?;
    stop.cancel();
    let _ = timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(tasks),
    )
    .await;

    report.duration_s = connect_s;
    report.fig("connected", connected);
    report.fig("failed", failures.len());
    report.fig("connect_s", r3(connect_s));
    report.fig("connects_per_s", r3(connected as f64 / connect_s.max(1e-9)));
    report.hist("connect", &connect);
    let per_conn = baseline
        .zip(with_all)
        .filter(|_| connected > 0)
        .map(|(a, b)| r3((b.rss_kib as f64 - a.rss_kib as f64) / connected as f64));
    report.fig("rss_baseline_mib", baseline.map(|s| mib(s.rss_kib)));
    report.fig("rss_with_conns_mib", with_all.map(|s| mib(s.rss_kib)));
    report.fig("rss_per_conn_kib", per_conn);
    report.fig("cpu_us_per_conn", measured.cpu_per(connected));
    report.line(format!(
        "connected       {connected} of {} in {connect_s:.2} s ({:.0}/s); {} failed",
        args.connections,
        connected as f64 / connect_s.max(1e-9),
        failures.len()
    ));
    report.line(format!("connect+hello   {}", hist_text(&connect)));
    if let (Some(a), Some(b), Some(per)) = (baseline, with_all, per_conn) {
        report.line(format!(
            "memory          rss {:.1} MiB before, {:.1} MiB with {connected} connections = {per:.1} KiB per connection",
            mib(a.rss_kib),
            mib(b.rss_kib)
        ));
    }
    measured.report(&mut report);
    if let Some(first) = failures.first() {
        report.line(format!("first failure   {first}"));
    }
    report.check(
        failures.is_empty(),
        format!("{} connections failed", failures.len()),
    );
    report.check(
        connected as usize == args.connections,
        format!("{connected} of {} connected", args.connections),
    );
    env.finish(bench, &mut report);
    Ok(report)
}

// ---------------------------------------------------------------------------
// recovery
// ---------------------------------------------------------------------------

/// What one replaying client saw.
struct ReplayOut {
    synced_ms: f64,
    first_ms: Option<f64>,
    received: u64,
    unique: u64,
    duplicated: u64,
    out_of_order: u64,
    unexpected: u64,
}

async fn recovery(bench: &Bench, args: &RecoveryArgs) -> Res<Report> {
    if bench.common.url.is_some() {
        return Err(
            "recovery seeds the database between two runs of its own server; it cannot use --url"
                .into(),
        );
    }
    if args.messages == 0 || args.clients == 0 {
        return Err("--messages and --clients must be at least 1".into());
    }
    let params =
        json!({"messages": args.messages, "clients": args.clients, "text_bytes": args.text_bytes});
    let mut report = Report::new("recovery", params);
    let dir = tempfile::Builder::new().prefix("natter-load-").tempdir()?;
    let db = dir.path().join("chat.db");
    let log = dir.path().join("server.log");
    let bin = bench.natter_bin()?;
    let server_args = bench.server_args(&[]);
    let room = format!("r-{}", bench.run);

    // 1. Let the server create the schema and store one message: the offset.
    let mut server = Server::start(&bin, &db, &log, &server_args)?;
    let before_gap = {
        let target = server.target();
        let mut ws = join(&target, None, "seeder", &[room.as_str()], None).await?;
        let offset = format!("r{}-0", bench.run);
        send_text(&mut ws, send_frame(&room, "before the gap", &offset)).await?;
        let id = timeout(HANDSHAKE_WAIT, await_ack(&mut ws))
            .await
            .map_err(|_| "recovery: no ack for the first message")??;
        let _ = ws.close(None).await;
        id
    };
    server.stop().await?;

    // 2. The backlog, written while the server is down.
    eprintln!("load: seeding {} messages", args.messages);
    let seeding = Instant::now();
    let (first, last) = seed_messages(&db, &room, args.messages, args.text_bytes, &bench.run)?;
    let seed_s = seeding.elapsed().as_secs_f64();
    if last - first + 1 != args.messages as i64 {
        return Err(format!(
            "seeded ids {first}..={last} are not {} in a row",
            args.messages
        )
        .into());
    }

    // 3. Start again; the clients reconnect from the offset before the backlog.
    let mut server = Server::start(&bin, &db, &log, &server_args)?;
    let target = server.target();
    sleep(Duration::from_millis(300)).await;
    let mut sockets = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        sockets.push(
            timeout(HANDSHAKE_WAIT, open_ws(&target, bench.source_for(i)))
                .await
                .map_err(|_| "connect timed out")??,
        );
    }
    let window = Window::begin(&target).await;
    let tasks: Vec<JoinHandle<Res<ReplayOut>>> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let room = room.clone();
            tokio::spawn(replay_client(ws, i, room, before_gap, first, last))
        })
        .collect();
    let mut outs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outs.push(
            timeout(Duration::from_secs(bench.common.timeout_s), task)
                .await
                .map_err(|_| "replay timed out")???,
        );
    }
    let measured = window.end(&target).await;
    let stopped = server.stop().await?;

    let k = args.messages;
    let slowest = outs.iter().map(|o| o.synced_ms).fold(0.0, f64::max);
    let first_ms = outs.iter().filter_map(|o| o.first_ms).fold(0.0, f64::max);
    let missing: u64 = outs.iter().map(|o| k.saturating_sub(o.unique)).sum();
    let duplicated: u64 = outs.iter().map(|o| o.duplicated).sum();
    let out_of_order: u64 = outs.iter().map(|o| o.out_of_order).sum();
    let unexpected: u64 = outs.iter().map(|o| o.unexpected).sum();
    let received: u64 = outs.iter().map(|o| o.received).sum();
    let growth = measured
        .rss_before_kib()
        .zip(measured.peak_kib())
        .map(|(before, peak)| mib(peak.saturating_sub(before)));
    report.duration_s = slowest / 1000.0;
    report.fig("seed_s", r3(seed_s));
    report.fig("replay_ms", r3(slowest));
    report.fig("first_message_ms", r3(first_ms));
    report.fig(
        "replayed_per_s",
        r3(received as f64 / (slowest / 1000.0).max(1e-9)),
    );
    report.fig("missing", missing);
    report.fig("duplicated", duplicated);
    report.fig("out_of_order", out_of_order);
    report.fig("rss_growth_mib", growth);
    report.fig("cpu_us_per_msg", measured.cpu_per(received));
    report.line(format!(
        "seeded          {k} messages (ids {first}..={last}) in {seed_s:.2} s"
    ));
    report.line(format!(
        "replayed        {received} messages to {} client(s): hello -> synced {slowest:.0} ms, first message after {first_ms:.1} ms ({:.0} msg/s)",
        args.clients,
        received as f64 / (slowest / 1000.0).max(1e-9)
    ));
    report.line(format!(
        "missing {missing}, duplicated {duplicated}, out of order {out_of_order}, unexpected {unexpected}; rss growth {} MiB",
        growth.map_or("?".into(), |g| format!("{g:.1}"))
    ));
    measured.report(&mut report);
    report.check(
        missing == 0,
        format!("{missing} messages missing from the replay"),
    );
    report.check(
        duplicated == 0,
        format!("{duplicated} messages replayed twice"),
    );
    report.check(
        out_of_order == 0,
        format!("{out_of_order} messages out of id order"),
    );
    report.check(
        unexpected == 0,
        format!("{unexpected} messages outside the backlog"),
    );
    stopped_figures(Some(stopped), &mut report);
    if bench.common.keep {
        report.line(format!("kept            {}", dir.keep().display()));
    }
    Ok(report)
}

/// Read until the ack of the one send made on `ws`; returns its id.
async fn await_ack(ws: &mut Ws) -> Res<i64> {
    loop {
        let text = recv_text(ws)
            .await?
            .ok_or("connection closed before the ack")?;
        let frame = parse(&text)?;
        match &*frame.kind {
            "ack" => return frame.id.ok_or_else(|| "an ack without id".into()),
            "error" => {
                let code = frame.code.as_deref().unwrap_or("?");
                return Err(format!("send refused: {code}").into());
            }
            _ => {}
        }
    }
}

/// Insert `count` messages into `room` in one transaction; returns the first and last id.
fn seed_messages(
    db: &Path,
    room: &str,
    count: u64,
    text_bytes: usize,
    run: &str,
) -> Res<(i64, i64)> {
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let (mut first, mut last) = (0, 0);
    {
        let mut insert = tx.prepare(
            "INSERT INTO messages (room, nick, text, ts, client_offset) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for i in 1..=count {
            let text = padded(format!("backlog {i}"), text_bytes);
            insert.execute(rusqlite::params![
                room,
                "seeder",
                text,
                ts,
                format!("r{run}-{i}")
            ])?;
            last = tx.last_insert_rowid();
            if i == 1 {
                first = last;
            }
        }
    }
    tx.commit()?;
    Ok((first, last))
}

/// `hello` with the offset before the backlog; read and check until `synced`.
async fn replay_client(
    mut ws: Ws,
    index: usize,
    room: String,
    offset: i64,
    first: i64,
    last: i64,
) -> Res<ReplayOut> {
    let mut seen = vec![false; (last - first + 1) as usize];
    let mut out = ReplayOut {
        synced_ms: 0.0,
        first_ms: None,
        received: 0,
        unique: 0,
        duplicated: 0,
        out_of_order: 0,
        unexpected: 0,
    };
    let mut previous = offset;
    let started = Instant::now();
    hello(
        &mut ws,
        &format!("replayer{index}"),
        &[room.as_str()],
        Some(offset),
        |frame| {
            let Some(id) = frame.id.filter(|_| frame.kind == "message") else {
                return;
            };
            out.first_ms
                .get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
            out.received += 1;
            if id <= previous {
                out.out_of_order += 1;
            }
            previous = previous.max(id);
            match seen.get_mut((id - first) as usize).filter(|_| id >= first) {
                Some(slot) if *slot => out.duplicated += 1,
                Some(slot) => {
                    *slot = true;
                    out.unique += 1;
                }
                None => out.unexpected += 1,
            }
        },
    )
    .await?;
    out.synced_ms = started.elapsed().as_secs_f64() * 1000.0;
    let _ = ws.close(None).await;
    Ok(out)
}

// ---------------------------------------------------------------------------
// mixed
// ---------------------------------------------------------------------------

/// One connection of the mixed population (a user's tab).
#[derive(Debug, Clone)]
struct ActorSpec {
    id: usize,
    nick: String,
    /// Indexes into `MixedShared::rooms`.
    rooms: Vec<usize>,
    send_every_s: f64,
}

/// What every actor reads.
struct MixedShared {
    args: MixedArgs,
    target: Target,
    rooms: Vec<String>,
    offsets: String,
    connect_gate: Semaphore,
    stop: CancellationToken,
    finished: AtomicUsize,
    last_delivery_us: AtomicU64,
}

/// Something a user does at a planned moment.
#[derive(Debug)]
enum Step {
    Typing(usize, bool),
    Draft(usize, String),
    Send(usize),
}

/// A send not yet acknowledged.
struct Outgoing {
    seq: u64,
    sent_us: u64,
    frame: String,
    /// Counted in the ack latency: not a retry copy, not resent after a reconnect.
    timed: bool,
}

/// Everything one actor saw.
struct ActorOut {
    spec: ActorSpec,
    failed: Option<String>,
    /// Message ids received, per room of the actor (same order as `spec.rooms`).
    received: Vec<Vec<i64>>,
    /// (room index, id) of every message this actor's sends stored.
    acked: Vec<(usize, i64)>,
    ack_latency: Hist,
    e2e_latency: Hist,
    sends: u64,
    retries: u64,
    duplicate_acks: u64,
    ack_id_mismatches: u64,
    acks_out_of_order: u64,
    reconnects: u64,
    resent: u64,
    replayed: u64,
    typing_received: u64,
    drafts_received: u64,
    presence_received: u64,
    errors: u64,
    order_violations: u64,
    unacked_at_end: u64,
    lost_connections: u64,
}

struct Actor<'a> {
    sh: &'a MixedShared,
    rng: Rng,
    ws: Option<Ws>,
    max_seen: i64,
    next_seq: u64,
    pending: VecDeque<Outgoing>,
    plan: VecDeque<(Instant, Step)>,
    next_reconnect: Instant,
    /// Highest id per room on the current connection (ids must increase).
    conn_last: Vec<i64>,
    /// The id each of this actor's clientOffsets was stored under.
    stored: HashMap<u64, i64>,
    out: ActorOut,
}

async fn mixed(bench: &Bench, args: &MixedArgs) -> Res<Report> {
    if args.rooms == 0 || args.users == 0 || args.duration_s <= 0.0 || args.send_every_s <= 0.0 {
        return Err("--rooms, --users, --duration-s and --send-every-s must be positive".into());
    }
    let specs = mixed_population(args, bench.common.seed);
    bench.check_fds(specs.len())?;
    let params = json!({"rooms": args.rooms, "users": args.users, "connections": specs.len(),
        "duration_s": args.duration_s, "zipf": args.zipf, "send_every_s": args.send_every_s,
        "reconnect_every_s": args.reconnect_every_s, "retry_pct": args.retry_pct,
        "typing_pct": args.typing_pct, "second_tab_pct": args.second_tab_pct, "text_bytes": args.text_bytes});
    let mut report = Report::new("mixed", params);
    let mut env = Env::open(bench, &[]).await?;
    let prefix = format!("m-{}-", bench.run);
    let shared = Arc::new(MixedShared {
        args: args.clone(),
        target: env.target.clone(),
        rooms: (0..args.rooms).map(|r| format!("{prefix}{r}")).collect(),
        offsets: format!("m{}", bench.run),
        connect_gate: Semaphore::new(100),
        stop: CancellationToken::new(),
        finished: AtomicUsize::new(0),
        last_delivery_us: AtomicU64::new(0),
    });
    let sizes = {
        let mut sizes = vec![0usize; args.rooms];
        for spec in &specs {
            for &r in &spec.rooms {
                sizes[r] += 1;
            }
        }
        sizes
    };

    eprintln!(
        "load: connecting {} connections ({} users)",
        specs.len(),
        args.users
    );
    let connect_started = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::channel(specs.len());
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let actors: Vec<JoinHandle<ActorOut>> = specs
        .iter()
        .map(|spec| {
            let source = bench.source_for(spec.id);
            let seed = bench.common.seed ^ (spec.id as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d);
            tokio::spawn(mixed_actor(
                shared.clone(),
                spec.clone(),
                seed,
                source,
                ready_tx.clone(),
                go_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let (mut ready, mut failed) = (0usize, 0usize);
    let connect_deadline = Instant::now() + Duration::from_secs(bench.common.timeout_s);
    while ready + failed < specs.len() {
        match timeout_at(connect_deadline.into(), ready_rx.recv()).await {
            Ok(Some(true)) => ready += 1,
            Ok(Some(false)) => failed += 1,
            _ => break,
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    sleep(Duration::from_millis(700)).await;

    eprintln!(
        "load: {ready} connected in {connect_s:.2} s; running {} s",
        args.duration_s
    );
    let window = Window::begin(&env.target).await;
    let started = Instant::now();
    let _ = go_tx.send(Some(started + Duration::from_secs_f64(args.duration_s)));
    let drain = Duration::from_secs_f64(args.drain_s.max(0.0));
    let all_finished =
        started + Duration::from_secs_f64(args.duration_s) + drain + Duration::from_secs(30);
    while shared.finished.load(Ordering::Relaxed) < ready && Instant::now() < all_finished {
        sleep(Duration::from_millis(20)).await;
    }
    let active_s = started.elapsed().as_secs_f64();
    // Deliveries still in flight: wait until nothing arrived for a second.
    let drain_until = Instant::now() + drain;
    while Instant::now() < drain_until
        && now_us().saturating_sub(shared.last_delivery_us.load(Ordering::Relaxed)) < 1_000_000
    {
        sleep(Duration::from_millis(50)).await;
    }
    let measured = window.end(&env.target).await;
    shared.stop.cancel();
    let mut outs = Vec::with_capacity(actors.len());
    for actor in actors {
        outs.push(actor.await?);
    }
    env.stop().await?;

    let times = MixedTimes {
        active_s,
        connect_s,
        failed_connects: failed,
    };
    mixed_report(&mut report, args, &outs, &sizes, &measured, &times);
    match &env.db {
        Some(db) => {
            let rows: u64 = rows_by_room(db, &prefix)?.values().sum();
            let acked: u64 = outs.iter().map(|o| o.acked.len() as u64).sum();
            report.fig("rows_in_db", rows);
            report.line(format!("rows in db      {rows} (acked {acked})"));
            report.check(
                rows == acked,
                format!("{rows} rows in the database, {acked} messages acked"),
            );
        }
        None => report.fig("rows_in_db", Value::Null),
    }
    env.finish(bench, &mut report);
    Ok(report)
}

/// Users in 1–3 rooms chosen by Zipf popularity; some with a second tab.
fn mixed_population(args: &MixedArgs, seed: u64) -> Vec<ActorSpec> {
    let mut rng = Rng::new(seed);
    let mut cumulative = Vec::with_capacity(args.rooms);
    let mut total = 0.0;
    for rank in 1..=args.rooms {
        total += 1.0 / (rank as f64).powf(args.zipf);
        cumulative.push(total);
    }
    let mut specs = Vec::new();
    for user in 0..args.users {
        let wanted = match rng.unit() {
            u if u < 0.5 => 1,
            u if u < 0.8 => 2,
            _ => 3,
        }
        .min(args.rooms);
        let mut rooms: Vec<usize> = Vec::new();
        for _ in 0..wanted * 20 {
            if rooms.len() == wanted {
                break;
            }
            let target = rng.unit() * total;
            let room = cumulative
                .partition_point(|&c| c < target)
                .min(args.rooms - 1);
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        let tabs = if rng.percent(args.second_tab_pct) {
            2
        } else {
            1
        };
        for _ in 0..tabs {
            specs.push(ActorSpec {
                id: specs.len(),
                nick: format!("user{user}"),
                rooms: rooms.clone(),
                // A user's messages are spread over their tabs.
                send_every_s: args.send_every_s * tabs as f64,
            });
        }
    }
    specs
}

/// One connection's life: connect, wait for the start, act until the end,
/// collect the last acks, listen until stopped.
async fn mixed_actor(
    sh: Arc<MixedShared>,
    spec: ActorSpec,
    seed: u64,
    source: Option<Ipv4Addr>,
    ready: mpsc::Sender<bool>,
    mut go: watch::Receiver<Option<Instant>>,
) -> ActorOut {
    let mut actor = Actor::new(&sh, spec, seed);
    let connected = {
        let _permit = sh.connect_gate.acquire().await;
        actor.connect(source, None).await
    };
    if let Err(e) = connected {
        actor.out.failed = Some(e.to_string());
        let _ = ready.send(false).await;
        return actor.out;
    }
    let _ = ready.send(true).await;
    drop(ready);
    // Until the start: listen (the join storm's presence diffs).
    let until = loop {
        let Some(ws) = actor.ws.as_mut() else {
            break None;
        };
        tokio::select! {
            start = go.wait_for(Option::is_some) => break start.ok().and_then(|s| *s),
            got = recv_text(ws) => actor.on_received(got, false),
            () = sh.stop.cancelled() => break None,
        }
    };
    let Some(until) = until else {
        actor.out.failed = Some("lost its connection before the start".into());
        sh.finished.fetch_add(1, Ordering::Relaxed);
        return actor.out;
    };
    actor.schedule_reconnect();
    actor.act(source, until).await;
    actor
        .collect_acks(
            source,
            until + Duration::from_secs_f64(sh.args.drain_s.max(0.0)),
        )
        .await;
    sh.finished.fetch_add(1, Ordering::Relaxed);
    actor.listen(source).await;
    actor.out
}

impl<'a> Actor<'a> {
    fn new(sh: &'a MixedShared, spec: ActorSpec, seed: u64) -> Actor<'a> {
        let rooms = spec.rooms.len();
        Actor {
            sh,
            rng: Rng::new(seed),
            ws: None,
            max_seen: 0,
            next_seq: 0,
            pending: VecDeque::new(),
            plan: VecDeque::new(),
            next_reconnect: Instant::now(),
            conn_last: vec![0; rooms],
            stored: HashMap::new(),
            out: ActorOut {
                spec,
                failed: None,
                received: vec![Vec::new(); rooms],
                acked: Vec::new(),
                ack_latency: new_hist(),
                e2e_latency: new_hist(),
                sends: 0,
                retries: 0,
                duplicate_acks: 0,
                ack_id_mismatches: 0,
                acks_out_of_order: 0,
                reconnects: 0,
                resent: 0,
                replayed: 0,
                typing_received: 0,
                drafts_received: 0,
                presence_received: 0,
                errors: 0,
                order_violations: 0,
                unacked_at_end: 0,
                lost_connections: 0,
            },
        }
    }

    fn room_name(&self, local: usize) -> &'a str {
        &self.sh.rooms[self.out.spec.rooms[local]]
    }

    /// Connect, `hello` (with the stored offset after the first time), and
    /// resend whatever was not acknowledged, as a real client does.
    async fn connect(&mut self, source: Option<Ipv4Addr>, offset: Option<i64>) -> Res<()> {
        let sh = self.sh;
        let rooms: Vec<&str> = (0..self.out.spec.rooms.len())
            .map(|r| self.room_name(r))
            .collect();
        let nick = self.out.spec.nick.clone();
        self.conn_last.fill(0);
        let mut ws = timeout(HANDSHAKE_WAIT, open_ws(&sh.target, source))
            .await
            .map_err(|_| "connect timed out")??;
        let synced = timeout(
            HANDSHAKE_WAIT,
            hello(&mut ws, &nick, &rooms, offset, |frame| {
                self.on_frame(frame, false);
            }),
        )
        .await
        .map_err(|_| "hello timed out")??;
        self.max_seen = self.max_seen.max(synced);
        for outgoing in &mut self.pending {
            outgoing.timed = false;
            self.out.resent += 1;
            ws.feed(Message::text(outgoing.frame.clone())).await?;
        }
        ws.flush().await?;
        self.ws = Some(ws);
        Ok(())
    }

    /// Leave (cleanly or by dropping the socket), stay away a moment, come back.
    async fn reconnect(&mut self, source: Option<Ipv4Addr>, away: Duration) {
        self.out.reconnects += 1;
        if let Some(mut ws) = self.ws.take()
            && self.rng.percent(50.0)
        {
            // A clean close: whatever arrives until the server's close still counts.
            let _ = ws.close(None).await;
            let _ = timeout(Duration::from_secs(1), async {
                while let Ok(Some(text)) = recv_text(&mut ws).await {
                    if let Ok(frame) = parse(&text) {
                        self.on_frame(&frame, true);
                    }
                }
            })
            .await;
        }
        sleep(away).await;
        for attempt in 1..=5u32 {
            match self.connect(source, Some(self.max_seen)).await {
                Ok(()) => return,
                Err(e) if attempt == 5 => self.out.failed = Some(format!("reconnect failed: {e}")),
                Err(_) => sleep(Duration::from_millis(200) * attempt).await,
            }
        }
    }

    /// When to leave and come back next (a Poisson process; never for 0).
    fn schedule_reconnect(&mut self) {
        let mean = self.sh.args.reconnect_every_s;
        let wait = if mean > 0.0 {
            self.rng.exp(mean)
        } else {
            Duration::from_secs(86_400)
        };
        self.next_reconnect = Instant::now() + wait;
    }

    /// Plan the next composition: maybe typing and drafts, then a send (or an
    /// abandoned draft).
    fn plan_next(&mut self) {
        let args = &self.sh.args;
        let start = Instant::now() + self.rng.exp(self.out.spec.send_every_s);
        let room = self.rng.below(self.out.spec.rooms.len());
        let at = |ms: u64| start + Duration::from_millis(ms);
        if self.rng.percent(args.typing_pct) {
            self.plan.push_back((at(0), Step::Typing(room, true)));
            self.plan
                .push_back((at(300), Step::Draft(room, "so what".into())));
            self.plan
                .push_back((at(800), Step::Draft(room, "so what do we".into())));
            if self.rng.percent(args.abandon_pct) {
                self.plan
                    .push_back((at(1200), Step::Draft(room, String::new())));
            } else {
                self.plan.push_back((at(1200), Step::Send(room)));
            }
            self.plan.push_back((at(1250), Step::Typing(room, false)));
        } else {
            self.plan.push_back((at(0), Step::Send(room)));
        }
    }

    async fn perform(&mut self, step: Step) -> Res<()> {
        let room = match &step {
            Step::Typing(room, _) | Step::Draft(room, _) | Step::Send(room) => {
                self.room_name(*room)
            }
        };
        let Some(ws) = self.ws.as_mut() else {
            return Ok(());
        };
        match step {
            Step::Typing(_, active) => {
                let frame = format!(r#"{{"type":"typing","room":"{room}","active":{active}}}"#);
                send_text(ws, frame).await
            }
            Step::Draft(_, text) => {
                let frame = format!(r#"{{"type":"draft","room":"{room}","text":"{text}"}}"#);
                send_text(ws, frame).await
            }
            Step::Send(_) => {
                self.next_seq += 1;
                let seq = self.next_seq;
                let sent_us = now_us();
                let text = padded(
                    format!("{} {seq} {sent_us}", self.out.spec.id),
                    self.sh.args.text_bytes,
                );
                let offset = format!("{}-{}-{seq}", self.sh.offsets, self.out.spec.id);
                let frame = send_frame(room, &text, &offset);
                self.out.sends += 1;
                let retry = self.rng.percent(self.sh.args.retry_pct);
                self.pending.push_back(Outgoing {
                    seq,
                    sent_us,
                    frame: frame.clone(),
                    timed: true,
                });
                if retry {
                    // The same send again, as after a timeout: stored once, acked twice.
                    self.out.retries += 1;
                    self.pending.push_back(Outgoing {
                        seq,
                        sent_us,
                        frame: frame.clone(),
                        timed: false,
                    });
                    ws.feed(Message::text(frame.clone())).await?;
                }
                send_text(ws, frame).await
            }
        }
    }

    /// The activity until `until`: planned steps, reconnects, and reading.
    async fn act(&mut self, source: Option<Ipv4Addr>, until: Instant) {
        loop {
            if self.out.failed.is_some() || self.sh.stop.is_cancelled() {
                return;
            }
            if self.ws.is_none() {
                self.out.lost_connections += 1;
                self.reconnect(source, Duration::ZERO).await;
                continue;
            }
            if self.plan.is_empty() {
                self.plan_next();
            }
            let next_step = self.plan.front().map_or(until, |(at, _)| *at);
            let wake = next_step.min(self.next_reconnect).min(until);
            let Some(ws) = self.ws.as_mut() else { continue };
            tokio::select! {
                got = recv_text(ws) => self.on_received(got, true),
                () = sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= until {
                        return;
                    }
                    if now >= self.next_reconnect {
                        let away = Duration::from_millis(50 + self.rng.below(450) as u64);
                        self.reconnect(source, away).await;
                        self.schedule_reconnect();
                    } else if let Some((_, step)) = self.plan.pop_front()
                        && self.perform(step).await.is_err()
                    {
                        self.ws = None;
                    }
                }
            }
        }
    }

    /// After the activity: stay connected until every send is acknowledged.
    async fn collect_acks(&mut self, source: Option<Ipv4Addr>, deadline: Instant) {
        while !self.pending.is_empty() && Instant::now() < deadline && self.out.failed.is_none() {
            let Some(ws) = self.ws.as_mut() else {
                self.out.lost_connections += 1;
                self.reconnect(source, Duration::ZERO).await;
                continue;
            };
            match timeout_at(deadline.into(), recv_text(ws)).await {
                Ok(got) => self.on_received(got, true),
                Err(_) => break,
            }
        }
        self.out.unacked_at_end = self.pending.len() as u64;
    }

    /// Read until the controller stops the run.
    async fn listen(&mut self, source: Option<Ipv4Addr>) {
        while !self.sh.stop.is_cancelled() && self.out.failed.is_none() {
            let Some(ws) = self.ws.as_mut() else {
                self.out.lost_connections += 1;
                self.reconnect(source, Duration::ZERO).await;
                continue;
            };
            tokio::select! {
                got = recv_text(ws) => self.on_received(got, true),
                () = self.sh.stop.cancelled() => return,
            }
        }
    }

    /// A read result: a frame to handle, or a connection gone.
    fn on_received(
        &mut self,
        got: Res<Option<tokio_tungstenite::tungstenite::Utf8Bytes>>,
        live: bool,
    ) {
        match got {
            Ok(Some(text)) => match parse(&text) {
                Ok(frame) => self.on_frame(&frame, live),
                Err(_) => self.out.errors += 1,
            },
            Ok(None) | Err(_) => self.ws = None,
        }
    }

    /// Account for one frame. `live` is false for frames before `synced`
    /// (replay), whose latency would include the time away.
    fn on_frame(&mut self, frame: &Frame<'_>, live: bool) {
        match &*frame.kind {
            "message" => {
                let (Some(id), Some(room)) = (frame.id, frame.room.as_deref()) else {
                    self.out.errors += 1;
                    return;
                };
                let Some(local) =
                    (0..self.out.spec.rooms.len()).find(|&r| self.room_name(r) == room)
                else {
                    self.out.errors += 1;
                    return;
                };
                if id <= self.conn_last[local] {
                    self.out.order_violations += 1;
                }
                self.conn_last[local] = self.conn_last[local].max(id);
                self.max_seen = self.max_seen.max(id);
                self.out.received[local].push(id);
                let now = now_us();
                self.sh.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                if live {
                    let sent = frame
                        .text
                        .as_deref()
                        .and_then(|t| t.split(' ').nth(2)?.parse::<u64>().ok());
                    if let Some(sent) = sent {
                        record(&mut self.out.e2e_latency, now.saturating_sub(sent));
                    }
                } else {
                    self.out.replayed += 1;
                }
            }
            "ack" => self.on_ack(frame),
            "synced" => self.max_seen = self.max_seen.max(frame.server_offset.unwrap_or(0)),
            "typing" => self.out.typing_received += 1,
            "draft" => self.out.drafts_received += 1,
            "presence" | "presence_diff" => self.out.presence_received += 1,
            "error" => {
                self.out.errors += 1;
                // A refused send is not retried; it will never be acked.
                let refused = frame
                    .reference
                    .as_deref()
                    .and_then(|r| r.rsplit('-').next()?.parse::<u64>().ok());
                if let Some(pos) =
                    refused.and_then(|seq| self.pending.iter().position(|p| p.seq == seq))
                {
                    self.pending.remove(pos);
                }
            }
            _ => {}
        }
    }

    fn on_ack(&mut self, frame: &Frame<'_>) {
        let seq = frame
            .client_offset
            .as_deref()
            .and_then(|o| o.rsplit('-').next()?.parse::<u64>().ok());
        let (Some(seq), Some(id)) = (seq, frame.id) else {
            self.out.errors += 1;
            return;
        };
        let Some(pos) = self.pending.iter().position(|p| p.seq == seq) else {
            return; // a resend's ack after its original's: already accounted
        };
        if pos != 0 {
            self.out.acks_out_of_order += 1;
        }
        let Some(outgoing) = self.pending.remove(pos) else {
            return;
        };
        if outgoing.timed {
            record(
                &mut self.out.ack_latency,
                now_us().saturating_sub(outgoing.sent_us),
            );
        }
        if frame.duplicate {
            self.out.duplicate_acks += 1;
        }
        match self.stored.get(&seq) {
            Some(&stored) if stored != id => self.out.ack_id_mismatches += 1,
            Some(_) => {}
            None => {
                self.stored.insert(seq, id);
                let room = frame
                    .room
                    .as_deref()
                    .and_then(|r| self.sh.rooms.iter().position(|n| n == r))
                    .or_else(|| room_of_send(&outgoing.frame, &self.sh.rooms));
                if let Some(room) = room {
                    self.out.acked.push((room, id));
                }
            }
        }
    }
}

/// The room index named in a send frame we built.
fn room_of_send(frame: &str, rooms: &[String]) -> Option<usize> {
    let start = frame.find(r#""room":""#)? + 8;
    let name = &frame[start..start + frame[start..].find('"')?];
    rooms.iter().position(|r| r == name)
}

/// How long the phases of a mixed run took.
#[derive(Debug, Clone, Copy)]
struct MixedTimes {
    /// From the start until every connection had its acks.
    active_s: f64,
    connect_s: f64,
    failed_connects: usize,
}

/// Compare what each connection received with every acknowledged message of
/// its rooms, and report.
fn mixed_report(
    report: &mut Report,
    args: &MixedArgs,
    outs: &[ActorOut],
    sizes: &[usize],
    measured: &Measured,
    times: &MixedTimes,
) {
    let MixedTimes {
        active_s,
        connect_s,
        failed_connects,
    } = *times;
    let mut by_room: Vec<Vec<i64>> = vec![Vec::new(); args.rooms];
    for out in outs {
        for &(room, id) in &out.acked {
            by_room[room].push(id);
        }
    }
    for ids in &mut by_room {
        ids.sort_unstable();
        ids.dedup();
    }
    let (mut lost, mut duplicated, mut unexpected, mut deliveries) = (0u64, 0u64, 0u64, 0u64);
    let mut conns_with_loss = 0u64;
    let mut ack_latency = new_hist();
    let mut e2e_latency = new_hist();
    let sum = |f: fn(&ActorOut) -> u64| outs.iter().map(f).sum::<u64>();
    for out in outs.iter().filter(|o| o.failed.is_none()) {
        merge(&mut ack_latency, &out.ack_latency);
        merge(&mut e2e_latency, &out.e2e_latency);
        let mut lost_here = 0;
        for (local, &room) in out.spec.rooms.iter().enumerate() {
            let mut got = out.received[local].clone();
            deliveries += got.len() as u64;
            got.sort_unstable();
            let before = got.len();
            got.dedup();
            duplicated += (before - got.len()) as u64;
            let common = count_common(&got, &by_room[room]);
            lost_here += (by_room[room].len() - common) as u64;
            unexpected += (got.len() - common) as u64;
        }
        lost += lost_here;
        conns_with_loss += u64::from(lost_here > 0);
    }
    let failed = outs.iter().filter(|o| o.failed.is_some()).count();
    let acked: u64 = by_room.iter().map(|ids| ids.len() as u64).sum();
    let biggest = sizes.iter().copied().max().unwrap_or(0);
    let occupied = sizes.iter().filter(|&&s| s > 0).count();
    report.duration_s = active_s;
    report.fig("connections", outs.len());
    report.fig("connect_s", r3(connect_s));
    report.fig("largest_room", biggest);
    report.fig("occupied_rooms", occupied);
    report.fig("sends", sum(|o| o.sends));
    report.fig("acked", acked);
    report.fig("acked_per_s", r3(acked as f64 / active_s.max(1e-9)));
    report.hist("ack", &ack_latency);
    report.fig("deliveries", deliveries);
    report.fig(
        "deliveries_per_s",
        r3(deliveries as f64 / active_s.max(1e-9)),
    );
    report.hist("e2e", &e2e_latency);
    report.fig("lost", lost);
    report.fig("duplicated", duplicated);
    report.fig("unexpected", unexpected);
    report.fig("connections_with_loss", conns_with_loss);
    report.fig("order_violations", sum(|o| o.order_violations));
    report.fig("retries", sum(|o| o.retries));
    report.fig("duplicate_acks", sum(|o| o.duplicate_acks));
    report.fig("ack_id_mismatches", sum(|o| o.ack_id_mismatches));
    report.fig("reconnects", sum(|o| o.reconnects));
    report.fig("resent_after_reconnect", sum(|o| o.resent));
    report.fig("replayed_on_reconnect", sum(|o| o.replayed));
    report.fig("lost_connections", sum(|o| o.lost_connections));
    report.fig("typing_received", sum(|o| o.typing_received));
    report.fig("drafts_received", sum(|o| o.drafts_received));
    report.fig("presence_received", sum(|o| o.presence_received));
    report.fig("errors", sum(|o| o.errors));
    report.fig("unacked_at_end", sum(|o| o.unacked_at_end));
    report.fig("cpu_us_per_msg", measured.cpu_per(acked));
    report.fig("cpu_us_per_delivery", measured.cpu_per(deliveries));
    report.line(format!(
        "population      {} connections of {} users in {occupied} rooms (largest {biggest}); connected in {connect_s:.2} s",
        outs.len(),
        args.users
    ));
    report.line(format!(
        "messages        {} sends ({} retried), {acked} stored = {:.1}/s",
        sum(|o| o.sends),
        sum(|o| o.retries),
        acked as f64 / active_s.max(1e-9)
    ));
    report.line(format!("ack latency     {}", hist_text(&ack_latency)));
    report.line(format!(
        "deliveries      {deliveries} = {:.0}/s; e2e {}",
        deliveries as f64 / active_s.max(1e-9),
        hist_text(&e2e_latency)
    ));
    report.line(format!(
        "reconnects      {} ({} sends resent, {} messages replayed), {} connections lost",
        sum(|o| o.reconnects),
        sum(|o| o.resent),
        sum(|o| o.replayed),
        sum(|o| o.lost_connections)
    ));
    report.line(format!(
        "side traffic    {} typing, {} drafts, {} presence frames received",
        sum(|o| o.typing_received),
        sum(|o| o.drafts_received),
        sum(|o| o.presence_received)
    ));
    report.line(format!(
        "lost {lost} (on {conns_with_loss} connections), duplicated {duplicated}, unexpected {unexpected}, order violations {}",
        sum(|o| o.order_violations)
    ));
    report.line(format!(
        "server cpu      {} µs per message, {} µs per delivery",
        measured
            .cpu_per(acked)
            .map_or("?".into(), |v| format!("{v:.0}")),
        measured
            .cpu_per(deliveries)
            .map_or("?".into(), |v| format!("{v:.2}"))
    ));
    measured.report(report);
    if let Some(reason) = outs.iter().find_map(|o| o.failed.as_deref()) {
        report.line(format!("first failure   {reason}"));
    }
    report.check(
        failed == 0 && failed_connects == 0,
        format!("{failed} connections failed"),
    );
    report.check(
        lost == 0,
        format!("{lost} deliveries lost on {conns_with_loss} connections"),
    );
    report.check(
        duplicated == 0,
        format!("{duplicated} deliveries duplicated"),
    );
    report.check(
        unexpected == 0,
        format!("{unexpected} deliveries of messages never acked"),
    );
    report.check(
        sum(|o| o.order_violations) == 0,
        "messages out of id order".into(),
    );
    report.check(
        sum(|o| o.ack_id_mismatches) == 0,
        "a retried send got a different id".into(),
    );
    report.check(
        sum(|o| o.unacked_at_end) == 0,
        format!("{} sends never acked", sum(|o| o.unacked_at_end)),
    );
    report.check(
        sum(|o| o.errors) == 0,
        format!("{} error frames", sum(|o| o.errors)),
    );
}

/// Size of the intersection of two sorted, deduplicated lists.
fn count_common(a: &[i64], b: &[i64]) -> usize {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common
}
