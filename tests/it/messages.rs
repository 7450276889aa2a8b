//! Section 3: sending, acks after commit, broadcast to the room, exactly-once by clientOffset, one id order.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Server, ids};

#[tokio::test]
async fn send_is_acked_and_broadcast_to_the_room_including_the_sender() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;

    let ack = alice.say("general", "hi all", "a-1").await;

    assert_eq!(ack["clientOffset"], "a-1");
    assert!(ack["id"].as_i64().unwrap() > 0);
    assert!(ack["ts"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(ack.get("duplicate").is_none());
    for client in [&mut alice, &mut bob] {
        let message = client.next_of("message").await;
        assert_eq!(message["id"], ack["id"]);
        assert_eq!(message["ts"], ack["ts"]);
        assert_eq!(message["room"], "general");
        assert_eq!(message["nick"], "alice");
        assert_eq!(message["text"], "hi all");
        assert_eq!(message["clientOffset"], "a-1");
    }
}

#[tokio::test]
async fn messages_do_not_leak_into_other_rooms() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut carol, _) = server.joined("carol", &["random"]).await;

    alice.say("general", "only for general", "a-1").await;

    assert_eq!(carol.maybe_recv(Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn text_is_stored_and_delivered_exactly_as_sent() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let text = "  <b>bold?</b> \"quotes\" & emoji 🎉\nsecond line\ttab  ";

    let ack = alice.say("general", text, "a-1").await;

    let message = alice.next_of("message").await;
    assert_eq!(message["text"], text);
    let stored: String = server
        .sqlite()
        .query_row(
            "SELECT text FROM messages WHERE id = ?1",
            [ack["id"].as_i64().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, text);
}

#[tokio::test]
async fn same_client_offset_twice_stores_one_row_and_acks_duplicate() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;

    let first = alice.say("general", "once", "dup-1").await;
    let second = alice.say("general", "once", "dup-1").await;

    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["ts"], first["ts"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(server.count_rows("client_offset = 'dup-1'"), 1);
    // One broadcast: bob sees the message once and nothing after it.
    assert_eq!(bob.next_of("message").await["id"], first["id"]);
    assert_eq!(bob.maybe_recv(Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn duplicates_use_up_no_ids() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let first = alice.say("general", "once", "gap-1").await;

    alice.say("general", "once", "gap-1").await;
    let next = alice.say("general", "next", "gap-2").await;

    assert_eq!(
        next["id"].as_i64().unwrap(),
        first["id"].as_i64().unwrap() + 1
    );
}

#[tokio::test]
async fn duplicate_sends_in_one_burst_store_one_row() {
    let server = Server::start(&["--sends-per-10s", "0"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for _ in 0..5 {
        alice
            .send(json!({"type":"send","room":"general","text":"burst","clientOffset":"same"}))
            .await;
    }

    let mut acks = Vec::new();
    while acks.len() < 5 {
        let frame = alice.recv().await;
        if frame["type"] == "ack" {
            acks.push(frame);
        }
    }
    assert_eq!(
        acks.iter().filter(|a| a.get("duplicate").is_none()).count(),
        1
    );
    assert!(acks.iter().all(|a| a["id"] == acks[0]["id"]));
    assert_eq!(server.count_rows("client_offset = 'same'"), 1);
}

#[tokio::test]
async fn duplicate_is_recognised_after_a_server_restart() {
    let mut server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let first = alice.say("general", "before restart", "r-1").await;

    server.restart();
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let again = alice.say("general", "before restart", "r-1").await;

    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(server.count_rows("client_offset = 'r-1'"), 1);
}

#[tokio::test]
async fn acks_come_in_the_order_of_sends() {
    let server = Server::start(&["--sends-per-10s", "0"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for i in 0..200 {
        alice
            .send(json!({"type":"send","room":"general","text":format!("m{i}"),"clientOffset":format!("o-{i}")}))
            .await;
    }

    let mut acked = Vec::new();
    while acked.len() < 200 {
        let frame = alice.recv().await;
        if frame["type"] == "ack" {
            acked.push(frame["clientOffset"].as_str().unwrap().to_string());
        }
    }
    let expected: Vec<String> = (0..200).map(|i| format!("o-{i}")).collect();
    assert_eq!(acked, expected);
}

#[tokio::test]
async fn every_connection_sees_one_increasing_id_order_under_concurrent_senders() {
    let server = Server::start(&["--sends-per-10s", "0"]);
    let (mut observer, _) = server.joined("observer", &["general"]).await;
    let senders = 4;
    let per_sender = 100;

    let mut tasks = Vec::new();
    for s in 0..senders {
        let (mut client, _) = server.joined(&format!("sender{s}"), &["general"]).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                client
                    .send(json!({"type":"send","room":"general","text":"x","clientOffset":format!("s{s}-{i}")}))
                    .await;
            }
            let mut acks = 0;
            while acks < per_sender {
                if client.recv().await["type"] == "ack" {
                    acks += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let mut frames = Vec::new();
    while ids(&frames).len() < senders * per_sender {
        frames.push(observer.recv().await);
    }
    let seen = ids(&frames);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ids not strictly increasing"
    );
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        senders * per_sender
    );
    assert_eq!(
        server.count_rows("room = 'general'"),
        (senders * per_sender) as i64
    );
}

#[tokio::test]
async fn send_to_a_room_not_joined_is_not_joined() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send(json!({"type":"send","room":"random","text":"hi","clientOffset":"x-1"}))
        .await;

    let error = alice.recv().await;
    assert_eq!(error["code"], "not_joined");
    assert_eq!(error["ref"], "x-1");
    assert_eq!(server.count_rows("1"), 0);
    alice.assert_usable().await;
}

#[tokio::test]
async fn empty_and_whitespace_only_text_is_empty() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for text in ["", "   ", "\n\t", "\u{3000}\u{a0}"] {
        alice
            .send(json!({"type":"send","room":"general","text":text,"ref":"r"}))
            .await;
        let error = alice.recv().await;
        assert_eq!(error["code"], "empty", "{text:?}");
        assert_eq!(error["ref"], "r");
    }
    assert_eq!(server.count_rows("1"), 0);
    alice.assert_usable().await;
}

#[tokio::test]
async fn text_over_the_limit_is_too_long_and_the_limit_counts_characters() {
    let server = Server::start(&["--max-text-chars", "10"]);
    let (mut alice, frames) = server.joined("alice", &["general"]).await;
    assert_eq!(frames[0]["limits"]["maxTextChars"], 10);

    alice
        .send(json!({"type":"send","room":"general","text":"a".repeat(11),"clientOffset":"long"}))
        .await;
    let error = alice.recv().await;
    assert_eq!(error["code"], "too_long");
    assert_eq!(error["ref"], "long");

    // Ten 4-byte characters are ten characters, not forty.
    let ack = alice.say("general", &"🎉".repeat(10), "ten").await;
    assert_eq!(ack["type"], "ack");
}

#[tokio::test]
async fn client_offset_of_bad_length_is_bad_request() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for offset in [String::new(), "x".repeat(65)] {
        alice
            .send(json!({"type":"send","room":"general","text":"hi","clientOffset":offset}))
            .await;
        assert_eq!(alice.recv().await["code"], "bad_request");
    }
    let ack = alice.say("general", "hi", &"y".repeat(64)).await;
    assert_eq!(ack["type"], "ack");
}

#[tokio::test]
async fn sends_beyond_the_rate_limit_are_rate_limited() {
    let server = Server::start(&["--sends-per-10s", "3"]);
    let (mut alice, frames) = server.joined("alice", &["general"]).await;
    assert_eq!(frames[0]["limits"]["sendsPer10s"], 3);

    for i in 0..4 {
        alice
            .send(json!({"type":"send","room":"general","text":"hi","clientOffset":format!("rl-{i}")}))
            .await;
    }

    let mut acks = 0;
    let mut limited = Vec::new();
    while acks + limited.len() < 4 {
        let frame = alice.recv().await;
        match frame["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                limited.push(frame["ref"].clone());
            }
            _ => {}
        }
    }
    assert_eq!(acks, 3);
    assert_eq!(limited, vec![json!("rl-3")]);
    assert_eq!(server.count_rows("1"), 3);
}

#[tokio::test]
async fn messages_without_client_offset_are_stored_each_time() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for _ in 0..2 {
        alice
            .send(json!({"type":"send","room":"general","text":"no key"}))
            .await;
        let ack = alice.next_of("ack").await;
        assert!(ack.get("clientOffset").is_none());
    }

    assert_eq!(server.count_rows("1"), 2);
}
