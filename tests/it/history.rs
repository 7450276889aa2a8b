//! Section 5: history paging: the newest page, `before` paging back to the start, limits, `ref`, and room isolation.

use serde_json::{Value, json};

use crate::helpers::{Client, Server, seed};

/// Ask for history and return the answer, which must be a `history` frame.
async fn history(client: &mut Client, request: Value) -> Value {
    client.send(request.clone()).await;
    let answer = client.recv().await;
    assert_eq!(
        answer["type"], "history",
        "{request} answered with {answer}"
    );
    answer
}

/// The ids of the messages in a `history` answer, in the order given.
fn page_ids(answer: &Value) -> Vec<i64> {
    answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array: {answer}"))
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect()
}

/// Every id stored for `room`, ascending, read straight from the database.
fn stored_ids(server: &Server, room: &str) -> Vec<i64> {
    let conn = server.sqlite();
    let mut stmt = conn
        .prepare("SELECT id FROM messages WHERE room = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([room], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[tokio::test]
async fn history_without_before_is_the_newest_limit_messages_in_ascending_order() {
    let server = Server::start(&[]);
    let newest = seed(&server.db, "general", 30, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(
        &mut alice,
        json!({"type":"history","room":"general","limit":10}),
    )
    .await;

    assert_eq!(
        page_ids(&answer),
        ((newest - 9)..=newest).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn has_more_is_true_only_while_older_messages_exist() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 10, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let mut has_more = Vec::new();
    for limit in [9, 10, 11] {
        let answer = history(
            &mut alice,
            json!({"type":"history","room":"general","limit":limit}),
        )
        .await;
        has_more.push(answer["hasMore"].clone());
    }

    assert_eq!(has_more, [json!(true), json!(false), json!(false)]);
}

#[tokio::test]
async fn before_returns_only_strictly_older_messages() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 10, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(
        &mut alice,
        json!({"type":"history","room":"general","before":6,"limit":3}),
    )
    .await;

    assert_eq!(page_ids(&answer), [3, 4, 5]);
    assert_eq!(answer["hasMore"], true);
}

#[tokio::test]
async fn before_the_oldest_message_is_an_empty_page_without_more() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 10, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(
        &mut alice,
        json!({"type":"history","room":"general","before":1}),
    )
    .await;

    assert_eq!(answer["messages"], json!([]));
    assert_eq!(answer["hasMore"], false);
}

#[tokio::test]
async fn paging_with_before_walks_the_whole_room_without_gaps_or_overlaps() {
    let server = Server::start(&[]);
    // Another room's rows in between, so `general`'s ids are not contiguous.
    seed(&server.db, "general", 60, 5);
    seed(&server.db, "random", 10, 5);
    seed(&server.db, "general", 60, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let mut walked: Vec<i64> = Vec::new();
    let mut sizes = Vec::new();
    let mut request = json!({"type":"history","room":"general","limit":50});
    loop {
        assert!(
            sizes.len() < 10,
            "paging does not end: page sizes {sizes:?}"
        );
        let answer = history(&mut alice, request.clone()).await;
        let page = page_ids(&answer);
        sizes.push(page.len());
        walked.splice(0..0, page.iter().copied());
        if answer["hasMore"] != true {
            break;
        }
        request["before"] = json!(page.first().expect("a page with more has messages"));
    }

    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(walked, stored_ids(&server, "general"));
}

#[tokio::test]
async fn default_limit_is_50() {
    let server = Server::start(&[]);
    let newest = seed(&server.db, "general", 60, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(&mut alice, json!({"type":"history","room":"general"})).await;

    assert_eq!(
        page_ids(&answer),
        ((newest - 49)..=newest).collect::<Vec<_>>()
    );
    assert_eq!(answer["hasMore"], true);
}

#[tokio::test]
async fn limit_outside_1_to_200_is_bad_request() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &[]).await;

    for limit in [0, 201, -1, 1_000_000] {
        alice
            .send(json!({"type":"history","room":"general","limit":limit,"ref":"h"}))
            .await;
        let error = alice.recv().await;
        assert_eq!(error["code"], "bad_request", "limit {limit}: {error}");
        assert_eq!(error["ref"], "h", "limit {limit}");
    }
}

#[tokio::test]
async fn limits_1_and_200_are_accepted() {
    let server = Server::start(&[]);
    let newest = seed(&server.db, "general", 201, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let one = history(
        &mut alice,
        json!({"type":"history","room":"general","limit":1}),
    )
    .await;
    let most = history(
        &mut alice,
        json!({"type":"history","room":"general","limit":200}),
    )
    .await;

    assert_eq!(page_ids(&one), [newest]);
    assert_eq!(
        page_ids(&most),
        ((newest - 199)..=newest).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn history_answer_echoes_ref_and_names_the_room() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 3, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(
        &mut alice,
        json!({"type":"history","room":"general","ref":"h1"}),
    )
    .await;

    assert_eq!(answer["ref"], "h1");
    assert_eq!(answer["room"], "general");
}

#[tokio::test]
async fn room_never_written_to_has_empty_history_without_more() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 3, 5);
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(&mut alice, json!({"type":"history","room":"never-used"})).await;

    assert_eq!(answer["messages"], json!([]));
    assert_eq!(answer["hasMore"], false);
}

#[tokio::test]
async fn any_room_can_be_read_without_joining_it() {
    let server = Server::start(&[]);
    seed(&server.db, "random", 5, 5);
    let (mut alice, frames) = server.joined("alice", &["general"]).await;
    assert_eq!(frames.last().unwrap()["rooms"], json!(["general"]));

    let answer = history(&mut alice, json!({"type":"history","room":"random"})).await;

    assert_eq!(page_ids(&answer), stored_ids(&server, "random"));
}

#[tokio::test]
async fn history_messages_carry_the_full_message_fields() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let ack = alice.say("general", "for the record", "a-1").await;
    alice.next_of("message").await;

    let answer = history(&mut alice, json!({"type":"history","room":"general"})).await;

    let message = &answer["messages"][0];
    assert_eq!(message["id"], ack["id"], "{message}");
    assert_eq!(message["room"], "general", "{message}");
    assert_eq!(message["nick"], "alice", "{message}");
    assert_eq!(message["text"], "for the record", "{message}");
    assert_eq!(message["ts"], ack["ts"], "{message}");
}

#[tokio::test]
async fn other_rooms_messages_never_appear_in_history() {
    let server = Server::start(&[]);
    for _ in 0..3 {
        seed(&server.db, "general", 7, 5);
        seed(&server.db, "random", 5, 5);
        seed(&server.db, "general-2", 3, 5);
    }
    let (mut alice, _) = server.joined("alice", &[]).await;

    let answer = history(
        &mut alice,
        json!({"type":"history","room":"general","limit":200}),
    )
    .await;

    let rooms: Vec<&Value> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["room"])
        .collect();
    assert!(rooms.iter().all(|r| *r == "general"), "{rooms:?}");
    assert_eq!(page_ids(&answer), stored_ids(&server, "general"));
}
