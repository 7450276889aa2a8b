//! One connection of the mixed population: it connects, types, saves drafts,
//! sends (sometimes twice), reconnects with its `serverOffset`, and records
//! every id it receives and every ack it gets.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::Res;
use crate::client::{
    Frame, HANDSHAKE_WAIT, Ws, hello, open_ws, padded, parse, recv_text, send_frame, send_text,
};
use crate::stats::{Hist, Rng, new_hist, now_us, record};

use super::{ActorSpec, MixedShared};

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
pub struct ActorOut {
    pub spec: ActorSpec,
    pub failed: Option<String>,
    /// Message ids received, per room of the actor (same order as `spec.rooms`).
    pub received: Vec<Vec<i64>>,
    /// (room index, id) of every message this actor's sends stored.
    pub acked: Vec<(usize, i64)>,
    pub ack_latency: Hist,
    pub e2e_latency: Hist,
    pub sends: u64,
    pub retries: u64,
    pub duplicate_acks: u64,
    pub ack_id_mismatches: u64,
    pub acks_out_of_order: u64,
    pub reconnects: u64,
    pub resent: u64,
    pub replayed: u64,
    pub typing_received: u64,
    pub drafts_received: u64,
    pub presence_received: u64,
    pub errors: u64,
    pub order_violations: u64,
    pub unacked_at_end: u64,
    pub lost_connections: u64,
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

/// One connection's life: connect, wait for the start, act until the end,
/// collect the last acks, listen until stopped.
pub async fn mixed_actor(
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
