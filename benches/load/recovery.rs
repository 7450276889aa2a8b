//! The `recovery` scenario: K messages seeded into the database between two
//! runs of the server, then replayed to clients reconnecting from the offset
//! before them.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::client::{
    HANDSHAKE_WAIT, Ws, hello, join, open_ws, padded, parse, recv_text, send_frame, send_text,
};
use crate::measure::Window;
use crate::server;
use crate::server::stopped_figures;
use crate::stats::{mib, r3};
use crate::{Bench, Report, Res};

#[derive(Debug, Clone, Args)]
pub struct RecoveryArgs {
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

pub async fn run(bench: &Bench, args: &RecoveryArgs) -> Res<Report> {
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
    let room = format!("r-{}", bench.run);

    // 1. Let the server create the schema and store one message: the offset.
    let mut server = server::start(bench, &[])?;
    let before_gap = {
        let target = server::target(&server)?;
        let mut ws = join(&target, None, "seeder", &[room.as_str()], None).await?;
        let offset = format!("r{}-0", bench.run);
        send_text(&mut ws, send_frame(&room, "before the gap", &offset)).await?;
        let id = timeout(HANDSHAKE_WAIT, await_ack(&mut ws))
            .await
            .map_err(|_| "recovery: no ack for the first message")??;
        let _ = ws.close(None).await;
        id
    };
    server::stop(&mut server)?;

    // 2. The backlog, written while the server is down.
    eprintln!("load: seeding {} messages", args.messages);
    let seeding = Instant::now();
    let (first, last) = seed_messages(
        &server.db,
        &room,
        args.messages,
        args.text_bytes,
        &bench.run,
    )?;
    let seed_s = seeding.elapsed().as_secs_f64();
    if last - first + 1 != args.messages as i64 {
        return Err(format!(
            "seeded ids {first}..={last} are not {} in a row",
            args.messages
        )
        .into());
    }

    // 3. Start again; the clients reconnect from the offset before the backlog.
    server.restart()?;
    let target = server::target(&server)?;
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
    let stopped = server::stop(&mut server)?;

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
        report.line(format!("kept            {}", server.keep_dir().display()));
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
