//! The `fanout` scenario: broadcast. P publishers at a fixed total rate into
//! one room of S subscribers, each delivery checked for loss, duplication
//! and order by its publisher's sequence number.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::SinkExt;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{Ws, join_many, listen_until, padded, parse, recv_text, send_frame};
use crate::measure::Window;
use crate::server::Env;
use crate::stats::{Hist, hist_text, merge, new_hist, now_us, r3, record};
use crate::{Bench, Report, Res};

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
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

pub async fn run(bench: &Bench, args: &FanoutArgs) -> Res<Report> {
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
    env.stop()?;

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
