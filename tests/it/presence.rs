//! Section 6: presence (the snapshot on join, coalesced diffs, the grace period) and typing relays.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Server, WAIT};

/// The grace period the leave tests run with: long enough to tell "at once"
/// from "after the grace", short enough to keep the tests quick.
const GRACE_MS: u64 = 1000;

/// Well under the grace period: a `viewers` change must come this soon.
const QUICKLY: Duration = Duration::from_millis(700);

/// Long enough to see a diff the server would send: a tick is 200 ms, the
/// protocol allows 250 ms.
const QUIET: Duration = Duration::from_millis(600);

/// The frames as short labels (`welcome`, `joined general`, `message general`,
/// `presence general`, `synced`).
fn outline(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["room"].as_str() {
            Some(room) => format!("{} {room}", f["type"].as_str().unwrap_or("?")),
            None => f["type"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// The `presence` frame for `room` among a join sequence's frames.
fn presence_of<'a>(frames: &'a [Value], room: &str) -> &'a Value {
    frames
        .iter()
        .find(|f| f["type"] == "presence" && f["room"] == room)
        .unwrap_or_else(|| panic!("no presence for {room} in {frames:?}"))
}

/// The next `presence_diff` within `within`, skipping other frames.
async fn next_diff(client: &mut Client, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client.maybe_recv(left).await?;
        if frame["type"] == "presence_diff" {
            return Some(frame);
        }
    }
}

/// The next `presence_diff`, which must come within `WAIT`.
async fn expect_diff(client: &mut Client) -> Value {
    next_diff(client, WAIT)
        .await
        .expect("no presence_diff in time")
}

/// Every frame of type `kind` that arrives within `within`.
async fn all_within(client: &mut Client, kind: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut found = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.maybe_recv(left).await {
            Some(frame) if frame["type"] == kind => found.push(frame),
            Some(_) => {}
            None => return found,
        }
    }
}

fn diff(viewers: usize, joins: &[&str], leaves: &[&str]) -> Value {
    json!({"type":"presence_diff","room":"general","viewers":viewers,"joins":joins,"leaves":leaves})
}

/// Alice and bob in `general`, with the diff for bob's join already read by
/// alice, so her next diff is about whatever the test does next.
async fn alice_and_bob(server: &Server) -> (Client, Client) {
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (bob, _) = server.joined("bob", &["general"]).await;
    assert_eq!(expect_diff(&mut alice).await, diff(2, &["bob"], &[]));
    (alice, bob)
}

/// Send `ping` and wait for its `pong`: everything sent before it has been handled.
async fn barrier(client: &mut Client) {
    client.send(json!({"type":"ping"})).await;
    client.next_of("pong").await;
}

#[tokio::test]
async fn presence_comes_after_each_rooms_replay_and_before_synced() {
    let server = Server::start(&[]);
    let (mut zed, _) = server.joined("zed", &["general"]).await;
    let (mut amy, _) = server.joined("amy", &["random"]).await;
    zed.say("general", "in general", "z-1").await;
    amy.say("random", "in random", "a-1").await;

    let (_carol, frames) = server.joined("carol", &["general", "random"]).await;

    assert_eq!(
        outline(&frames),
        [
            "welcome",
            "joined general",
            "message general",
            "presence general",
            "joined random",
            "message random",
            "presence random",
            "synced"
        ]
    );
}

#[tokio::test]
async fn presence_on_join_counts_the_joiner_and_each_nicks_connections_sorted_by_nick() {
    let server = Server::start(&[]);
    let (_zed1, _) = server.joined("zed", &["general"]).await;
    let (_zed2, _) = server.joined("zed", &["general"]).await;
    let (_bob, _) = server.joined("bob", &["general"]).await;
    let (_amy, _) = server.joined("amy", &["random"]).await;

    let (_carol, frames) = server.joined("carol", &["general", "random"]).await;

    assert_eq!(
        *presence_of(&frames, "general"),
        json!({"type":"presence","room":"general","viewers":4,"members":[
            {"nick":"bob","connections":1},
            {"nick":"carol","connections":1},
            {"nick":"zed","connections":2},
        ]})
    );
    assert_eq!(
        *presence_of(&frames, "random"),
        json!({"type":"presence","room":"random","viewers":2,"members":[
            {"nick":"amy","connections":1},
            {"nick":"carol","connections":1},
        ]})
    );
}

#[tokio::test]
async fn joiner_gets_no_diff_for_its_own_join() {
    let server = Server::start(&[]);
    let (_alice, _) = server.joined("alice", &["general"]).await;

    let (mut bob, _) = server.joined("bob", &["general"]).await;

    assert_eq!(
        all_within(&mut bob, "presence_diff", QUIET).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn members_already_in_the_room_get_a_diff_with_the_join_and_the_new_viewers() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    let (_bob, _) = server.joined("bob", &["general"]).await;

    assert_eq!(expect_diff(&mut alice).await, diff(2, &["bob"], &[]));
}

#[tokio::test]
async fn second_connection_of_a_present_nick_changes_only_viewers() {
    let server = Server::start(&[]);
    let (mut alice, _bob) = alice_and_bob(&server).await;

    let (_bob_again, _) = server.joined("bob", &["general"]).await;

    assert_eq!(expect_diff(&mut alice).await, diff(3, &[], &[]));
}

#[tokio::test]
async fn closed_connection_lowers_viewers_at_once_and_its_nick_leaves_after_the_grace() {
    let server = Server::start(&["--presence-grace-ms", &GRACE_MS.to_string()]);
    let (mut alice, bob) = alice_and_bob(&server).await;

    let closed_at = Instant::now();
    drop(bob); // the tab is closed: the TCP connection ends

    let first = expect_diff(&mut alice).await;
    let first_after = closed_at.elapsed();
    let second = expect_diff(&mut alice).await;
    let second_after = closed_at.elapsed();
    assert_eq!(first, diff(1, &[], &[]));
    assert!(
        first_after < QUICKLY,
        "viewers changed only after {first_after:?}"
    );
    assert_eq!(second, diff(1, &[], &["bob"]));
    assert!(
        second_after >= Duration::from_millis(GRACE_MS - 100),
        "bob left after {second_after:?}, before the {GRACE_MS} ms grace"
    );
}

#[tokio::test]
async fn explicit_leave_lowers_viewers_at_once_and_the_nick_leaves_after_the_grace() {
    let server = Server::start(&["--presence-grace-ms", &GRACE_MS.to_string()]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;

    bob.send(json!({"type":"leave","room":"general"})).await;
    assert_eq!(
        bob.next_of("left").await,
        json!({"type":"left","room":"general"})
    );
    let left_at = Instant::now();

    let first = expect_diff(&mut alice).await;
    let first_after = left_at.elapsed();
    let second = expect_diff(&mut alice).await;
    let second_after = left_at.elapsed();
    assert_eq!(first, diff(1, &[], &[]));
    assert!(
        first_after < QUICKLY,
        "viewers changed only after {first_after:?}"
    );
    assert_eq!(second, diff(1, &[], &["bob"]));
    assert!(
        second_after >= Duration::from_millis(GRACE_MS - 100),
        "bob left after {second_after:?}, before the {GRACE_MS} ms grace"
    );
}

#[tokio::test]
async fn reconnect_within_the_grace_shows_the_others_neither_a_leave_nor_a_join() {
    let server = Server::start(&["--presence-grace-ms", &GRACE_MS.to_string()]);
    let (mut alice, bob) = alice_and_bob(&server).await;

    drop(bob); // a page reload: the old connection goes...
    // ...a tick passes with bob gone (a missing grace would show a leave here)...
    let gone = expect_diff(&mut alice).await;
    let (_bob, _) = server.joined("bob", &["general"]).await; // ...and a new one comes
    let back = expect_diff(&mut alice).await;
    // Watch until well past the grace period, when a wrong leave would show.
    let later = all_within(
        &mut alice,
        "presence_diff",
        Duration::from_millis(GRACE_MS) + QUIET,
    )
    .await;

    assert_eq!(
        (gone, back, later),
        (diff(1, &[], &[]), diff(2, &[], &[]), Vec::new())
    );
}

#[tokio::test]
async fn snapshot_during_the_grace_lists_the_gone_nick_with_zero_connections() {
    // A long grace, so carol surely joins within it.
    let server = Server::start(&["--presence-grace-ms", "5000"]);
    let (mut alice, bob) = alice_and_bob(&server).await;
    drop(bob);
    // The server has counted bob's connection as gone.
    assert_eq!(expect_diff(&mut alice).await, diff(1, &[], &[]));

    let (_carol, frames) = server.joined("carol", &["general"]).await;

    assert_eq!(
        *presence_of(&frames, "general"),
        json!({"type":"presence","room":"general","viewers":2,"members":[
            {"nick":"alice","connections":1},
            {"nick":"bob","connections":0},
            {"nick":"carol","connections":1},
        ]})
    );
}

/// How many connections join in the burst.
const BURST: usize = 1000;
/// Connections opened concurrently at a time.
const BURST_BATCH: usize = 100;

/// Just a frame's type: a joiner's `presence` lists up to a thousand members,
/// and parsing all of that into `Value`s would make the test measure itself.
#[derive(serde::Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// Read (bounded) up to `synced` without building the frames.
async fn until_synced_unparsed(client: &mut Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("no synced in time");
        if let Some(Ok(Message::Text(text))) = message {
            let frame: Kind = serde_json::from_str(&text).expect("server sent JSON");
            if frame.kind == "synced" {
                return;
            }
        } else {
            assert!(
                matches!(message, Some(Ok(_))),
                "connection ended: {message:?}"
            );
        }
    }
}

/// Open a connection per nick, concurrently in batches, each saying hello in
/// `general` and reading up to `synced`.
async fn join_all(url: &str, nicks: &[String]) -> Vec<Client> {
    let mut clients = Vec::with_capacity(nicks.len());
    for batch in nicks.chunks(BURST_BATCH) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|nick| {
                let (url, nick) = (url.to_string(), nick.clone());
                tokio::spawn(async move {
                    let mut client = Client::connect(&url).await;
                    client.hello(&nick, &["general"], None).await;
                    until_synced_unparsed(&mut client).await;
                    client
                })
            })
            .collect();
        for task in tasks {
            clients.push(task.await.expect("join task"));
        }
    }
    clients
}

#[tokio::test]
async fn a_burst_of_a_thousand_joins_reaches_an_observer_as_a_handful_of_diffs() {
    // Every test connection comes from 127.0.0.1.
    let server = Server::start(&["--max-connections-per-ip", "0"]);
    let (mut observer, _) = server.joined("observer", &["general"]).await;
    let nicks: Vec<String> = (0..BURST).map(|i| format!("n{i:04}")).collect();

    let started = Instant::now();
    let clients = join_all(&server.ws_url(), &nicks).await;
    let took = started.elapsed();

    // Read until the observer has been told of everyone, then a little longer
    // to catch any diff still to come.
    let deadline = Instant::now() + WAIT;
    let mut diffs: Vec<Value> = Vec::new();
    let mut joined: HashSet<String> = HashSet::new();
    while joined.len() < BURST || diffs.last().is_none_or(|d| d["viewers"] != BURST + 1) {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = next_diff(&mut observer, left).await.unwrap_or_else(|| {
            panic!(
                "after {} diffs the observer knows of {} joins, not {BURST}",
                diffs.len(),
                joined.len()
            )
        });
        joined.extend(
            d["joins"]
                .as_array()
                .expect("joins")
                .iter()
                .map(|n| n.as_str().expect("nick").to_string()),
        );
        diffs.push(d);
    }
    let told = started.elapsed();
    diffs.extend(all_within(&mut observer, "presence_diff", QUIET).await);
    // Coalescing means at most one diff per room per 200 ms tick, however
    // many joins fall into it. How many ticks the burst spans depends on how
    // fast this machine accepts 1,000 connections (a debug build on a busy
    // 2-core box: several seconds; the release build: about one), so the
    // bound is per tick, plus the ticks that finish the window.
    let ticks = told.as_millis().div_ceil(200) as usize;
    assert!(
        diffs.len() <= ticks + 2 && diffs.len() < BURST / 10,
        "{} presence_diff frames for a burst of {BURST} joins over {ticks} ticks \
         (joins took {took:?}, the observer knew all of them after {told:?})",
        diffs.len()
    );
    assert_eq!(diffs.last().expect("a diff")["viewers"], BURST + 1);
    assert_eq!(joined, nicks.into_iter().collect::<HashSet<_>>());
    for mut client in clients {
        let _ = client.ws.close(None).await;
    }
}

#[tokio::test]
async fn typing_is_relayed_to_the_other_nicks_in_the_room() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;

    alice
        .send(json!({"type":"typing","room":"general","active":true}))
        .await;

    assert_eq!(
        bob.next_of("typing").await,
        json!({"type":"typing","room":"general","nick":"alice","active":true})
    );
}

#[tokio::test]
async fn typing_does_not_reach_the_sender_its_other_connections_or_other_rooms() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut alice_again, _) = server.joined("alice", &["general"]).await;
    let (mut carol, _) = server.joined("carol", &["random"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;

    alice
        .send(json!({"type":"typing","room":"general","active":true}))
        .await;
    // Bob got it, so the relay has happened.
    bob.next_of("typing").await;

    for (who, client) in [
        ("alice", &mut alice),
        ("alice's other connection", &mut alice_again),
        ("carol in random", &mut carol),
    ] {
        let typing = all_within(client, "typing", Duration::from_millis(300)).await;
        assert_eq!(typing, Vec::<Value>::new(), "{who} got typing");
    }
}

#[tokio::test]
async fn typing_inactive_is_relayed_too() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;
    alice
        .send(json!({"type":"typing","room":"general","active":true}))
        .await;
    bob.next_of("typing").await;

    alice
        .send(json!({"type":"typing","room":"general","active":false}))
        .await;

    assert_eq!(
        bob.next_of("typing").await,
        json!({"type":"typing","room":"general","nick":"alice","active":false})
    );
}

#[tokio::test]
async fn typing_in_a_room_not_joined_is_not_joined() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send(json!({"type":"typing","room":"random","active":true,"ref":"t-1"}))
        .await;

    let error = alice.next_of("error").await;
    assert_eq!(error["code"], "not_joined");
    assert_eq!(error["ref"], "t-1");
    barrier(&mut alice).await;
}

#[tokio::test]
async fn typing_without_a_boolean_active_is_bad_request() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for (why, frame) in [
        (
            "missing",
            json!({"type":"typing","room":"general","ref":"t"}),
        ),
        (
            "string",
            json!({"type":"typing","room":"general","active":"yes","ref":"t"}),
        ),
        (
            "number",
            json!({"type":"typing","room":"general","active":1,"ref":"t"}),
        ),
        (
            "null",
            json!({"type":"typing","room":"general","active":null,"ref":"t"}),
        ),
    ] {
        alice.send(frame).await;
        let error = alice.next_of("error").await;
        assert_eq!(error["code"], "bad_request", "active {why}");
        assert_eq!(error["ref"], "t", "active {why}");
    }
    barrier(&mut alice).await;
}
