//! The `mixed` scenario: a compressed busy hour. The population (users in
//! rooms of Zipf-distributed sizes, some with a second tab), the run's
//! phases, and the row check; each connection's life is in `actor`, the
//! comparison of what each received in `verdict`.

mod actor;
mod verdict;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at};
use tokio_util::sync::CancellationToken;

use self::actor::ActorOut;
use self::verdict::MixedTimes;
use crate::client::Target;
use crate::measure::Window;
use crate::server::{Env, rows_by_room};
use crate::stats::{Rng, now_us};
use crate::{Bench, Report, Res};

#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
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

pub async fn run(bench: &Bench, args: &MixedArgs) -> Res<Report> {
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
            tokio::spawn(actor::mixed_actor(
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
    env.stop()?;

    let times = MixedTimes {
        active_s,
        connect_s,
        failed_connects: failed,
    };
    verdict::mixed_report(&mut report, args, &outs, &sizes, &measured, &times);
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
