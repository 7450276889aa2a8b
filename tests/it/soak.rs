//! Soak test (ignored by default): many clients send, retry and reconnect for minutes; nothing may be lost or duplicated and the server's memory must stay flat.
//!
//! Run it with `NATTER_SOAK_SECS=180 cargo test --test it -- --ignored soak`.
//! `NATTER_SOAK_CLIENTS` (default 40) sets the number of clients and
//! `NATTER_SOAK_SEED` replays a run: the seed is printed first. Timing still
//! varies between runs, but every client makes the same choices (rooms,
//! texts, when to retry what, when to drop its socket) in the same order.
//!
//! Each client is one task that behaves like the page in `assets/`: it keeps
//! the highest id it has seen as its `serverOffset`, keeps every send it never
//! got an ack for, and after a reconnect sends those again with the same
//! `clientOffset`. Along the way it retries old `clientOffset`s on purpose and
//! drops its socket without a close frame: sometimes right after a send, and
//! sometimes after the next few messages, wherever in the stream that is (as
//! a network failure cuts it), never before `synced`.
//! At the end every client reconnects once more, gets all its sends acked and
//! drains its rooms; then the database and every client's log are compared.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Event, Server, WAIT, rss_kib};

const DEFAULT_SECS: u64 = 60;
const DEFAULT_CLIENTS: u64 = 40;
const ROOMS: usize = 6;
/// Pause between one client's actions: about 1.7 actions per second per
/// client, so 40 clients store about 60 messages a second and, with each room
/// shared by about a dozen of them, read several hundred frames a second.
const ACTION_GAP_MS: std::ops::Range<u64> = 150..1_000;
/// Chance that an action is an abrupt disconnect (then a reconnect): each
/// client reconnects about every 15 s.
const P_DROP: f64 = 0.04;
/// Chance that an action resends an earlier `clientOffset` (same room, same text).
const P_RETRY: f64 = 0.08;
/// How long a dropped client waits before reconnecting.
const RECONNECT_PAUSE_MS: std::ops::Range<u64> = 0..300;
/// Clients start spread over this long (or a sixth of the run, if shorter).
const STAGGER: Duration = Duration::from_secs(5);
/// After a client has every id of its rooms: how long nothing more may arrive.
const QUIET: Duration = Duration::from_millis(500);
/// The longest the quiet period may be stretched by late messages. Once every
/// send is acked nothing new is stored, so only frames already on their way
/// can come.
const QUIET_CAP: Duration = Duration::from_secs(5);
/// Memory: the last third's median may exceed the second third's by at most
/// this fraction, or by `RSS_SLACK_KIB`, whichever is larger (see `check_memory`).
const RSS_GROWTH: f64 = 0.20;
const RSS_SLACK_KIB: u64 = 8 * 1024;

struct Settings {
    secs: u64,
    clients: usize,
    seed: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let seed = env_number("NATTER_SOAK_SEED").unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        let settings = Settings {
            secs: env_number("NATTER_SOAK_SECS").unwrap_or(DEFAULT_SECS),
            clients: env_number("NATTER_SOAK_CLIENTS").unwrap_or(DEFAULT_CLIENTS) as usize,
            seed,
        };
        assert!(settings.secs >= 10, "NATTER_SOAK_SECS must be at least 10");
        assert!(
            settings.clients >= 2,
            "NATTER_SOAK_CLIENTS must be at least 2"
        );
        settings
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {value:?}")),
    )
}

/// What a client did, summed over all clients for the report.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// New messages (each with a fresh `clientOffset`).
    sends: u64,
    /// Deliberate resends of an earlier `clientOffset`.
    retries: u64,
    /// Unacked sends sent again after a reconnect.
    resends: u64,
    /// Abrupt disconnects by the client (each followed by a reconnect).
    drops: u64,
    /// ... of which with sends still waiting for their ack.
    drops_unacked: u64,
    /// Connections the server closed or broke on its own.
    server_closes: u64,
    /// Acks with `"duplicate":true`.
    duplicate_acks: u64,
    /// `internal` errors (the send was retried).
    internal_errors: u64,
    /// Frames and `message` frames read.
    frames: u64,
    messages: u64,
    /// Messages that arrived after `synced` and after a higher id of another
    /// room on the same connection.
    inversions: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.sends += o.sends;
        self.retries += o.retries;
        self.resends += o.resends;
        self.drops += o.drops;
        self.drops_unacked += o.drops_unacked;
        self.server_closes += o.server_closes;
        self.duplicate_acks += o.duplicate_acks;
        self.internal_errors += o.internal_errors;
        self.frames += o.frames;
        self.messages += o.messages;
        self.inversions += o.inversions;
    }
}

/// One logical message a client sent (perhaps several times).
struct Sent {
    room: String,
    text: String,
    /// The id its first ack gave; every later ack must agree.
    id: Option<i64>,
}

/// A delivered message as the client saw it, to compare with the database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    room: String,
    nick: String,
    client_offset: Option<String>,
    text_hash: u64,
}

/// One connection's log.
struct ConnectionLog {
    /// The `serverOffset` sent in its `hello`.
    hello_offset: i64,
    synced_offset: Option<i64>,
    /// Message ids per room, in arrival order.
    rooms: BTreeMap<String, Vec<i64>>,
    /// The highest message id received on this connection, in any room.
    max_id: i64,
    /// The last few messages received, (room, id) in arrival order: where
    /// the connection was cut.
    tail: VecDeque<(String, i64)>,
}

/// Messages kept in `ConnectionLog::tail`.
const TAIL: usize = 6;

/// An open connection.
struct Live {
    client: Client,
    /// `clientOffset`s sent on this connection whose ack has not come, in send order.
    inflight: VecDeque<String>,
    /// Sends answered with `internal`: to be sent again.
    resend: Vec<String>,
    /// A write failed or the server closed: reconnect.
    broken: bool,
    /// Drop the socket right after this many more `message` frames: a cut at
    /// an arbitrary point of the stream, as a network failure would make it.
    drop_after_messages: Option<u32>,
}

struct SoakClient {
    index: usize,
    nick: String,
    rooms: Vec<String>,
    url: String,
    rng: StdRng,
    counter: u64,
    sent: HashMap<String, Sent>,
    /// Every `clientOffset` sent, in order: what a retry picks from.
    order: Vec<String>,
    /// Sent, never acked, in order of the first send: resent after a reconnect.
    outbox: Vec<String>,
    /// The `serverOffset` of the first `hello`: the client owes every message of
    /// its rooms above it.
    start_offset: i64,
    /// The highest id seen (messages and `synced`), sent in the next `hello`.
    offset: i64,
    connections: Vec<ConnectionLog>,
    received: HashMap<i64, Seen>,
    /// Highest id received per room, over all connections.
    room_high: HashMap<String, i64>,
    stats: Stats,
    /// Highest id acked to anyone: late starters pick their first offset below it.
    highest_acked: Arc<AtomicI64>,
}

impl SoakClient {
    fn new(index: usize, seed: u64, url: String, highest_acked: Arc<AtomicI64>) -> SoakClient {
        let mut rng = StdRng::seed_from_u64(seed);
        let wanted = rng.random_range(1..=3);
        let mut rooms = BTreeSet::new();
        while rooms.len() < wanted {
            rooms.insert(room_name(rng.random_range(0..ROOMS)));
        }
        SoakClient {
            index,
            nick: format!("soak{index}"),
            rooms: rooms.into_iter().collect(),
            url,
            rng,
            counter: 0,
            sent: HashMap::new(),
            order: Vec::new(),
            outbox: Vec::new(),
            start_offset: 0,
            offset: 0,
            connections: Vec::new(),
            received: HashMap::new(),
            room_high: HashMap::new(),
            stats: Stats::default(),
            highest_acked,
        }
    }

    /// Wait a random while, then choose the first offset: somewhere below the
    /// newest acked id, so the first `hello` replays a stretch of history.
    async fn arrive(&mut self, stagger: Duration) {
        let pause = self.rng.random_range(0..=stagger.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let newest = self.highest_acked.load(Ordering::Relaxed);
        self.start_offset = self.rng.random_range(0..=newest);
        self.offset = self.start_offset;
    }

    /// Connect, `hello` with the stored offset, read up to `synced`, then send
    /// every unacked message again with its original `clientOffset`.
    async fn connect(&mut self) -> Live {
        let mut client = Client::connect(&self.url).await;
        client
            .send(json!({"type":"hello","nick":self.nick,"rooms":self.rooms,"serverOffset":self.offset}))
            .await;
        self.connections.push(ConnectionLog {
            hello_offset: self.offset,
            synced_offset: None,
            rooms: BTreeMap::new(),
            max_id: 0,
            tail: VecDeque::new(),
        });
        let mut live = Live {
            client,
            inflight: VecDeque::new(),
            resend: Vec::new(),
            broken: false,
            drop_after_messages: None,
        };
        let until = Instant::now() + WAIT;
        while self.current().synced_offset.is_none() {
            let left = until.saturating_duration_since(Instant::now());
            match live.client.next_event(left).await {
                Some(Event::Frame(frame)) => self.on_frame(frame, &mut live),
                Some(Event::Ping) => {}
                Some(Event::Closed(code)) => panic!(
                    "{}: the server closed the connection ({code:?}) before `synced`",
                    self.nick
                ),
                None => panic!(
                    "{}: no `synced` within {WAIT:?} of hello with serverOffset {} (hang)",
                    self.nick,
                    self.connections.last().expect("connected").hello_offset
                ),
            }
        }
        for client_offset in self.outbox.clone() {
            self.stats.resends += 1;
            self.transmit(&mut live, &client_offset).await;
        }
        live
    }

    fn current(&mut self) -> &mut ConnectionLog {
        self.connections.last_mut().expect("connected")
    }

    /// Act at random until `deadline`, reading everything the server sends.
    async fn run(&mut self, deadline: Instant) -> Live {
        let mut live = self.connect().await;
        let mut next_action = Instant::now() + self.gap();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return live;
            }
            if live.broken {
                live = self.connect().await;
                continue;
            }
            for client_offset in std::mem::take(&mut live.resend) {
                self.transmit(&mut live, &client_offset).await;
            }
            if now >= next_action {
                next_action = now + self.gap();
                if self.act(&mut live).await {
                    live = self.reconnect(live).await;
                }
                continue;
            }
            match live
                .client
                .next_event(next_action.min(deadline).saturating_duration_since(now))
                .await
            {
                Some(Event::Frame(frame)) => {
                    let message = frame["type"] == "message";
                    self.on_frame(frame, &mut live);
                    if message && let Some(left) = live.drop_after_messages {
                        if left <= 1 {
                            live = self.reconnect(live).await;
                        } else {
                            live.drop_after_messages = Some(left - 1);
                        }
                    }
                }
                Some(Event::Ping) | None => {}
                Some(Event::Closed(_)) => {
                    self.stats.server_closes += 1;
                    live.broken = true;
                }
            }
        }
    }

    fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(ACTION_GAP_MS))
    }

    /// Drop the socket without a close frame, whatever is unread or unacked,
    /// wait a moment, and connect again.
    async fn reconnect(&mut self, live: Live) -> Live {
        self.stats.drops += 1;
        if !live.inflight.is_empty() {
            self.stats.drops_unacked += 1;
        }
        drop(live);
        let pause = self.rng.random_range(RECONNECT_PAUSE_MS);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        self.connect().await
    }

    /// One random action: a new message, a retry, or an abrupt disconnect.
    /// Returns whether to disconnect now. A disconnect comes half the time
    /// right after a send (so its ack is still owed), and otherwise after the
    /// next 1-20 messages, wherever in the stream that is.
    async fn act(&mut self, live: &mut Live) -> bool {
        let roll: f64 = self.rng.random();
        if roll < P_DROP {
            if self.rng.random_bool(0.5) {
                self.send_new(live).await;
                return true;
            }
            if live.drop_after_messages.is_none() {
                live.drop_after_messages = Some(self.rng.random_range(1..=20));
            }
            return false;
        }
        if roll < P_DROP + P_RETRY && !self.order.is_empty() {
            let earlier = self.order[self.rng.random_range(0..self.order.len())].clone();
            self.stats.retries += 1;
            self.transmit(live, &earlier).await;
        } else {
            self.send_new(live).await;
        }
        false
    }

    async fn send_new(&mut self, live: &mut Live) {
        self.counter += 1;
        let client_offset = format!("c{}-{}", self.index, self.counter);
        let room = self.rooms[self.rng.random_range(0..self.rooms.len())].clone();
        let text = self.text(&client_offset);
        self.sent.insert(
            client_offset.clone(),
            Sent {
                room,
                text,
                id: None,
            },
        );
        self.order.push(client_offset.clone());
        // In the outbox before the frame is written: whatever happens to the
        // socket, it is sent again until acked.
        self.outbox.push(client_offset.clone());
        self.stats.sends += 1;
        self.transmit(live, &client_offset).await;
    }

    /// A text of 1 to 200 characters after the offset, some of them beyond ASCII.
    fn text(&mut self, client_offset: &str) -> String {
        const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz      äöüß€🎉中文";
        let alphabet: Vec<char> = ALPHABET.chars().collect();
        let len = self.rng.random_range(1..=200);
        let filler: String = (0..len)
            .map(|_| alphabet[self.rng.random_range(0..alphabet.len())])
            .collect();
        format!("{client_offset} {filler}")
    }

    /// Write the `send` for `client_offset`; a failed write marks the
    /// connection broken (the message stays in the outbox if unacked).
    async fn transmit(&mut self, live: &mut Live, client_offset: &str) {
        if live.broken {
            return;
        }
        let sent = &self.sent[client_offset];
        let frame =
            json!({"type":"send","room":sent.room,"text":sent.text,"clientOffset":client_offset});
        match live.client.ws.send(Message::text(frame.to_string())).await {
            Ok(()) => live.inflight.push_back(client_offset.to_string()),
            Err(_) => {
                self.stats.server_closes += 1;
                live.broken = true;
            }
        }
    }

    fn on_frame(&mut self, frame: Value, live: &mut Live) {
        self.stats.frames += 1;
        match frame["type"].as_str().unwrap_or_default() {
            "message" => self.on_message(&frame),
            "ack" => self.on_ack(&frame, live),
            "synced" => {
                let offset = frame["serverOffset"].as_i64().expect("synced.serverOffset");
                self.current().synced_offset = Some(offset);
                self.offset = self.offset.max(offset);
            }
            "error" => {
                let reference = frame["ref"].as_str().unwrap_or_default();
                let position = live.inflight.iter().position(|o| o == reference);
                match (frame["code"].as_str(), position) {
                    // Not stored: send it again with the same clientOffset (section 8).
                    (Some("internal"), Some(at)) => {
                        let client_offset = live.inflight.remove(at).unwrap();
                        self.stats.internal_errors += 1;
                        live.resend.push(client_offset);
                    }
                    _ => panic!("{}: unexpected error {frame}", self.nick),
                }
            }
            "welcome" | "joined" | "presence" | "presence_diff" | "typing" | "draft" | "pong" => {}
            _ => panic!("{}: unexpected frame {frame}", self.nick),
        }
    }

    fn on_message(&mut self, frame: &Value) {
        let id = frame["id"].as_i64().expect("message.id");
        let room = frame["room"].as_str().expect("message.room").to_string();
        let text = frame["text"].as_str().expect("message.text");
        let client_offset = frame["clientOffset"].as_str().map(str::to_string);
        assert!(
            self.rooms.contains(&room),
            "{}: message {id} of room {room}, which it never joined",
            self.nick
        );
        self.stats.messages += 1;
        let connection = self.current();
        connection.rooms.entry(room.clone()).or_default().push(id);
        let behind = id < connection.max_id && connection.synced_offset.is_some();
        connection.max_id = connection.max_id.max(id);
        if connection.tail.len() == TAIL {
            connection.tail.pop_front();
        }
        connection.tail.push_back((room.clone(), id));
        if behind {
            // Allowed (order is per room), but a client that stores one
            // offset for all rooms depends on it: counted for the report.
            self.stats.inversions += 1;
        }
        self.offset = self.offset.max(id);
        let high = self.room_high.entry(room.clone()).or_default();
        *high = (*high).max(id);
        if let Some(sent) = client_offset.as_ref().and_then(|o| self.sent.get(o)) {
            assert_eq!(
                (text, room.as_str()),
                (sent.text.as_str(), sent.room.as_str()),
                "{}: own message {id} came back changed",
                self.nick
            );
            if let Some(acked) = sent.id {
                assert_eq!(
                    acked, id,
                    "{}: own message acked with another id",
                    self.nick
                );
            }
        }
        let seen = Seen {
            room,
            nick: frame["nick"].as_str().expect("message.nick").to_string(),
            client_offset,
            text_hash: hash(text),
        };
        if let Some(before) = self.received.get(&id) {
            assert_eq!(
                before, &seen,
                "{}: message {id} differs between deliveries",
                self.nick
            );
        } else {
            self.received.insert(id, seen);
        }
    }

    fn on_ack(&mut self, frame: &Value, live: &mut Live) {
        let client_offset = frame["clientOffset"].as_str().expect("ack.clientOffset");
        let id = frame["id"].as_i64().expect("ack.id");
        let expected = live.inflight.pop_front();
        assert_eq!(
            expected.as_deref(),
            Some(client_offset),
            "{}: ack out of send order (still owed: {:?})",
            self.nick,
            live.inflight
        );
        let duplicate = frame["duplicate"] == true;
        let sent = self
            .sent
            .get_mut(client_offset)
            .expect("an ack for a clientOffset never sent");
        match sent.id {
            Some(before) => {
                assert_eq!(
                    before, id,
                    "{}: {client_offset} was acked as {before}, now as {id}",
                    self.nick
                );
                assert!(
                    duplicate,
                    "{}: a resend of {client_offset} (stored as {id}) was not acked as a duplicate",
                    self.nick
                );
            }
            None => sent.id = Some(id),
        }
        if duplicate {
            self.stats.duplicate_acks += 1;
        }
        self.outbox.retain(|o| o != client_offset);
        self.highest_acked.fetch_max(id, Ordering::Relaxed);
    }

    /// The end: drop the socket once more, reconnect and wait until every
    /// send ever made is acked.
    async fn settle(&mut self, live: Live) -> Live {
        self.stats.drops += 1;
        if !live.inflight.is_empty() {
            self.stats.drops_unacked += 1;
        }
        drop(live);
        let mut live = self.connect().await;
        let mut reconnects = 0;
        while !(self.outbox.is_empty() && live.inflight.is_empty()) {
            if live.broken {
                reconnects += 1;
                assert!(reconnects <= 3, "{}: the server keeps closing", self.nick);
                live = self.connect().await;
                continue;
            }
            for client_offset in std::mem::take(&mut live.resend) {
                self.transmit(&mut live, &client_offset).await;
            }
            match live.client.next_event(WAIT).await {
                Some(Event::Frame(frame)) => self.on_frame(frame, &mut live),
                Some(Event::Ping) => {}
                Some(Event::Closed(_)) => {
                    self.stats.server_closes += 1;
                    live.broken = true;
                }
                None => panic!(
                    "{}: no ack within {WAIT:?}; still owed {:?} (hang)",
                    self.nick, live.inflight
                ),
            }
        }
        live
    }

    /// Read until every room's newest stored id has arrived (bounded), then
    /// until no message has come for `QUIET`: anything late is recorded and
    /// judged (a duplicate, or a message the client should not get).
    async fn drain(&mut self, mut live: Live, newest: &HashMap<String, i64>) {
        let until = Instant::now() + WAIT;
        while !self.caught_up(newest) {
            let left = until.saturating_duration_since(Instant::now());
            match live.client.next_event(left).await {
                Some(Event::Frame(frame)) => self.on_frame(frame, &mut live),
                Some(Event::Ping) => {}
                // Missing ids are reported by the checks.
                Some(Event::Closed(_)) | None => return,
            }
        }
        let mut quiet_until = Instant::now() + QUIET;
        let cap = Instant::now() + QUIET_CAP;
        while Instant::now() < quiet_until.min(cap) {
            let left = quiet_until.saturating_duration_since(Instant::now());
            match live.client.next_event(left).await {
                Some(Event::Frame(frame)) => {
                    if frame["type"] == "message" {
                        quiet_until = Instant::now() + QUIET;
                    }
                    self.on_frame(frame, &mut live);
                }
                Some(Event::Ping) => {}
                Some(Event::Closed(_)) | None => return,
            }
        }
    }

    fn caught_up(&self, newest: &HashMap<String, i64>) -> bool {
        self.rooms.iter().all(|room| {
            let last = newest.get(room).copied().unwrap_or(0);
            last <= self.start_offset || self.room_high.get(room).copied().unwrap_or(0) >= last
        })
    }
}

fn room_name(i: usize) -> String {
    format!("soak-{i}")
}

fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Wait for a client task (bounded), passing on its panic.
async fn join<T>(task: JoinHandle<T>, until: Instant, what: &str) -> T {
    match tokio::time::timeout_at(until, task).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("a client did not finish {what} in time (hang)"),
    }
}

/// One database row.
struct Row {
    room: String,
    nick: String,
    text: String,
    client_offset: Option<String>,
}

fn stored_rows(server: &Server) -> BTreeMap<i64, Row> {
    let conn = server.sqlite();
    let mut stmt = conn
        .prepare("SELECT id, room, nick, text, client_offset FROM messages ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            Row {
                room: r.get(1)?,
                nick: r.get(2)?,
                text: r.get(3)?,
                client_offset: r.get(4)?,
            },
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn duplicated_offsets(server: &Server) -> Vec<(String, i64)> {
    let conn = server.sqlite();
    let mut stmt = conn
        .prepare(
            "SELECT client_offset, count(*) FROM messages WHERE client_offset IS NOT NULL
             GROUP BY client_offset HAVING count(*) > 1",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// At most a few items of a long list, for messages.
fn some<T: std::fmt::Debug>(items: &[T]) -> String {
    const SHOWN: usize = 8;
    if items.len() <= SHOWN {
        format!("{items:?}")
    } else {
        format!("{:?} and {} more", &items[..SHOWN], items.len() - SHOWN)
    }
}

/// (1) One row per distinct clientOffset ever sent, as sent, with the acked id.
fn check_store(
    clients: &[SoakClient],
    rows: &BTreeMap<i64, Row>,
    duplicated: &[(String, i64)],
) -> Vec<String> {
    let mut problems = Vec::new();
    if !duplicated.is_empty() {
        problems.push(format!(
            "clientOffsets stored more than once: {}",
            some(duplicated)
        ));
    }
    let by_offset: HashMap<&str, (i64, &Row)> = rows
        .iter()
        .filter_map(|(id, row)| Some((row.client_offset.as_deref()?, (*id, row))))
        .collect();
    let mut sent = BTreeSet::new();
    for client in clients {
        for (client_offset, message) in &client.sent {
            sent.insert(client_offset.as_str());
            let Some(&(id, row)) = by_offset.get(client_offset.as_str()) else {
                continue; // reported below
            };
            if (row.room.as_str(), row.nick.as_str(), row.text.as_str())
                != (
                    message.room.as_str(),
                    client.nick.as_str(),
                    message.text.as_str(),
                )
            {
                problems.push(format!("row {id} ({client_offset}) is not what was sent"));
            }
            if message.id != Some(id) {
                problems.push(format!(
                    "{client_offset} is stored as {id} but was acked as {:?}",
                    message.id
                ));
            }
        }
    }
    let stored: BTreeSet<&str> = by_offset.keys().copied().collect();
    let lost: Vec<&&str> = sent.difference(&stored).collect();
    let unexpected: Vec<&&str> = stored.difference(&sent).collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} sent clientOffsets are not stored: {}",
            lost.len(),
            some(&lost)
        ));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} stored clientOffsets were never sent: {}",
            unexpected.len(),
            some(&unexpected)
        ));
    }
    let without_offset = rows.values().filter(|r| r.client_offset.is_none()).count();
    if without_offset > 0 || rows.len() != sent.len() {
        problems.push(format!(
            "{} rows ({without_offset} without clientOffset) for {} distinct clientOffsets sent",
            rows.len(),
            sent.len()
        ));
    }
    problems
}

/// (2) Per (client, room): ids strictly increasing within each connection, no
/// id twice over all connections, and together exactly the stored ids of the
/// room above the client's first offset; every delivered frame as stored.
fn check_deliveries(clients: &[SoakClient], rows: &BTreeMap<i64, Row>) -> Vec<String> {
    let mut problems = Vec::new();
    for client in clients {
        for (&id, seen) in &client.received {
            let same = rows.get(&id).is_some_and(|row| {
                *seen
                    == Seen {
                        room: row.room.clone(),
                        nick: row.nick.clone(),
                        client_offset: row.client_offset.clone(),
                        text_hash: hash(&row.text),
                    }
            });
            if !same {
                problems.push(format!(
                    "{}: message {id} as delivered differs from the stored row",
                    client.nick
                ));
            }
        }
        for room in &client.rooms {
            let who = format!("{} in {room}", client.nick);
            let mut times_seen: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
            for (k, connection) in client.connections.iter().enumerate() {
                let ids = connection.rooms.get(room).map(Vec::as_slice).unwrap_or(&[]);
                if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
                    problems.push(format!(
                        "{who}: connection {k} (hello serverOffset {}) received {} after {}",
                        connection.hello_offset, w[1], w[0]
                    ));
                }
                for &id in ids {
                    times_seen.entry(id).or_default().push(k);
                }
            }
            let repeated: Vec<(i64, Vec<usize>)> = times_seen
                .iter()
                .filter(|(_, ks)| ks.len() > 1)
                .map(|(id, ks)| (*id, ks.clone()))
                .collect();
            if !repeated.is_empty() {
                problems.push(format!(
                    "{who}: {} ids received more than once (id, connections): {}",
                    repeated.len(),
                    some(&repeated)
                ));
            }
            let expected: BTreeSet<i64> = rows
                .range(client.start_offset + 1..)
                .filter(|(_, row)| row.room == *room)
                .map(|(id, _)| *id)
                .collect();
            let got: BTreeSet<i64> = times_seen.keys().copied().collect();
            let extra: Vec<&i64> = got.difference(&expected).collect();
            if !extra.is_empty() {
                problems.push(format!(
                    "{who}: received ids not stored in this room above its first offset {}: {}",
                    client.start_offset,
                    some(&extra)
                ));
            }
            let missing: Vec<String> = expected
                .difference(&got)
                .map(|&id| explain_missing(client, room, id))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{who}: {} of {} ids never arrived: {}",
                    missing.len(),
                    expected.len(),
                    some(&missing)
                ));
            }
        }
    }
    problems
}

/// Where a missing id fell between the client's connections.
fn explain_missing(client: &SoakClient, room: &str, id: i64) -> String {
    let skipped_by = client.connections.iter().position(|c| c.hello_offset >= id);
    match skipped_by {
        Some(k) if k > 0 => {
            let before = &client.connections[k - 1];
            let room_last = before
                .rooms
                .get(room)
                .and_then(|ids| ids.last())
                .copied()
                .unwrap_or(0);
            format!(
                "{id}: not delivered on connection {} (synced {:?}, last id there in this room \
                 {room_last}, last messages before the cut {:?}); connection {k} said hello with \
                 serverOffset {}",
                k - 1,
                before.synced_offset,
                before.tail,
                client.connections[k].hello_offset
            )
        }
        _ => {
            let k = client.connections.len() - 1;
            format!(
                "{id}: not delivered by the last connection {k} (hello serverOffset {})",
                client.connections[k].hello_offset
            )
        }
    }
}

/// RSS samples in KiB with the second of the run they were taken at.
type Samples = Vec<(u64, u64)>;

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// (3) The last third's median RSS against the second third's.
///
/// The first third is warm-up: SQLite's page caches (4 readers and the
/// writer, up to about 2 MiB each) fill as the database grows, the
/// allocator's arenas and tokio's buffers reach their working size, and
/// connection churn settles. After that, a server that forgets nothing should
/// be flat; the median of a third ignores single spikes (a burst of
/// reconnects, a big replay). A leak grows with traffic, and this run has
/// tens of thousands of messages, fan-outs and hundreds of connections per
/// minute: a few hundred bytes kept per message or a few KiB per connection
/// add up to more than the allowance in a 2-minute run. The allowance is 20%
/// or 8 MiB, whichever is larger: a debug server here sits around 20-30 MiB,
/// and glibc's arenas alone move RSS by a few MiB without anything being kept,
/// so a purely relative bound would make the test flaky on a loaded machine.
fn check_memory(samples: &Samples) -> (Vec<String>, String) {
    let kib: Vec<u64> = samples.iter().map(|&(_, k)| k).collect();
    let third = kib.len() / 3;
    if third < 2 {
        return (
            vec![format!("only {} RSS samples", kib.len())],
            String::new(),
        );
    }
    let second = median(&kib[third..2 * third]);
    let last = median(&kib[2 * third..]);
    let allowed = ((second as f64 * RSS_GROWTH) as u64).max(RSS_SLACK_KIB);
    let course: Vec<String> = (0..=10)
        .map(|tenth| {
            let (second, kib) = samples[(samples.len() - 1) * tenth / 10];
            format!("{second}s:{kib}")
        })
        .collect();
    let summary = format!(
        "RSS: {} samples ({}), first {} KiB, min {} KiB, peak {} KiB, last {} KiB; \
         median of thirds {} / {second} / {last} KiB (growth allowed {allowed} KiB)",
        kib.len(),
        course.join(" "),
        kib[0],
        kib.iter().min().unwrap(),
        kib.iter().max().unwrap(),
        kib[kib.len() - 1],
        median(&kib[..third]),
    );
    let mut problems = Vec::new();
    if last > second + allowed {
        problems.push(format!(
            "memory grew: median RSS {second} KiB in the second third, {last} KiB in the last \
             (allowed {allowed} KiB more); samples (s, KiB): {samples:?}"
        ));
    }
    (problems, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: run with NATTER_SOAK_SECS=180 cargo test --test it -- --ignored soak"]
async fn clients_sending_retrying_and_reconnecting_for_minutes_lose_nothing_duplicate_nothing_and_memory_stays_flat()
 {
    let settings = Settings::from_env();
    println!(
        "soak: seed {} ({} clients, {ROOMS} rooms, {} s); replay with NATTER_SOAK_SEED={}",
        settings.seed, settings.clients, settings.secs, settings.seed
    );
    let mut server = Server::start(&["--sends-per-10s", "0", "--max-connections-per-ip", "0"]);
    let pid = server.pid();
    let started = Instant::now();
    let run = Duration::from_secs(settings.secs);
    let deadline = started + run;
    // Every client task ends on its own: each wait inside is bounded by
    // `WAIT`. These caps only turn a slower end into a failure: a client may
    // be reconnecting at the deadline (connect, synced), then reconnects once
    // more and waits for its acks. With the drain (`WAIT` + `QUIET_CAP`) a
    // run ends at most 56 s after its traffic, which keeps CI's 120 s run
    // within 3 minutes.
    let hard_stop = deadline + 4 * WAIT;

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut samples = Samples::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let second = started.elapsed().as_secs();
                samples.push((second, rss_kib(pid, "VmRSS:")));
            }
            samples
        }
    });

    let highest_acked = Arc::new(AtomicI64::new(0));
    let stagger = STAGGER.min(run / 6);
    let mut seeds = StdRng::seed_from_u64(settings.seed);
    let tasks: Vec<JoinHandle<(SoakClient, Live)>> = (0..settings.clients)
        .map(|index| {
            let mut client = SoakClient::new(
                index,
                seeds.random(),
                server.ws_url(),
                highest_acked.clone(),
            );
            tokio::spawn(async move {
                client.arrive(stagger).await;
                let live = client.run(deadline).await;
                let live = client.settle(live).await;
                (client, live)
            })
        })
        .collect();
    let mut settled = Vec::with_capacity(tasks.len());
    for task in tasks {
        settled.push(join(task, hard_stop, "sending and settling").await);
    }
    let settled_after = started.elapsed();
    sampling.store(false, Ordering::Relaxed);

    // Every send is acked and nobody sends any more: the store is final.
    let rows = stored_rows(&server);
    let duplicated = duplicated_offsets(&server);
    let mut newest: HashMap<String, i64> = HashMap::new();
    for (&id, row) in &rows {
        newest.insert(row.room.clone(), id);
    }
    let newest = Arc::new(newest);
    let drained_by = Instant::now() + WAIT + QUIET_CAP + Duration::from_secs(1);
    let tasks: Vec<JoinHandle<SoakClient>> = settled
        .into_iter()
        .map(|(mut client, live)| {
            let newest = newest.clone();
            tokio::spawn(async move {
                client.drain(live, &newest).await;
                client
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        clients.push(join(task, drained_by, "draining").await);
    }
    // It stopped about a second after the settling.
    let samples = join(sampler, Instant::now() + WAIT, "sampling").await;
    let peak = rss_kib(pid, "VmHWM:");
    let still_running = server.child.as_mut().unwrap().try_wait().unwrap().is_none();
    let database_kib: u64 = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut path = server.db.clone().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).ok()
        })
        .map(|m| m.len() / 1024)
        .sum();

    let mut stats = Stats::default();
    for client in &clients {
        stats.add(&client.stats);
    }
    let run_samples: Samples = samples
        .iter()
        .copied()
        .filter(|&(second, _)| second <= settings.secs)
        .collect();
    let (memory_problems, memory_summary) = check_memory(&run_samples);
    println!(
        "soak summary: seed {}, {} clients in {ROOMS} rooms for {} s (all acked after {:.1} s, \
         drained after {:.1} s): {} messages sent, {} deliberate retries, {} resends of unacked \
         sends after reconnects, {} client drops and reconnects ({} with sends unacked), {} \
         connections closed by the server, {} acks marked duplicate, {} internal errors; {} rows \
         stored ({database_kib} KiB with the WAL); clients read {} frames, {} of them messages ({} live ones after a higher id of \
         another room on the same connection). {memory_summary}; VmHWM {peak} KiB.",
        settings.seed,
        settings.clients,
        settings.secs,
        settled_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        stats.sends,
        stats.retries,
        stats.resends,
        stats.drops,
        stats.drops_unacked,
        stats.server_closes,
        stats.duplicate_acks,
        stats.internal_errors,
        rows.len(),
        stats.frames,
        stats.messages,
        stats.inversions,
    );

    let mut problems = Vec::new();
    if !still_running {
        problems.push("the server exited during the run".to_string());
    }
    problems.extend(check_store(&clients, &rows, &duplicated));
    problems.extend(check_deliveries(&clients, &rows));
    problems.extend(memory_problems);
    assert!(
        problems.is_empty(),
        "soak failed (seed {}, replay with NATTER_SOAK_SEED={}):\n{}",
        settings.seed,
        settings.seed,
        problems.join("\n")
    );
}
