//! Section 9: the HTTP API: posting (201, stored, broadcast, idempotent by clientOffset), paging by id range, the room list, every error in the JSON shape, the post rate limit, the Bearer token, health and 404.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Client, Server, ids, seed};

/// A posted message is published before the post is answered, so it must
/// reach a WebSocket in its room right after the answer, not eventually.
const BROADCAST_WAIT: Duration = Duration::from_secs(2);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// An HTTP answer: its status and its body parsed as JSON.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    Answer { status, body }
}

async fn get(server: &Server, path: &str) -> Answer {
    let response = reqwest::get(server.http(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    answer(response).await
}

/// `POST /api/rooms/{room}/messages` with a JSON body.
async fn post(server: &Server, room: &str, body: Value) -> Answer {
    post_raw(server, room, body.to_string()).await
}

/// `POST /api/rooms/{room}/messages` with any body, sent as JSON.
async fn post_raw(server: &Server, room: &str, body: String) -> Answer {
    let response = reqwest::Client::new()
        .post(server.http(&format!("/api/rooms/{room}/messages")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST to {room}: {e}"));
    answer(response).await
}

/// `what` must have been answered with `status` and exactly the error shape
/// `{"error":{"code":code,"message":"..."}}`.
fn assert_error(answer: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
    let error = &answer.body["error"];
    assert_eq!(error["code"], code, "{what}: {:?}", answer.body);
    let message = error["message"].as_str().unwrap_or("");
    assert!(
        !message.is_empty(),
        "{what}: no message in {:?}",
        answer.body
    );
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        keys(&answer.body),
        Some(vec!["error".to_string()]),
        "{what}"
    );
    assert_eq!(
        keys(error),
        Some(vec!["code".to_string(), "message".to_string()]),
        "{what}"
    );
}

/// The ids of a page of `GET .../messages`, in the order given.
fn page_ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array: {page}"))
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect()
}

/// A page of `room`, which must be answered with 200.
async fn page(server: &Server, room: &str, query: &str) -> Value {
    let answer = get(server, &format!("/api/rooms/{room}/messages{query}")).await;
    assert_eq!(answer.status, 200, "{query}: {:?}", answer.body);
    answer.body
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

/// 120 messages in general with 15 of random among them, so general's ids
/// have a gap; returns general's ids, ascending.
fn seeded_general(server: &Server) -> Vec<i64> {
    seed(&server.db, "general", 60, 5);
    seed(&server.db, "random", 15, 5);
    seed(&server.db, "general", 60, 5);
    let general = stored_ids(server, "general");
    assert_eq!(general.len(), 120);
    general
}

/// The first `message` frame within `within`, skipping presence and the like.
async fn next_message_within(client: &mut Client, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = client.maybe_recv(left).await?;
        if frame["type"] == "message" {
            return Some(frame);
        }
    }
}

// ---- posting ----

#[tokio::test]
async fn post_answers_201_with_the_new_id_and_ts() {
    let server = Server::start(&[]);

    let answer = post(&server, "general", json!({"nick":"bot","text":"hello"})).await;

    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let fields: Vec<&String> = answer.body.as_object().expect("object").keys().collect();
    assert_eq!(fields, ["id", "ts"]);
    assert!(answer.body["id"].as_i64().unwrap() > 0);
    assert!(answer.body["ts"].as_i64().unwrap() > 1_700_000_000_000);
}

#[tokio::test]
async fn posted_message_is_stored_in_sqlite() {
    let server = Server::start(&[]);

    let answer = post(
        &server,
        "general",
        json!({"nick":"bot","text":"stored?","clientOffset":"p-1"}),
    )
    .await;

    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let row: (String, String, String, i64, String) = server
        .sqlite()
        .query_row(
            "SELECT room, nick, text, ts, client_offset FROM messages WHERE id = ?1",
            [answer.body["id"].as_i64().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .expect("the posted row");
    let ts = answer.body["ts"].as_i64().unwrap();
    assert_eq!(
        row,
        (
            "general".into(),
            "bot".into(),
            "stored?".into(),
            ts,
            "p-1".into()
        )
    );
}

#[tokio::test]
async fn posted_message_is_broadcast_at_once_to_a_websocket_in_the_room() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    let answer = post(
        &server,
        "general",
        json!({"nick":"bot","text":"from http","clientOffset":"p-1"}),
    )
    .await;

    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let message = next_message_within(&mut alice, BROADCAST_WAIT)
        .await
        .expect("the posted message, broadcast");
    assert_eq!(message["id"], answer.body["id"]);
    assert_eq!(message["ts"], answer.body["ts"]);
    assert_eq!(message["room"], "general");
    assert_eq!(message["nick"], "bot");
    assert_eq!(message["text"], "from http");
    assert_eq!(message["clientOffset"], "p-1");
}

#[tokio::test]
async fn posted_message_is_not_broadcast_to_other_rooms() {
    let server = Server::start(&[]);
    let (mut carol, _) = server.joined("carol", &["random"]).await;

    let answer = post(
        &server,
        "general",
        json!({"nick":"bot","text":"general only"}),
    )
    .await;

    assert_eq!(answer.status, 201, "{:?}", answer.body);
    assert_eq!(carol.maybe_recv(QUIET).await, None);
}

#[tokio::test]
async fn get_returns_a_posted_message_with_its_fields() {
    let server = Server::start(&[]);
    let posted = post(
        &server,
        "general",
        json!({"nick":"bot","text":"read me back","clientOffset":"p-1"}),
    )
    .await;

    let page = page(&server, "general", "").await;

    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{page}");
    assert_eq!(messages[0]["id"], posted.body["id"]);
    assert_eq!(messages[0]["ts"], posted.body["ts"]);
    assert_eq!(messages[0]["room"], "general");
    assert_eq!(messages[0]["nick"], "bot");
    assert_eq!(messages[0]["text"], "read me back");
    assert_eq!(messages[0]["clientOffset"], "p-1");
}

// ---- idempotency ----

#[tokio::test]
async fn second_post_with_the_same_client_offset_is_200_duplicate_with_the_same_id_and_ts() {
    let server = Server::start(&[]);
    let body = json!({"nick":"bot","text":"once","clientOffset":"dup-1"});
    let first = post(&server, "general", body.clone()).await;

    let second = post(&server, "general", body).await;

    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(second.body["ts"], first.body["ts"]);
    assert_eq!(second.body["duplicate"], true);
}

#[tokio::test]
async fn duplicate_post_stores_one_row_and_broadcasts_once() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let body = json!({"nick":"bot","text":"once","clientOffset":"dup-1"});

    let first = post(&server, "general", body.clone()).await;
    post(&server, "general", body).await;

    assert_eq!(server.count_rows("client_offset = 'dup-1'"), 1);
    let message = next_message_within(&mut alice, BROADCAST_WAIT)
        .await
        .expect("one broadcast");
    assert_eq!(message["id"], first.body["id"]);
    assert_eq!(alice.maybe_recv(QUIET).await, None);
}

#[tokio::test]
async fn websocket_send_with_the_client_offset_of_an_earlier_post_is_a_duplicate() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let posted = post(
        &server,
        "general",
        json!({"nick":"alice","text":"posted first","clientOffset":"x-1"}),
    )
    .await;
    let broadcast = next_message_within(&mut alice, BROADCAST_WAIT)
        .await
        .expect("the post's broadcast");
    assert_eq!(broadcast["id"], posted.body["id"]);

    let ack = alice.say("general", "posted first", "x-1").await;

    assert_eq!(ack["id"], posted.body["id"]);
    assert_eq!(ack["ts"], posted.body["ts"]);
    assert_eq!(ack["duplicate"], true);
    assert_eq!(server.count_rows("client_offset = 'x-1'"), 1);
    assert_eq!(alice.maybe_recv(QUIET).await, None, "a second broadcast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_and_websocket_sends_share_one_increasing_id_order() {
    let server = Server::start(&["--sends-per-10s", "0"]);
    let (mut observer, _) = server.joined("observer", &["general"]).await;
    let (mut sender, _) = server.joined("sender", &["general"]).await;
    let per_side = 60;
    let url = server.http("/api/rooms/general/messages");

    let poster = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut posted = Vec::new();
        for i in 0..per_side {
            let response = http
                .post(&url)
                .json(&json!({"nick":"bot","text":"post","clientOffset":format!("h-{i}")}))
                .send()
                .await
                .expect("post");
            let answer = answer(response).await;
            assert_eq!(answer.status, 201, "{:?}", answer.body);
            posted.push(answer.body["id"].as_i64().unwrap());
        }
        posted
    });
    for i in 0..per_side {
        sender
            .send(
                json!({"type":"send","room":"general","text":"ws","clientOffset":format!("w-{i}")}),
            )
            .await;
    }
    let mut acked = Vec::new();
    while acked.len() < per_side {
        let frame = sender.recv().await;
        assert_ne!(frame["type"], "error", "send failed: {frame}");
        if frame["type"] == "ack" {
            acked.push(frame["id"].as_i64().unwrap());
        }
    }
    let posted = tokio::time::timeout(crate::helpers::WAIT, poster)
        .await
        .expect("posts in time")
        .unwrap();

    let mut frames = Vec::new();
    while ids(&frames).len() < 2 * per_side {
        frames.push(observer.recv().await);
    }
    let seen = ids(&frames);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ids not strictly increasing: {seen:?}"
    );
    let expected: HashSet<i64> = posted.iter().chain(&acked).copied().collect();
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
}

// ---- paging ----

#[tokio::test]
async fn get_without_params_is_the_newest_50_ascending_with_has_more() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(&server, "general", "").await;

    assert_eq!(page_ids(&page), general[70..]);
    assert_eq!(page["hasMore"], true);
}

#[tokio::test]
async fn get_with_limit_is_the_newest_limit_messages() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(&server, "general", "?limit=7").await;

    assert_eq!(page_ids(&page), general[113..]);
    assert_eq!(page["hasMore"], true);
}

#[tokio::test]
async fn get_with_a_limit_covering_the_room_has_no_more() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(&server, "general", "?limit=200").await;

    assert_eq!(page_ids(&page), general);
    assert_eq!(page["hasMore"], false);
}

#[tokio::test]
async fn get_with_before_is_the_last_limit_messages_below_it() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(
        &server,
        "general",
        &format!("?before={}&limit=10", general[65]),
    )
    .await;

    assert_eq!(page_ids(&page), general[55..65]);
    assert_eq!(page["hasMore"], true);
}

#[tokio::test]
async fn get_with_before_has_no_more_on_the_oldest_page() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(
        &server,
        "general",
        &format!("?before={}&limit=10", general[10]),
    )
    .await;

    assert_eq!(page_ids(&page), general[..10]);
    assert_eq!(page["hasMore"], false);
}

#[tokio::test]
async fn get_with_after_is_the_first_limit_messages_above_it() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(
        &server,
        "general",
        &format!("?after={}&limit=10", general[55]),
    )
    .await;

    assert_eq!(page_ids(&page), general[56..66]);
    assert_eq!(page["hasMore"], true);
}

#[tokio::test]
async fn get_with_after_has_no_more_on_the_newest_page() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let page = page(
        &server,
        "general",
        &format!("?after={}&limit=10", general[109]),
    )
    .await;

    assert_eq!(page_ids(&page), general[110..]);
    assert_eq!(page["hasMore"], false);
}

#[tokio::test]
async fn get_with_after_and_before_is_the_range_between() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let query = format!("?after={}&before={}&limit=200", general[50], general[70]);
    let page = page(&server, "general", &query).await;

    assert_eq!(page_ids(&page), general[51..70]);
    assert_eq!(page["hasMore"], false);
}

#[tokio::test]
async fn get_with_after_and_before_is_the_first_limit_of_the_range_with_has_more() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let query = format!("?after={}&before={}&limit=5", general[50], general[70]);
    let page = page(&server, "general", &query).await;

    assert_eq!(page_ids(&page), general[51..56]);
    assert_eq!(page["hasMore"], true);
}

#[tokio::test]
async fn has_more_with_after_and_before_counts_only_messages_inside_the_range() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    // Exactly `limit` messages lie between; newer ones beyond `before` do not count.
    let query = format!("?after={}&before={}&limit=10", general[50], general[61]);
    let page = page(&server, "general", &query).await;

    assert_eq!(page_ids(&page), general[51..61]);
    assert_eq!(page["hasMore"], false);
}

#[tokio::test]
async fn walking_forward_with_after_yields_every_message_once_in_order() {
    let server = Server::start(&[]);
    let general = seeded_general(&server);

    let mut walked: Vec<i64> = Vec::new();
    let mut after = 0;
    for _ in 0..general.len() {
        let page = page(&server, "general", &format!("?after={after}&limit=50")).await;
        let ids = page_ids(&page);
        walked.extend(&ids);
        if page["hasMore"] == false {
            break;
        }
        after = *ids.last().expect("a page with hasMore is not empty");
    }

    assert_eq!(walked, general);
}

#[tokio::test]
async fn unknown_room_is_an_empty_list_without_more() {
    let server = Server::start(&[]);
    seeded_general(&server);

    let answer = get(&server, "/api/rooms/nobody-here/messages").await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, json!({"messages":[],"hasMore":false}));
}

// ---- the room list ----

#[tokio::test]
async fn rooms_lists_each_room_with_its_message_count_and_last_id() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 3, 5);
    let random_last = seed(&server.db, "random", 2, 5);
    let general_last = seed(&server.db, "general", 1, 5);

    let answer = get(&server, "/api/rooms").await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.body,
        json!({"rooms":[
            {"room":"general","messages":4,"lastId":general_last,"viewers":0},
            {"room":"random","messages":2,"lastId":random_last,"viewers":0},
        ]})
    );
}

#[tokio::test]
async fn rooms_counts_connected_websockets_as_viewers() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 1, 5);
    seed(&server.db, "random", 1, 5);
    let _alice = server.joined("alice", &["general", "random"]).await;
    let _bob = server.joined("bob", &["general"]).await;

    let answer = get(&server, "/api/rooms").await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let viewers = |room: &str| {
        answer.body["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .find(|r| r["room"] == room)
            .unwrap_or_else(|| panic!("{room} missing from {:?}", answer.body))["viewers"]
            .clone()
    };
    assert_eq!(viewers("general"), 2);
    assert_eq!(viewers("random"), 1);
}

// ---- errors ----

#[tokio::test]
async fn invalid_room_name_is_400_invalid_room() {
    let server = Server::start(&[]);
    let long = "a".repeat(65);

    for room in [
        "General",
        "-general",
        "_x",
        "has%20space",
        "bad.room",
        long.as_str(),
    ] {
        let posted = post(&server, room, json!({"nick":"bot","text":"hi"})).await;
        assert_error(&posted, 400, "invalid_room", &format!("POST {room}"));
        let read = get(&server, &format!("/api/rooms/{room}/messages")).await;
        assert_error(&read, 400, "invalid_room", &format!("GET {room}"));
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn invalid_nick_is_400_invalid_nick() {
    let server = Server::start(&[]);
    let long = "n".repeat(33);

    for nick in ["", "   ", long.as_str(), "bad\u{7}nick", "tab\tbed"] {
        let answer = post(&server, "general", json!({"nick":nick,"text":"hi"})).await;
        assert_error(&answer, 400, "invalid_nick", &format!("{nick:?}"));
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn empty_or_whitespace_text_is_400_empty() {
    let server = Server::start(&[]);

    for text in ["", "   ", "\n\t", "\u{3000}\u{a0}"] {
        let answer = post(&server, "general", json!({"nick":"bot","text":text})).await;
        assert_error(&answer, 400, "empty", &format!("{text:?}"));
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn text_over_max_text_chars_is_413_too_long() {
    let server = Server::start(&["--max-text-chars", "10"]);

    let answer = post(
        &server,
        "general",
        json!({"nick":"bot","text":"a".repeat(11)}),
    )
    .await;

    assert_error(&answer, 413, "too_long", "11 characters");
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn text_of_max_text_chars_characters_is_accepted_whatever_its_bytes() {
    let server = Server::start(&["--max-text-chars", "10"]);

    // Ten 4-byte characters are ten characters, not forty.
    let answer = post(
        &server,
        "general",
        json!({"nick":"bot","text":"🎉".repeat(10)}),
    )
    .await;

    assert_eq!(answer.status, 201, "{:?}", answer.body);
}

#[tokio::test]
async fn body_over_64_kib_is_413_too_long_even_with_text_within_the_limit() {
    let server = Server::start(&["--max-text-chars", "1000000"]);

    let body = json!({"nick":"bot","text":"x".repeat(64 * 1024)});
    let answer = post(&server, "general", body).await;

    assert_error(&answer, 413, "too_long", "a body over 64 KiB");
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn body_just_under_64_kib_is_accepted() {
    let server = Server::start(&["--max-text-chars", "1000000"]);

    let body = json!({"nick":"bot","text":"x".repeat(64 * 1024 - 100)});
    let answer = post(&server, "general", body).await;

    assert_eq!(answer.status, 201, "{:?}", answer.body);
}

#[tokio::test]
async fn body_that_is_not_json_is_400_bad_request() {
    let server = Server::start(&[]);

    for body in [
        "",
        "not json",
        "{\"nick\":\"bot\",",
        "{nick:'bot',text:'hi'}",
    ] {
        let answer = post_raw(&server, "general", body.to_string()).await;
        assert_error(&answer, 400, "bad_request", &format!("{body:?}"));
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn json_that_is_not_an_object_is_400_bad_request() {
    let server = Server::start(&[]);

    for body in ["[]", "[\"bot\",\"hi\"]", "\"hi\"", "42", "null", "true"] {
        let answer = post_raw(&server, "general", body.to_string()).await;
        assert_error(&answer, 400, "bad_request", body);
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn missing_nick_or_text_is_400_bad_request() {
    let server = Server::start(&[]);

    for body in [
        json!({"text":"hi"}),
        json!({"nick":"bot"}),
        json!({}),
        json!({"nick":"bot","message":"hi"}),
    ] {
        let answer = post(&server, "general", body.clone()).await;
        assert_error(&answer, 400, "bad_request", &body.to_string());
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn ill_typed_fields_are_400_bad_request() {
    let server = Server::start(&[]);

    for body in [
        json!({"nick":5,"text":"hi"}),
        json!({"nick":null,"text":"hi"}),
        json!({"nick":["bot"],"text":"hi"}),
        json!({"nick":"bot","text":true}),
        json!({"nick":"bot","text":{"body":"hi"}}),
        json!({"nick":"bot","text":"hi","clientOffset":7}),
        json!({"nick":"bot","text":"hi","clientOffset":["k"]}),
    ] {
        let answer = post(&server, "general", body.clone()).await;
        assert_error(&answer, 400, "bad_request", &body.to_string());
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn client_offset_of_bad_length_is_400_bad_request() {
    let server = Server::start(&[]);

    for offset in [String::new(), "k".repeat(65)] {
        let body = json!({"nick":"bot","text":"hi","clientOffset":offset});
        let answer = post(&server, "general", body).await;
        assert_error(
            &answer,
            400,
            "bad_request",
            &format!("{} characters", offset.len()),
        );
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn bad_limit_is_400_bad_request() {
    let server = Server::start(&[]);

    for limit in ["0", "201", "x", "-1", "1.5", ""] {
        let answer = get(
            &server,
            &format!("/api/rooms/general/messages?limit={limit}"),
        )
        .await;
        assert_error(&answer, 400, "bad_request", &format!("limit={limit}"));
    }
}

#[tokio::test]
async fn bad_after_or_before_is_400_bad_request() {
    let server = Server::start(&[]);

    for query in [
        "after=x",
        "after=-1",
        "after=1.5",
        "after=",
        "before=x",
        "before=-1",
        "before=1e3",
        "before=",
    ] {
        let answer = get(&server, &format!("/api/rooms/general/messages?{query}")).await;
        assert_error(&answer, 400, "bad_request", query);
    }
}

#[tokio::test]
async fn posts_over_sends_per_10s_from_one_address_are_429_rate_limited() {
    let server = Server::start(&["--sends-per-10s", "3"]);

    let mut statuses = Vec::new();
    for i in 0..3 {
        let body = json!({"nick":"bot","text":"hi","clientOffset":format!("rl-{i}")});
        statuses.push(post(&server, "general", body).await.status);
    }
    let limited = post(
        &server,
        "general",
        json!({"nick":"other","text":"hi","clientOffset":"rl-3"}),
    )
    .await;

    assert_eq!(statuses, [201, 201, 201]);
    assert_error(&limited, 429, "rate_limited", "the fourth post");
    assert_eq!(server.count_rows("1"), 3);
}

// ---- the access token ----

const TOKEN: &str = "s3cret";

/// Every request the token guards, with `authorization` as the header (none
/// when `None`): what it is, and the request.
fn guarded(
    server: &Server,
    authorization: Option<&str>,
) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let http = reqwest::Client::new();
    let requests = vec![
        ("GET /api/rooms", http.get(server.http("/api/rooms"))),
        (
            "GET messages",
            http.get(server.http("/api/rooms/general/messages")),
        ),
        (
            "POST messages",
            http.post(server.http("/api/rooms/general/messages"))
                .json(&json!({"nick":"bot","text":"hi"})),
        ),
        ("GET /metrics", http.get(server.http("/metrics"))),
    ];
    requests
        .into_iter()
        .map(|(what, request)| match authorization {
            Some(value) => (what, request.header("authorization", value)),
            None => (what, request),
        })
        .collect()
}

#[tokio::test]
async fn without_the_token_api_and_metrics_are_401_unauthorized() {
    let server = Server::start(&["--access-token", TOKEN]);

    for (what, request) in guarded(&server, None) {
        let answer = answer(request.send().await.expect(what)).await;
        assert_error(&answer, 401, "unauthorized", what);
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn with_a_wrong_token_api_and_metrics_are_401_unauthorized() {
    let server = Server::start(&["--access-token", TOKEN]);

    for authorization in [
        "Bearer wrong",
        "Bearer s3cre",
        "Bearer s3cret-and-more",
        "Bearer ",
        "s3cret",
        "Basic s3cret",
    ] {
        for (what, request) in guarded(&server, Some(authorization)) {
            let answer = answer(request.send().await.expect(what)).await;
            assert_error(
                &answer,
                401,
                "unauthorized",
                &format!("{what} with {authorization:?}"),
            );
        }
    }
    assert_eq!(server.count_rows("1"), 0);
}

#[tokio::test]
async fn with_the_bearer_token_api_and_metrics_answer() {
    let server = Server::start(&["--access-token", TOKEN]);

    let mut statuses = Vec::new();
    for (what, request) in guarded(&server, Some(&format!("Bearer {TOKEN}"))) {
        statuses.push((what, request.send().await.expect(what).status().as_u16()));
    }

    assert_eq!(
        statuses,
        [
            ("GET /api/rooms", 200),
            ("GET messages", 200),
            ("POST messages", 201),
            ("GET /metrics", 200),
        ]
    );
}

#[tokio::test]
async fn page_and_healthz_stay_open_with_a_token_configured() {
    let server = Server::start(&["--access-token", TOKEN]);

    let mut statuses = Vec::new();
    for path in ["/", "/healthz"] {
        let response = reqwest::get(server.http(path)).await.expect(path);
        statuses.push((path, response.status().as_u16()));
    }

    assert_eq!(statuses, [("/", 200), ("/healthz", 200)]);
}

// ---- health and unknown paths ----

#[tokio::test]
async fn healthz_answers_200_ok() {
    let server = Server::start(&[]);

    let response = reqwest::get(server.http("/healthz"))
        .await
        .expect("healthz");

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("body"), "ok");
}

#[tokio::test]
async fn unknown_path_is_404_not_found_in_the_error_shape() {
    let server = Server::start(&[]);

    for path in [
        "/nope",
        "/api/nope",
        "/api/rooms/general",
        "/api/rooms/general/messages/1",
    ] {
        let answer = get(&server, path).await;
        assert_error(&answer, 404, "not_found", path);
    }
}
