//! Section 7: drafts: echoes to the nick's other tabs, restore on hello and join, coalesced writes, clearing, shutdown and kill -9, the schema migration.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::OptionalExtension;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{Client, Server, WAIT, ids};

/// Long enough for an echo that was going to come to arrive.
const QUIET: Duration = Duration::from_millis(300);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Send `ping` and wait for its `pong`: every frame sent before it has been handled.
async fn barrier(client: &mut Client) {
    client.send(json!({"type":"ping"})).await;
    client.next_of("pong").await;
}

async fn draft(client: &mut Client, room: &str, text: &str) {
    client
        .send(json!({"type":"draft","room":room,"text":text}))
        .await;
}

/// The `draft` frames among a join sequence's frames.
fn drafts_in(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "draft").collect()
}

/// Every `draft` frame that arrives within `within`.
async fn drafts_within(client: &mut Client, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut found = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.maybe_recv(left).await {
            Some(frame) if frame["type"] == "draft" => found.push(frame),
            Some(_) => {}
            None => return found,
        }
    }
}

/// The draft row of (nick, room) in SQLite, read directly.
fn stored_draft(server: &Server, nick: &str, room: &str) -> Option<String> {
    server
        .sqlite()
        .query_row(
            "SELECT text FROM drafts WHERE nick = ?1 AND room = ?2",
            [nick, room],
            |r| r.get(0),
        )
        .optional()
        .expect("query drafts")
}

/// Poll SQLite (bounded) until the draft row of (nick, room) is `expected`.
async fn wait_until_stored(server: &Server, nick: &str, room: &str, expected: Option<&str>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stored = stored_draft(server, nick, room);
        if stored.as_deref() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "draft row of {nick} in {room} is {stored:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `natter_draft_writes_total` from `GET /metrics`.
async fn draft_writes(server: &Server) -> u64 {
    let body = reqwest::get(server.http("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .find_map(|line| line.strip_prefix("natter_draft_writes_total "))
        .unwrap_or_else(|| panic!("no natter_draft_writes_total in\n{body}"))
        .trim()
        .parse()
        .expect("counter value")
}

/// A fresh connection of `nick` in `rooms`: the draft frames of its join sequence.
async fn drafts_on_hello(server: &Server, nick: &str, rooms: &[&str]) -> Vec<Value> {
    let (_client, frames) = server.joined(nick, rooms).await;
    drafts_in(&frames).into_iter().cloned().collect()
}

#[tokio::test]
async fn draft_is_echoed_to_the_same_nicks_other_connection_with_updated_at() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut alice_again, _) = server.joined("alice", &["general"]).await;
    let before = now_ms();

    draft(&mut alice, "general", "half a thoug").await;

    let echo = alice_again.next_of("draft").await;
    let after = now_ms();
    let updated_at = echo["updatedAt"].as_i64().expect("updatedAt is an integer");
    assert_eq!(
        echo,
        json!({"type":"draft","room":"general","text":"half a thoug","updatedAt":updated_at})
    );
    assert!(
        (before..=after).contains(&updated_at),
        "updatedAt {updated_at} is not a ms timestamp between {before} and {after}"
    );
}

#[tokio::test]
async fn draft_is_not_echoed_to_the_sender_or_to_other_nicks() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut alice_again, _) = server.joined("alice", &["general"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;

    draft(&mut alice, "general", "half a thoug").await;
    // The other tab got it, so the echoes have gone out.
    alice_again.next_of("draft").await;

    assert_eq!(drafts_within(&mut alice, QUIET).await, Vec::<Value>::new());
    assert_eq!(drafts_within(&mut bob, QUIET).await, Vec::<Value>::new());
}

#[tokio::test]
async fn draft_is_restored_on_hello_after_presence_and_before_synced() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let before = now_ms();
    draft(&mut alice, "general", "half a thoug").await;
    barrier(&mut alice).await;
    let after = now_ms();

    let (_tab, frames) = server.joined("alice", &["general"]).await;

    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["welcome", "joined", "presence", "draft", "synced"]);
    let restored = &frames[3];
    assert_eq!(restored["room"], "general");
    assert_eq!(restored["text"], "half a thoug");
    let updated_at = restored["updatedAt"].as_i64().expect("updatedAt");
    assert!(
        (before..=after).contains(&updated_at),
        "updatedAt {updated_at}"
    );
}

#[tokio::test]
async fn draft_is_restored_on_a_later_join_of_its_room() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general", "random"]).await;
    draft(&mut alice, "random", "for random").await;
    barrier(&mut alice).await;
    let (mut tab, frames) = server.joined("alice", &["general"]).await;
    assert_eq!(
        drafts_in(&frames),
        Vec::<&Value>::new(),
        "no draft in general"
    );

    tab.send(json!({"type":"join","room":"random"})).await;

    let frames = tab.until("synced").await;
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["joined", "presence", "draft", "synced"]);
    assert_eq!(frames[2]["room"], "random");
    assert_eq!(frames[2]["text"], "for random");
}

#[tokio::test]
async fn draft_survives_a_clean_shutdown_right_after_it_was_typed() {
    let mut server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    draft(&mut alice, "general", "typed just before the restart").await;
    // Handled, and a few ms old at most when the signal arrives: well within
    // the 1 s flush interval, so only the shutdown flush can save it.
    barrier(&mut alice).await;

    let status = server.signal("TERM");

    assert_eq!(status.code(), Some(0), "clean shutdown exit status");
    server.restart();
    let restored = drafts_on_hello(&server, "alice", &["general"]).await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["text"], "typed just before the restart");
}

#[tokio::test]
async fn draft_survives_kill_9_once_the_flush_interval_has_passed() {
    let mut server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    draft(&mut alice, "general", "a second and a half old").await;
    barrier(&mut alice).await;
    // Time itself is the behaviour under test: a draft is written within 1 s
    // of the last keystroke, so after 1.5 s a kill -9 must not lose it.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    server.signal("KILL");

    server.restart();
    let restored = drafts_on_hello(&server, "alice", &["general"]).await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["text"], "a second and a half old");
}

#[tokio::test]
async fn sending_clears_the_draft_in_the_other_tab_and_for_a_new_hello() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut alice_again, _) = server.joined("alice", &["general"]).await;
    draft(&mut alice, "general", "about to send").await;
    alice_again.next_of("draft").await;

    alice.say("general", "about to send", "a-1").await;

    let cleared = alice_again.next_of("draft").await;
    assert_eq!(cleared["room"], "general");
    assert_eq!(cleared["text"], "");
    assert_eq!(
        drafts_on_hello(&server, "alice", &["general"]).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn sending_deletes_the_stored_draft_so_a_restart_does_not_bring_it_back() {
    let mut server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    draft(&mut alice, "general", "about to send").await;
    wait_until_stored(&server, "alice", "general", Some("about to send")).await;

    alice.say("general", "about to send", "a-1").await;

    wait_until_stored(&server, "alice", "general", None).await;
    server.restart();
    assert_eq!(
        drafts_on_hello(&server, "alice", &["general"]).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn empty_draft_clears_it_in_the_other_tab_and_for_a_new_hello() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut alice_again, _) = server.joined("alice", &["general"]).await;
    draft(&mut alice, "general", "second thoughts").await;
    alice_again.next_of("draft").await;

    draft(&mut alice, "general", "").await;

    let cleared = alice_again.next_of("draft").await;
    assert_eq!(cleared["room"], "general");
    assert_eq!(cleared["text"], "");
    assert_eq!(
        drafts_on_hello(&server, "alice", &["general"]).await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn empty_draft_deletes_the_stored_row_at_the_next_flush() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    draft(&mut alice, "general", "second thoughts").await;
    wait_until_stored(&server, "alice", "general", Some("second thoughts")).await;

    draft(&mut alice, "general", "").await;

    wait_until_stored(&server, "alice", "general", None).await;
}

#[tokio::test]
async fn draft_over_max_text_chars_is_too_long() {
    let server = Server::start(&["--max-text-chars", "10"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send(json!({"type":"draft","room":"general","text":"a".repeat(11),"ref":"d-1"}))
        .await;

    let error = alice.next_of("error").await;
    assert_eq!(error["code"], "too_long");
    assert_eq!(error["ref"], "d-1");
    barrier(&mut alice).await;
}

#[tokio::test]
async fn draft_for_a_room_not_joined_is_not_joined() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send(json!({"type":"draft","room":"random","text":"hi","ref":"d-1"}))
        .await;

    let error = alice.next_of("error").await;
    assert_eq!(error["code"], "not_joined");
    assert_eq!(error["ref"], "d-1");
    barrier(&mut alice).await;
}

#[tokio::test]
async fn draft_without_text_is_bad_request() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send(json!({"type":"draft","room":"general","ref":"d-1"}))
        .await;

    let error = alice.next_of("error").await;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["ref"], "d-1");
    barrier(&mut alice).await;
}

#[tokio::test]
async fn a_burst_of_a_thousand_draft_updates_costs_a_handful_of_writes_and_keeps_the_last() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let before = draft_writes(&server).await;

    for i in 0..1000 {
        draft(&mut alice, "general", &format!("keystroke {i}")).await;
    }
    barrier(&mut alice).await;

    let deadline = Instant::now() + WAIT;
    while draft_writes(&server).await == before {
        assert!(Instant::now() < deadline, "no draft write in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time is the behaviour here: any write still due from the burst happens
    // within one flush interval (1 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let writes = draft_writes(&server).await - before;
    assert!(writes <= 3, "{writes} draft writes for one burst");
    let restored = drafts_on_hello(&server, "alice", &["general"]).await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["text"], "keystroke 999");
}

/// A database as the first release left it: only migration 1, with two messages.
fn version_1_database() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let conn = rusqlite::Connection::open(&db).expect("create db");
    conn.execute_batch(include_str!(
        "../../src/store/sqlite/migrations/0001_messages.sql"
    ))
    .expect("migration 1");
    conn.execute_batch(
        "PRAGMA user_version = 1;
         INSERT INTO messages (room, nick, text, ts) VALUES ('general', 'old', 'first', 1);
         INSERT INTO messages (room, nick, text, ts) VALUES ('general', 'old', 'second', 2);",
    )
    .expect("seed v1");
    (dir, db)
}

/// `PRAGMA user_version`, and whether a `drafts` table exists.
fn schema_state(server: &Server) -> (i64, bool) {
    let conn = server.sqlite();
    let version = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    let drafts: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'drafts'",
            [],
            |r| r.get(0),
        )
        .expect("sqlite_master");
    (version, drafts == 1)
}

#[tokio::test]
async fn a_version_1_database_is_upgraded_in_place_keeping_its_messages() {
    let (dir, db) = version_1_database();

    let server = Server::start_in(dir, db, &[]);

    assert_eq!(
        schema_state(&server),
        (natter::store::schema_version() as i64, true),
        "(user_version, drafts table)"
    );
    let (_alice, frames) = server.joined("alice", &["general"]).await;
    assert_eq!(ids(&frames), [1, 2]);
}

#[tokio::test]
async fn starting_again_on_a_migrated_database_is_harmless() {
    let (dir, db) = version_1_database();
    let mut server = Server::start_in(dir, db, &[]);

    server.restart();

    assert_eq!(
        schema_state(&server),
        (natter::store::schema_version() as i64, true),
        "(user_version, drafts table)"
    );
    let (_alice, frames) = server.joined("alice", &["general"]).await;
    assert_eq!(ids(&frames), [1, 2]);
}

/// A draft is cleared by a send only once the message is stored: a send that
/// fails with `internal` leaves it as it was, for the retry.
#[tokio::test]
async fn a_send_that_fails_with_internal_leaves_the_draft_as_it_was() {
    // 1 MiB cap: a few hundred 3,000-character messages fill it.
    let server = Server::start(&["--max-db-mb", "1", "--sends-per-10s", "0"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let text = "x".repeat(3000);
    alice
        .send(json!({"type":"draft","room":"general","text":"keep me"}))
        .await;
    let mut failed = false;
    for i in 0..2_000 {
        alice
            .send(json!({"type":"send","room":"general","text":text,"clientOffset":format!("fill-{i}")}))
            .await;
        let reply = loop {
            let frame = alice.recv().await;
            if frame["type"] == "ack" || frame["type"] == "error" {
                break frame;
            }
        };
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "internal", "{reply}");
            failed = true;
            break;
        }
        // Until the store is full, each stored send clears the draft: type it again.
        alice
            .send(json!({"type":"draft","room":"general","text":"keep me"}))
            .await;
    }
    assert!(failed, "the database never filled up");

    let (_tab, frames) = server.joined("alice", &["general"]).await;

    let draft = frames.iter().find(|f| f["type"] == "draft");
    assert_eq!(
        draft.map(|d| d["text"].clone()),
        Some(json!("keep me")),
        "{frames:?}"
    );
}
