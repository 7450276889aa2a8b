//! The `idle` scenario: N connections that said `hello` and then only
//! listen; the time to connect them and the server's memory per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use natter_test_support::procfs;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::client::{join, listen_until};
use crate::measure::Window;
use crate::server::Env;
use crate::stats::{hist_text, mib, new_hist, now_us, r3, record};
use crate::{Bench, Report, Res};

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
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

pub async fn run(bench: &Bench, args: &IdleArgs) -> Res<Report> {
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
    let baseline = target.pid.and_then(procfs::sample);

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
    let with_all = target.pid.and_then(procfs::sample);
    let measured = window.end(&target).await;
    env.stop()?;
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
