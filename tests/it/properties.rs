//! Sections 3-4 as properties: random interleavings of send, retry, disconnect and reconnect against the real server keep exactly-once storage and id order.
//!
//! A proptest strategy generates a script for 2-4 simulated clients in 1-2
//! rooms; the script runs against one real server (one per test, with fresh
//! rooms per case), then every client reconnects once more, retries whatever
//! was never acknowledged and drains. The checks compare everything the clients
//! received with the database:
//! 1. one row per clientOffset sent, none for anything else; every ack of an
//!    offset carries that row's id and ts, and at most one is not a duplicate;
//! 2. on each connection, per room, ids strictly increase and follow the store
//!    without a gap from the connection's offset, and after `synced` they
//!    increase across rooms too; over its reconnects a client saw every
//!    message of its rooms;
//! 3. every broadcast carries the id and ts of its ack (both equal the row).
//!
//! The simulated clients store their offset as section 2 says (from `synced`
//! on), one for all their rooms, so property 2 with two rooms needs the
//! connection's one id order across rooms (docs/protocol.md, "One id order
//! per connection"). `a_client_in_two_rooms_...` checks the handshake side of
//! that without randomness.
//!
//! Failing scripts are written to `tests/it/properties.proptest-regressions`
//! (see `config`). A script fixes the steps, not the server's timing, so a
//! replayed failure may need a few runs to show again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::task::AbortOnDropHandle;

use crate::helpers::{Client, Server, WAIT};

/// Cases per run unless `PROPTEST_CASES` says otherwise: about a second of
/// work each on two cores.
const DEFAULT_CASES: u32 = 12;

/// Where failing scripts are kept. proptest replays every seed in this file
/// before generating new cases, so a failure found once (locally or in CI) is
/// tried again on every later run until it passes; commit the file if one
/// appears. (The default location needs the source path, which only the
/// `proptest!` macro supplies; the runner here is built by hand so that one
/// server serves all cases.)
const REGRESSIONS: &str = "tests/it/properties.proptest-regressions";

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        // A failing case can take up to WAIT; keep shrinking bounded.
        max_shrink_iters: 200,
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

#[test]
fn sends_are_stored_once_and_delivered_in_id_order_under_random_reconnects_in_one_room() {
    check_random_scripts(1);
}

/// Clients in one room or both: their single offset must not pass a message
/// of one room that has not arrived yet.
#[test]
fn sends_are_stored_once_and_delivered_in_id_order_under_random_reconnects_in_two_rooms() {
    check_random_scripts(2);
}

/// Run generated scripts with `rooms` rooms (clients in one or both) against
/// one server, fresh rooms for each case.
fn check_random_scripts(rooms: usize) {
    // No send limit, and no per-address connection cap: a script reconnects
    // often, and dropped connections take a moment to be counted out.
    let server = Server::start(&["--sends-per-10s", "0", "--max-connections-per-ip", "0"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&script(rooms), |script| {
        let case = case.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(run_script(&server, case, &script));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// The two-room property at the handshake, made deterministic. A client
/// stores one offset for all its rooms, `synced.serverOffset` and then the
/// highest id it receives (section 2). Here `b`'s replay, stalled on a full
/// socket, goes on to deliver a message newer than one of `a` committed
/// meanwhile, after `a`'s replay. Unless the older message comes before
/// `synced` (which carries the newer id), a client that stops right after
/// `synced` (a crash, a dropped connection, a closed tab) reconnects above
/// the older message, and its replay skips it.
#[tokio::test]
async fn a_client_in_two_rooms_that_stops_right_after_synced_misses_nothing() {
    let server = Server::start(&[]);
    // About 20 MB of history: more than the socket buffers hold, so replaying
    // `b` to a client that does not read stalls midway.
    crate::helpers::seed(&server.db, "b", 10_000, 2_000);
    let (mut sender, _) = server.joined("sender", &["a", "b"]).await;
    let mut observer = server.client().await;
    observer.hello("observer", &["a", "b"], Some(0)).await;
    while observer.next_of("message").await["room"] != "b" {}

    // While `b` is being replayed (the observer reads nothing meanwhile):
    let older = sender.say("a", "older, in a", "older").await["id"].as_i64();
    let newer = sender.say("b", "newer, in b", "newer").await["id"].as_i64();
    let (older, newer) = (older.expect("id"), newer.expect("id"));

    let frames = observer.until("synced").await;
    let before_synced = crate::helpers::ids(&frames);
    let stored = frames.last().expect("synced")["serverOffset"]
        .as_i64()
        .expect("offset");
    // The client stops here, and comes back with what it stored.
    let mut again = server.client().await;
    again.hello("observer", &["a", "b"], Some(stored)).await;
    let replayed = crate::helpers::ids(&again.until("synced").await);
    assert!(
        before_synced.contains(&older) || replayed.contains(&older),
        "message {older} (room a) was not delivered before synced (serverOffset {stored}; \
         {newer} of room b was), and a client that reconnects with {stored} never gets it"
    );
}

// ---- scripts ---------------------------------------------------------------

/// One step of a script. A step that needs a connection does nothing while
/// its client is disconnected.
#[derive(Debug, Clone)]
enum Step {
    /// A new message in one of the client's rooms, not waiting for its ack.
    Send {
        client: usize,
        room: Index,
    },
    /// The same frame as one of the client's earlier sends (same room, text
    /// and clientOffset), whether or not its ack has arrived.
    Retry {
        client: usize,
        pick: Index,
    },
    /// Drop the socket, with whatever is in flight; `clean` sends a close
    /// frame first, otherwise the TCP connection just goes.
    Disconnect {
        client: usize,
        clean: bool,
    },
    /// Drop the socket if open, then `hello` with the stored serverOffset.
    Reconnect {
        client: usize,
    },
    Pause {
        ms: u64,
    },
}

#[derive(Debug, Clone)]
struct Script {
    rooms: usize,
    /// Each client's rooms, as indices below `rooms`.
    clients: Vec<Vec<usize>>,
    steps: Vec<Step>,
}

fn script(rooms: usize) -> impl Strategy<Value = Script> {
    (2..=4usize).prop_flat_map(move |clients| {
        let membership = if rooms == 1 {
            Just(vec![0]).boxed()
        } else {
            prop_oneof![Just(vec![0]), Just(vec![1]), Just(vec![0, 1])].boxed()
        };
        (
            Just(rooms),
            prop::collection::vec(membership, clients),
            prop::collection::vec(step(clients), 1..=40),
        )
            .prop_map(|(rooms, clients, steps)| Script {
                rooms,
                clients,
                steps,
            })
    })
}

fn step(clients: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..clients, any::<Index>()).prop_map(|(client, room)| Step::Send { client, room }),
        3 => (0..clients, any::<Index>()).prop_map(|(client, pick)| Step::Retry { client, pick }),
        1 => (0..clients, any::<bool>())
            .prop_map(|(client, clean)| Step::Disconnect { client, clean }),
        2 => (0..clients).prop_map(|client| Step::Reconnect { client }),
        1 => (0..20u64).prop_map(|ms| Step::Pause { ms }),
    ]
}

// ---- simulated clients -------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Everything one connection received, in order, appended by its reader task.
#[derive(Default)]
struct Log {
    frames: Mutex<Vec<Value>>,
    changed: Notify,
}

impl Log {
    fn frames(&self) -> Vec<Value> {
        self.frames.lock().expect("log").clone()
    }

    /// Wait (bounded by WAIT) until `done` holds for the frames received so far.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if done(&self.frames()) {
                return;
            }
            if tokio::time::timeout_at(deadline, self.changed.notified())
                .await
                .is_err()
            {
                panic!(
                    "timed out waiting for {what}; received {:#?}",
                    self.frames()
                );
            }
        }
    }
}

async fn read_into(mut stream: SplitStream<Ws>, log: Arc<Log>) {
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = message {
            let frame = serde_json::from_str(&text)
                .unwrap_or_else(|_| json!({"type": "not json", "text": text.as_str()}));
            log.frames.lock().expect("log").push(frame);
            log.changed.notify_one();
        }
    }
}

/// One connection a client opened: its hello offset, what it sent, what it got.
struct Connection {
    offset: i64,
    sent: Vec<String>,
    log: Arc<Log>,
}

struct Open {
    sink: SplitSink<Ws, Message>,
    reader: AbortOnDropHandle<()>,
}

struct Sent {
    offset: String,
    room: String,
    text: String,
}

struct SimClient {
    nick: String,
    rooms: Vec<String>,
    open: Option<Open>,
    /// Every connection so far; the last one is open when `open` is some.
    connections: Vec<Connection>,
    sent: Vec<Sent>,
}

impl SimClient {
    /// What a client stores as its serverOffset, as section 2 tells it to: on
    /// each connection, nothing until `synced`, then its `serverOffset`, then
    /// the highest message id received. (Ids replayed before `synced` do not
    /// count: the replay goes room by room, so a connection dropped halfway
    /// has seen high ids of one room and none yet of the next.)
    fn stored_offset(&self) -> i64 {
        let mut stored = 0;
        for connection in &self.connections {
            let frames = connection.log.frames();
            let Some(synced) = frames.iter().position(|f| f["type"] == "synced") else {
                continue;
            };
            stored = stored.max(frames[synced]["serverOffset"].as_i64().expect("offset"));
            stored = stored.max(message_ids(&frames[synced..]).max().unwrap_or(0));
        }
        stored
    }

    async fn connect(&mut self, server: &Server) {
        self.disconnect(false).await;
        let offset = self.stored_offset();
        let (sink, stream) = Client::connect(&server.ws_url()).await.ws.split();
        let log = Arc::new(Log::default());
        let reader = AbortOnDropHandle::new(tokio::spawn(read_into(stream, log.clone())));
        self.open = Some(Open { sink, reader });
        self.connections.push(Connection {
            offset,
            sent: Vec::new(),
            log,
        });
        let hello =
            json!({"type":"hello","nick":self.nick,"rooms":self.rooms,"serverOffset":offset});
        self.write(hello).await;
    }

    /// Frames still in flight towards this client are lost, as on a real drop.
    async fn disconnect(&mut self, clean: bool) {
        let Some(Open { mut sink, reader }) = self.open.take() else {
            return;
        };
        if clean {
            let _ = sink.close().await;
        }
        drop(sink);
        reader.abort();
        let _ = reader.await;
    }

    async fn write(&mut self, frame: Value) {
        let open = self.open.as_mut().expect("connected");
        open.sink
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    async fn send(&mut self, index: usize) {
        let Sent { offset, room, text } = &self.sent[index];
        let frame = json!({"type":"send","room":room,"text":text,"clientOffset":offset});
        let offset = offset.clone();
        self.write(frame).await;
        self.current().sent.push(offset);
    }

    fn current(&mut self) -> &mut Connection {
        self.connections.last_mut().expect("a connection")
    }

    fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Every frame of type `kind` this client received, on any connection.
    fn all_of(&self, kind: &str) -> Vec<Value> {
        self.connections
            .iter()
            .flat_map(|c| c.log.frames())
            .filter(|f| f["type"] == kind)
            .collect()
    }

    /// One line per connection: its hello offset and, in order, what it got
    /// (`m<id>/<room>`, `ack <offset>=<id>`, `synced <offset>`, ...).
    fn transcript(&self) -> String {
        let mut out = String::new();
        for (n, connection) in self.connections.iter().enumerate() {
            out += &format!(
                "{} connection {n}, serverOffset {}:",
                self.nick, connection.offset
            );
            for f in connection.log.frames() {
                let item = match f["type"].as_str().unwrap_or("?") {
                    "message" => format!("m{}/{}", f["id"], f["room"].as_str().unwrap_or("?")),
                    "ack" => format!(
                        "ack {}={}",
                        f["clientOffset"].as_str().unwrap_or("?"),
                        f["id"]
                    ),
                    "synced" => format!("synced {}", f["serverOffset"]),
                    "welcome" => format!("welcome {}", f["serverOffset"]),
                    other => other.to_string(),
                };
                out += &format!(" {item};");
            }
            out += "\n";
        }
        out
    }

    fn acked(&self) -> BTreeSet<String> {
        self.all_of("ack")
            .iter()
            .filter_map(|a| a["clientOffset"].as_str().map(str::to_string))
            .collect()
    }
}

// ---- running a script --------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: i64,
    room: String,
    nick: String,
    text: String,
    ts: i64,
    client_offset: Option<String>,
}

async fn run_script(server: &Server, case: usize, script: &Script) {
    let rooms: Vec<String> = (0..script.rooms).map(|r| format!("p{case}-r{r}")).collect();
    let mut clients: Vec<SimClient> = script
        .clients
        .iter()
        .enumerate()
        .map(|(i, member_of)| SimClient {
            nick: format!("c{i}"),
            rooms: member_of.iter().map(|&r| rooms[r].clone()).collect(),
            open: None,
            connections: Vec::new(),
            sent: Vec::new(),
        })
        .collect();

    // Everyone starts connected and synced, with offset 0: the rooms are new,
    // so each client must end up seeing every message of its rooms.
    for client in &mut clients {
        client.connect(server).await;
        let log = client.current().log.clone();
        log.wait_until("synced", |f| f.iter().any(|f| f["type"] == "synced"))
            .await;
    }
    let mut counter = 0;
    for step in &script.steps {
        match *step {
            Step::Send { client, ref room } => {
                let client_index = client;
                let client = &mut clients[client];
                if !client.is_open() {
                    continue;
                }
                counter += 1;
                let room = client.rooms[room.index(client.rooms.len())].clone();
                client.sent.push(Sent {
                    offset: format!("p{case}-c{client_index}-{counter}"),
                    room,
                    text: format!("m{counter} ✓ from c{client_index}"),
                });
                client.send(client.sent.len() - 1).await;
            }
            Step::Retry { client, ref pick } => {
                let client = &mut clients[client];
                if client.is_open() && !client.sent.is_empty() {
                    client.send(pick.index(client.sent.len())).await;
                }
            }
            Step::Disconnect { client, clean } => clients[client].disconnect(clean).await,
            Step::Reconnect { client } => clients[client].connect(server).await,
            Step::Pause { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    // Settle: reconnect everyone, retry what never got an ack, then drain.
    for client in &mut clients {
        client.connect(server).await;
    }
    for client in &mut clients {
        let log = client.current().log.clone();
        log.wait_until("synced", |f| f.iter().any(|f| f["type"] == "synced"))
            .await;
        let acked = client.acked();
        let unacked: Vec<usize> = (0..client.sent.len())
            .filter(|&i| !acked.contains(&client.sent[i].offset))
            .collect();
        for &i in &unacked {
            client.send(i).await;
        }
        let waiting: Vec<String> = unacked
            .iter()
            .map(|&i| client.sent[i].offset.clone())
            .collect();
        log.wait_until("acks of the retried sends", |frames| {
            waiting.iter().all(|offset| {
                frames
                    .iter()
                    .any(|f| f["type"] == "ack" && f["clientOffset"] == offset.as_str())
            })
        })
        .await;
    }
    let rows = stored_rows(server, &rooms);
    for client in &mut clients {
        let offset = client.current().offset;
        let expected: BTreeSet<i64> = rows
            .iter()
            .filter(|r| r.id > offset && client.rooms.contains(&r.room))
            .map(|r| r.id)
            .collect();
        let log = client.current().log.clone();
        log.wait_until("every message of the client's rooms", |frames| {
            let seen: BTreeSet<i64> = message_ids(frames).collect();
            expected.is_subset(&seen)
        })
        .await;
    }
    for client in &mut clients {
        client.disconnect(true).await;
    }

    check_exactly_once(&clients, &rows);
    check_order_and_completeness(&clients, &rows);
}

fn message_ids(frames: &[Value]) -> impl Iterator<Item = i64> + '_ {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .filter_map(|f| f["id"].as_i64())
}

fn stored_rows(server: &Server, rooms: &[String]) -> Vec<Row> {
    let db = server.sqlite();
    let mut statement = db
        .prepare(
            "SELECT id, room, nick, text, ts, client_offset FROM messages
             WHERE room = ?1 OR room = ?2 ORDER BY id",
        )
        .expect("prepare");
    let second = rooms.get(1).unwrap_or(&rooms[0]);
    statement
        .query_map([&rooms[0], second], |r| {
            Ok(Row {
                id: r.get(0)?,
                room: r.get(1)?,
                nick: r.get(2)?,
                text: r.get(3)?,
                ts: r.get(4)?,
                client_offset: r.get(5)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

// ---- the properties ------------------------------------------------------------

/// (1) and (3): one row per clientOffset sent, holding what was sent; every
/// ack and every broadcast of it carries that row's id and ts.
fn check_exactly_once(clients: &[SimClient], rows: &[Row]) {
    let mut sent: HashMap<&str, (&SimClient, &Sent)> = HashMap::new();
    for client in clients {
        for s in &client.sent {
            sent.insert(&s.offset, (client, s));
        }
    }
    let mut by_offset: HashMap<&str, &Row> = HashMap::new();
    for row in rows {
        let offset = row
            .client_offset
            .as_deref()
            .unwrap_or_else(|| panic!("a row without clientOffset: {row:?}"));
        let (client, s) = sent
            .get(offset)
            .unwrap_or_else(|| panic!("a row for a clientOffset never sent: {row:?}"));
        assert_eq!(
            (&row.room, &row.nick, &row.text),
            (&s.room, &client.nick, &s.text),
            "row differs from what was sent"
        );
        assert!(
            by_offset.insert(offset, row).is_none(),
            "two rows for clientOffset {offset}: {rows:#?}"
        );
    }
    // The settle phase retried every send until acknowledged, so every offset is stored.
    for offset in sent.keys() {
        assert!(
            by_offset.contains_key(offset),
            "{offset} was acknowledged but is not stored"
        );
    }

    for client in clients {
        let mut fresh: HashMap<String, usize> = HashMap::new();
        for ack in client.all_of("ack") {
            let offset = ack["clientOffset"].as_str().expect("ack clientOffset");
            let row = by_offset
                .get(offset)
                .unwrap_or_else(|| panic!("{} got an ack for {offset}: {ack}", client.nick));
            assert!(
                client.sent.iter().any(|s| s.offset == offset),
                "{} got an ack for someone else's {offset}",
                client.nick
            );
            assert_eq!(
                (ack["id"].as_i64(), ack["ts"].as_i64()),
                (Some(row.id), Some(row.ts)),
                "ack {ack} disagrees with the stored row {row:?}"
            );
            if ack.get("duplicate").is_none() {
                *fresh.entry(offset.to_string()).or_default() += 1;
            }
        }
        for (offset, count) in fresh {
            assert_eq!(count, 1, "{offset} was acked as new {count} times");
        }
        for message in client.all_of("message") {
            let id = message["id"].as_i64().expect("message id");
            let row = rows.iter().find(|r| r.id == id).unwrap_or_else(|| {
                panic!("{} got a message not in its rooms: {message}", client.nick)
            });
            let expected = json!({
                "type": "message",
                "id": row.id,
                "room": row.room,
                "nick": row.nick,
                "text": row.text,
                "ts": row.ts,
                "clientOffset": row.client_offset,
            });
            assert_eq!(
                message, expected,
                "broadcast differs from the stored row (and its ack)"
            );
        }
        let mut unexpected = client.all_of("error");
        unexpected.extend(client.all_of("not json"));
        assert!(
            unexpected.is_empty(),
            "{} received {unexpected:?}",
            client.nick
        );
    }
}

/// (2): per connection and room, ids strictly increase and follow the store
/// without a gap from the connection's offset; after `synced`, ids increase
/// across rooms too, above `synced.serverOffset`; acks come in the order of
/// the connection's sends; over all its connections a client saw every
/// message of its rooms (its first offset was 0).
fn check_order_and_completeness(clients: &[SimClient], rows: &[Row]) {
    for client in clients {
        let mut seen_ever = BTreeSet::new();
        for (n, connection) in client.connections.iter().enumerate() {
            let frames = connection.log.frames();
            let mut per_room: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for frame in frames.iter().filter(|f| f["type"] == "message") {
                let room = frame["room"].as_str().expect("room");
                assert!(
                    client.rooms.iter().any(|r| r == room),
                    "{} got a message of {room}, not one of its rooms",
                    client.nick
                );
                let id = frame["id"].as_i64().expect("id");
                per_room.entry(room).or_default().push(id);
                seen_ever.insert(id);
            }
            for (room, ids) in &per_room {
                assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "{} connection {n} (offset {}): ids in {room} not strictly increasing: {ids:?}\n{}",
                    client.nick,
                    connection.offset,
                    client.transcript()
                );
                assert!(
                    ids[0] > connection.offset,
                    "{} connection {n}: message {} again, though its hello said serverOffset {}\n{}",
                    client.nick,
                    ids[0],
                    connection.offset,
                    client.transcript()
                );
                let last = *ids.last().expect("some id");
                let stored: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.room == *room && r.id > connection.offset && r.id <= last)
                    .map(|r| r.id)
                    .collect();
                assert_eq!(
                    ids,
                    &stored,
                    "{} connection {n} (offset {}): a gap in {room}\n{}",
                    client.nick,
                    connection.offset,
                    client.transcript()
                );
            }
            // After `synced`, one id order across all rooms, above its offset
            // (docs/protocol.md, "One id order per connection").
            if let Some(synced) = frames.iter().position(|f| f["type"] == "synced") {
                let mut floor = frames[synced]["serverOffset"].as_i64().expect("offset");
                for id in message_ids(&frames[synced..]) {
                    assert!(
                        id > floor,
                        "{} connection {n}: message {id} after synced, not above {floor}\n{}",
                        client.nick,
                        client.transcript()
                    );
                    floor = id;
                }
            }
            let acked: Vec<&str> = frames
                .iter()
                .filter(|f| f["type"] == "ack")
                .filter_map(|f| f["clientOffset"].as_str())
                .collect();
            assert!(
                acked.len() <= connection.sent.len(),
                "{} connection {n}: more acks than sends: {acked:?}",
                client.nick
            );
            assert_eq!(
                acked,
                connection.sent[..acked.len()],
                "{} connection {n}: acks not in the order of the sends",
                client.nick
            );
        }
        let missing: Vec<&Row> = rows
            .iter()
            .filter(|r| client.rooms.contains(&r.room) && !seen_ever.contains(&r.id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} (rooms {:?}) never received {missing:#?}\n{}",
            client.nick,
            client.rooms,
            client.transcript()
        );
    }
}
