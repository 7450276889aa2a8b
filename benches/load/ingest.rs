//! The `ingest` scenario: write throughput. C clients, each in its own room,
//! each keeping W sends in flight until it has M acks.

use std::collections::VecDeque;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::timeout_at;

use crate::client::{Ws, join_many, padded, parse, recv_text, send_frame, send_text};
use crate::measure::Window;
use crate::server::{Env, rows_by_room};
use crate::stats::{Hist, hist_text, merge, new_hist, now_us, r3, record};
use crate::{Bench, Report, Res};

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
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

/// What one ingest client saw.
struct IngestOut {
    acked: u64,
    errors: u64,
    ack_mismatches: u64,
    own_messages: u64,
    latency: Hist,
}

pub async fn run(bench: &Bench, args: &IngestArgs) -> Res<Report> {
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
    env.stop()?;

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
