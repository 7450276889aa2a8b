//! Section 2: the handshake: hello, welcome, each room's join sequence, synced; the nick, rooms, token and offset rules.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Event, Server, WAIT, ids, seed};

/// Frames of other sections (presence, drafts) that the protocol places inside a
/// join sequence; the order tests leave them out.
const OTHER_SECTIONS: [&str; 3] = ["presence", "presence_diff", "draft"];

/// A server whose store already holds `rows` (room, count), inserted in that
/// order before the server started, so they are "in the store" from the start.
/// Returns the newest id.
fn server_with(rows: &[(&str, usize)], args: &[&str]) -> (Server, i64) {
    let mut server = Server::start(args);
    let mut newest = 0;
    for (room, n) in rows {
        newest = seed(&server.db, room, *n, 5);
    }
    server.restart();
    (server, newest)
}

/// The frames as short labels (`welcome`, `joined beta`, `message beta 3`,
/// `synced`), without other sections' frames.
fn outline(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| !OTHER_SECTIONS.contains(&f["type"].as_str().unwrap_or_default()))
        .map(|f| match f["type"].as_str() {
            Some("joined") => format!("joined {}", f["room"].as_str().unwrap_or("?")),
            Some("message") => format!("message {} {}", f["room"].as_str().unwrap_or("?"), f["id"]),
            Some(kind) => kind.to_string(),
            None => panic!("frame without a type: {f}"),
        })
        .collect()
}

/// The next event must be the server closing the connection; returns its code.
async fn next_close(client: &mut Client) -> Option<u16> {
    loop {
        match client.next_event(WAIT).await {
            Some(Event::Ping) => continue,
            Some(Event::Closed(code)) => return code,
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

/// The last frame of a join sequence read with `until("synced")`: the `synced` frame.
fn synced(frames: &[Value]) -> &Value {
    frames.last().expect("frames")
}

#[tokio::test]
async fn hello_is_answered_with_welcome_carrying_session_nick_and_configured_limits() {
    let server = Server::start(&[
        "--max-text-chars",
        "123",
        "--max-frame-bytes",
        "4096",
        "--sends-per-10s",
        "7",
    ]);
    let mut client = server.client().await;

    client.hello("alice", &["general"], None).await;

    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert!(
        welcome["sessionId"].as_str().is_some_and(|s| !s.is_empty()),
        "{welcome}"
    );
    assert_eq!(welcome["nick"], "alice");
    assert_eq!(
        welcome["limits"],
        json!({"maxTextChars":123,"maxFrameBytes":4096,"sendsPer10s":7})
    );
}

#[tokio::test]
async fn welcome_limits_default_to_4000_characters_65536_bytes_and_20_sends() {
    let server = Server::start(&[]);

    let (_client, frames) = server.joined("alice", &["general"]).await;

    assert_eq!(
        frames[0]["limits"],
        json!({"maxTextChars":4000,"maxFrameBytes":65536,"sendsPer10s":20})
    );
}

#[tokio::test]
async fn each_connection_gets_its_own_session_id() {
    let server = Server::start(&[]);

    let (_first, a) = server.joined("alice", &["general"]).await;
    let (_second, b) = server.joined("alice", &["general"]).await;

    assert_ne!(a[0]["sessionId"], b[0]["sessionId"]);
}

#[tokio::test]
async fn welcome_server_offset_is_the_newest_id_in_the_whole_store() {
    // The newest row is in `random`, a room the client does not join.
    let (server, newest) = server_with(&[("general", 3), ("random", 2)], &[]);
    let mut client = server.client().await;

    client.hello("alice", &["general"], None).await;

    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["serverOffset"], newest);
}

#[tokio::test]
async fn welcome_server_offset_counts_messages_sent_since_the_server_started() {
    let server = Server::start(&[]);
    let (mut bob, _) = server.joined("bob", &["random"]).await;
    let ack = bob.say("random", "first", "b-1").await;

    let (_alice, frames) = server.joined("alice", &["general"]).await;

    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["serverOffset"], ack["id"]);
}

#[tokio::test]
async fn hello_without_rooms_joins_general() {
    let server = Server::start(&[]);
    let mut client = server.client().await;

    client.send(json!({"type":"hello","nick":"alice"})).await;

    let frames = client.until("synced").await;
    assert_eq!(outline(&frames), ["welcome", "joined general", "synced"]);
    assert_eq!(synced(&frames)["rooms"], json!(["general"]));
}

#[tokio::test]
async fn each_room_gets_joined_then_its_messages_in_hello_order_then_synced() {
    // A fresh store numbers rows from 1: alpha holds 1, 2, 6 and beta 3, 4, 5.
    let (server, _) = server_with(&[("alpha", 2), ("beta", 3), ("alpha", 1)], &[]);

    let (_client, frames) = server.joined("alice", &["beta", "alpha"]).await;

    assert_eq!(
        outline(&frames),
        [
            "welcome",
            "joined beta",
            "message beta 3",
            "message beta 4",
            "message beta 5",
            "joined alpha",
            "message alpha 1",
            "message alpha 2",
            "message alpha 6",
            "synced",
        ]
    );
}

#[tokio::test]
async fn synced_lists_the_rooms_of_the_hello_in_order() {
    let server = Server::start(&[]);

    let (_client, frames) = server.joined("alice", &["zeta", "alpha", "mid"]).await;

    assert_eq!(synced(&frames)["rooms"], json!(["zeta", "alpha", "mid"]));
}

#[tokio::test]
async fn synced_server_offset_echoes_a_client_offset_above_the_newest_id() {
    let (server, newest) = server_with(&[("general", 3)], &[]);
    let mut client = server.client().await;

    client
        .hello("alice", &["general"], Some(newest + 1000))
        .await;

    let frames = client.until("synced").await;
    assert_eq!(synced(&frames)["serverOffset"], newest + 1000);
}

#[tokio::test]
async fn synced_server_offset_is_the_newest_id_even_when_it_is_in_a_room_not_joined() {
    let (server, newest) = server_with(&[("general", 2), ("random", 3)], &[]);

    let (_client, frames) = server.joined("alice", &["general"]).await;

    assert_eq!(synced(&frames)["serverOffset"], newest);
}

#[tokio::test]
async fn synced_server_offset_is_at_least_the_highest_id_delivered() {
    let server = Server::start(&[]);
    // Written while the server runs, so only the replay itself tells it about them.
    let newest = seed(&server.db, "general", 4, 5);
    let mut client = server.client().await;

    client.hello("alice", &["general"], Some(1)).await;

    let frames = client.until("synced").await;
    assert_eq!(ids(&frames).last(), Some(&newest), "replay: {frames:?}");
    assert_eq!(synced(&frames)["serverOffset"], newest);
}

#[tokio::test]
async fn nick_is_trimmed_in_welcome_and_in_messages() {
    let server = Server::start(&[]);

    let (mut client, frames) = server.joined(" \t alice  ", &["general"]).await;
    client.say("general", "hi", "a-1").await;

    assert_eq!(frames[0]["nick"], "alice");
    assert_eq!(client.next_of("message").await["nick"], "alice");
}

#[tokio::test]
async fn nick_of_32_multibyte_characters_is_accepted() {
    let server = Server::start(&[]);
    let nick = "🎉".repeat(32);

    let (_client, frames) = server.joined(&nick, &["general"]).await;

    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["nick"], nick.as_str());
}

#[tokio::test]
async fn nick_length_is_counted_after_trimming() {
    let server = Server::start(&[]);
    let nick = "a".repeat(32);

    let (_client, frames) = server.joined(&format!("   {nick}   "), &["general"]).await;

    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["nick"], nick.as_str());
}

#[tokio::test]
async fn nick_of_33_characters_is_invalid_nick() {
    let server = Server::start(&[]);
    let mut client = server.client().await;

    for nick in ["🎉".repeat(33), "a".repeat(33)] {
        client.hello(&nick, &["general"], None).await;
        assert_eq!(client.recv().await["code"], "invalid_nick", "{nick}");
    }
}

#[tokio::test]
async fn empty_or_white_space_only_nick_is_invalid_nick() {
    let server = Server::start(&[]);
    let mut client = server.client().await;

    for nick in ["", " ", " \t\n ", "\u{3000}\u{a0}"] {
        client.hello(nick, &["general"], None).await;
        assert_eq!(client.recv().await["code"], "invalid_nick", "{nick:?}");
    }
}

#[tokio::test]
async fn nick_with_a_control_character_is_invalid_nick() {
    let server = Server::start(&[]);
    let mut client = server.client().await;

    for nick in [
        "al\u{7}ice",
        "\u{1b}[31mred",
        "tab\there",
        "del\u{7f}",
        "c1\u{85}nel",
        "nul\u{0}",
    ] {
        client.hello(nick, &["general"], None).await;
        assert_eq!(client.recv().await["code"], "invalid_nick", "{nick:?}");
    }
}

#[tokio::test]
async fn invalid_hello_gets_no_welcome_and_a_corrected_hello_on_the_same_connection_works() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    client.hello("", &["general"], None).await;
    assert_eq!(client.recv().await["code"], "invalid_nick");
    assert_eq!(client.maybe_recv(Duration::from_millis(300)).await, None);

    client.hello("alice", &["general"], None).await;

    let frames = client.until("synced").await;
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["nick"], "alice");
}

#[tokio::test]
async fn more_than_50_rooms_in_hello_is_too_many_rooms() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let rooms: Vec<String> = (0..51).map(|i| format!("room-{i}")).collect();

    client
        .send(json!({"type":"hello","nick":"alice","rooms":rooms}))
        .await;

    assert_eq!(client.recv().await["code"], "too_many_rooms");
}

#[tokio::test]
async fn exactly_50_rooms_in_hello_are_all_joined() {
    let server = Server::start(&[]);
    let rooms: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();

    let (_client, frames) = server.joined("alice", &rooms).await;

    assert_eq!(synced(&frames)["rooms"], json!(rooms));
}

#[tokio::test]
async fn invalid_room_name_in_hello_is_invalid_room() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let too_long = "a".repeat(65);

    for room in [
        "General",
        "-general",
        "_general",
        too_long.as_str(),
        "",
        "café",
        "a b",
        "a.b",
        "a/b",
    ] {
        client.hello("alice", &["general", room], None).await;
        assert_eq!(client.recv().await["code"], "invalid_room", "{room:?}");
    }
}

#[tokio::test]
async fn room_names_at_the_edges_of_the_pattern_are_accepted() {
    let server = Server::start(&[]);
    let longest = "z".repeat(64);
    let rooms = ["0", "a", "9-_", "a-b_c", longest.as_str()];

    let (_client, frames) = server.joined("alice", &rooms).await;

    assert_eq!(synced(&frames)["rooms"], json!(rooms));
}

#[tokio::test]
async fn duplicate_rooms_in_hello_are_joined_once() {
    let (server, _) = server_with(&[("general", 2)], &[]);

    let (_client, frames) = server.joined("alice", &["general", "general"]).await;

    assert_eq!(
        outline(&frames),
        [
            "welcome",
            "joined general",
            "message general 1",
            "message general 2",
            "synced"
        ]
    );
    assert_eq!(synced(&frames)["rooms"], json!(["general"]));
}

/// Section 2: a first frame that is not `hello` closes at once with 1008,
/// without an answer; only a `hello` with an invalid field may be corrected.
#[tokio::test]
async fn a_first_frame_that_is_not_hello_closes_with_1008_at_once() {
    let server = Server::start(&[]);
    let cases = [
        Message::text(json!({"type":"ping"}).to_string()),
        Message::text(
            json!({"type":"send","room":"general","text":"hi","ref":"early"}).to_string(),
        ),
        Message::text(json!({"type":"join","room":"general"}).to_string()),
        Message::text(json!({"type":"history","room":"general"}).to_string()),
        Message::text(json!({"type":"dance"}).to_string()),
        Message::text(json!({"nick":"alice"}).to_string()),
        Message::text("not json"),
        Message::text(r#"["hello"]"#),
        Message::binary(b"hello".to_vec()),
    ];
    for first in cases {
        let mut client = server.client().await;
        client.send_raw(first.clone()).await;

        assert_eq!(next_close(&mut client).await, Some(1008), "{first:?}");
    }
}

#[tokio::test]
async fn a_non_hello_frame_after_an_invalid_hello_closes_with_1008() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    client.send(json!({"type":"hello","nick":""})).await;
    assert_eq!(client.recv().await["code"], "invalid_nick");

    client.send(json!({"type":"ping"})).await;

    assert_eq!(next_close(&mut client).await, Some(1008));
}

#[tokio::test]
async fn hello_without_token_is_unauthorized_then_closed_with_1008() {
    let server = Server::start(&["--access-token", "s3cret"]);
    let mut client = server.client().await;

    client.hello("alice", &["general"], None).await;

    assert_eq!(client.recv().await["code"], "unauthorized");
    assert_eq!(next_close(&mut client).await, Some(1008));
}

#[tokio::test]
async fn hello_with_a_wrong_token_is_unauthorized_then_closed_with_1008() {
    let server = Server::start(&["--access-token", "s3cret"]);

    for token in ["wrong", "s3cre", "s3cret!", "S3CRET", " s3cret", ""] {
        let mut client = server.client().await;
        client
            .send(json!({"type":"hello","nick":"alice","token":token}))
            .await;
        assert_eq!(client.recv().await["code"], "unauthorized", "{token:?}");
        assert_eq!(next_close(&mut client).await, Some(1008), "{token:?}");
    }
}

#[tokio::test]
async fn hello_with_the_right_token_gets_welcome() {
    let server = Server::start(&["--access-token", "s3cret"]);
    let mut client = server.client().await;

    client
        .send(json!({"type":"hello","nick":"alice","token":"s3cret"}))
        .await;

    assert_eq!(client.recv().await["type"], "welcome");
}

#[tokio::test]
async fn token_is_ignored_when_the_server_has_no_access_token() {
    let server = Server::start(&[]);
    let mut client = server.client().await;

    client
        .send(json!({"type":"hello","nick":"alice","token":"anything"}))
        .await;

    assert_eq!(client.recv().await["type"], "welcome");
}

#[tokio::test]
async fn second_hello_after_welcome_is_bad_request_and_the_connection_stays_usable() {
    let server = Server::start(&[]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    client.hello("bob", &["random"], None).await;

    assert_eq!(client.recv().await["code"], "bad_request");
    client.assert_usable().await;
}

/// "Which clients get version 2 frames": a `hello` may say `"version":2`; a
/// newer version than the server speaks is served as the newest it knows.
#[tokio::test]
async fn hello_with_a_version_gets_the_same_welcome_and_join_sequence() {
    let server = Server::start(&[]);
    for version in [1, 2, 7] {
        let mut client = server.client().await;
        client
            .send(json!({"type":"hello","nick":"alice","rooms":["general"],"version":version}))
            .await;

        let frames = client.until("synced").await;
        let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
        assert_eq!(
            kinds,
            ["welcome", "joined", "presence", "synced"],
            "{version}"
        );
        assert_eq!(frames[0]["auth"], "open");
    }
}
