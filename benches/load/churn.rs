//! The `churn` scenario: one connection joins and leaves many distinct rooms, one after another; the server's memory before, at its peak, and once the rooms' grace period is over.
//!
//! What it shows: a room nobody is in must cost next to nothing, and must be
//! forgotten once its presence grace period ends, so that cycling through
//! room names cannot grow the server without bound.

use std::time::Duration;

use clap::Args;
use natter_test_support::procfs;
use serde_json::json;
use tokio::time::{sleep, timeout};

use crate::client::{hello, open_ws, parse, recv_text, send_text};
use crate::measure::Window;
use crate::server::Env;
use crate::stats::{mib, r3};
use crate::{Bench, Report, Res};

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Distinct rooms to join and leave, one after another.
    #[arg(long, default_value_t = 50_000)]
    rooms: usize,
    /// The server's presence grace period, in ms (`--presence-grace-ms`):
    /// how long a left room is kept for its last member.
    #[arg(long = "grace-ms", default_value_t = 5_000)]
    grace_ms: u64,
}

pub async fn run(bench: &Bench, args: &ChurnArgs) -> Res<Report> {
    if args.rooms == 0 {
        return Err("--rooms must be at least 1".into());
    }
    let grace = args.grace_ms.to_string();
    let params = json!({"rooms": args.rooms, "grace_ms": args.grace_ms});
    let mut report = Report::new("churn", params);
    let mut env = Env::open(bench, &[("--presence-grace-ms", grace.as_str())]).await?;
    let target = env.target.clone();
    let mut ws = open_ws(&target, None).await?;
    hello(&mut ws, "churner", &[], None, |_| {}).await?;
    sleep(Duration::from_millis(500)).await;
    let baseline = target.pid.and_then(procfs::sample);
    let window = Window::begin(&target).await;
    let started = std::time::Instant::now();

    eprintln!("load: joining and leaving {} rooms", args.rooms);
    let mut peak_kib = 0;
    for i in 0..args.rooms {
        let room = format!("churn-{}-{i}", bench.run);
        send_text(&mut ws, json!({"type": "join", "room": room}).to_string()).await?;
        until(&mut ws, "synced").await?;
        send_text(&mut ws, json!({"type": "leave", "room": room}).to_string()).await?;
        until(&mut ws, "left").await?;
        if i % 1_000 == 999 {
            let rss = target.pid.and_then(procfs::sample).map_or(0, |s| s.rss_kib);
            peak_kib = peak_kib.max(rss);
        }
    }
    let churn_s = started.elapsed().as_secs_f64();
    let at_end = target.pid.and_then(procfs::sample);
    // Past the grace period (and a presence tick), every room is forgotten.
    sleep(Duration::from_millis(args.grace_ms + 1_000)).await;
    let settled = target.pid.and_then(procfs::sample);
    let measured = window.end(&target).await;
    drop(ws);
    env.stop()?;

    let rooms_per_s = args.rooms as f64 / churn_s.max(1e-9);
    report.duration_s = churn_s;
    report.fig("rooms", args.rooms);
    report.fig("rooms_per_s", r3(rooms_per_s));
    report.fig("rss_baseline_mib", baseline.map(|s| mib(s.rss_kib)));
    report.fig("rss_peak_sampled_mib", mib(peak_kib));
    report.fig("rss_at_end_mib", at_end.map(|s| mib(s.rss_kib)));
    report.fig("rss_settled_mib", settled.map(|s| mib(s.rss_kib)));
    let growth = baseline
        .zip(settled)
        .map(|(a, b)| mib(b.rss_kib.saturating_sub(a.rss_kib)));
    report.fig("rss_growth_settled_mib", growth);
    report.line(format!(
        "churn           {} rooms joined and left in {churn_s:.2} s ({rooms_per_s:.0}/s)",
        args.rooms
    ));
    if let (Some(a), Some(end), Some(b)) = (baseline, at_end, settled) {
        report.line(format!(
            "memory          rss {:.1} MiB before, peak sampled {:.1}, {:.1} at the end, {:.1} after the grace period",
            mib(a.rss_kib),
            mib(peak_kib),
            mib(end.rss_kib),
            mib(b.rss_kib)
        ));
    }
    measured.report(&mut report);
    env.finish(bench, &mut report);
    Ok(report)
}

/// Read until a frame of `kind` (bounded: a stuck server fails the run).
async fn until(ws: &mut crate::client::Ws, kind: &str) -> Res<()> {
    timeout(Duration::from_secs(30), async {
        loop {
            let text = recv_text(ws)
                .await?
                .ok_or("the server closed the connection")?;
            let frame = parse(&text)?;
            if frame.kind == kind {
                return Ok(());
            }
            if frame.kind == "error" {
                let code = frame.code.as_deref().unwrap_or("?");
                return Err(format!("{kind} refused: {code}").into());
            }
        }
    })
    .await
    .map_err(|_| format!("no `{kind}` within 30 s"))?
}
