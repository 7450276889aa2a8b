//! Section 8: error frames: codes for malformed and invalid requests, `ref`/`clientOffset` echo, and the connection surviving every error.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Server};

/// Every code section 8 defines.
const CODES: [&str; 11] = [
    "bad_request",
    "invalid_nick",
    "invalid_room",
    "too_long",
    "empty",
    "not_joined",
    "too_many_rooms",
    "rate_limited",
    "unauthorized",
    "unsupported",
    "internal",
];

/// A server with a 10-character text limit and no send limit.
fn server() -> Server {
    Server::start(&["--max-text-chars", "10", "--sends-per-10s", "0"])
}

/// Alice in `general` and 49 more rooms: as many as a connection may be in.
async fn alice_in_50_rooms(server: &Server) -> Client {
    let mut rooms = vec!["general".to_string()];
    rooms.extend((1..50).map(|i| format!("room-{i}")));
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    server.joined("alice", &rooms).await.0
}

/// Every error a connection like `alice_in_50_rooms` can provoke with a JSON
/// object, as (ref, frame carrying that ref, expected code).
fn request_errors() -> Vec<(&'static str, Value, &'static str)> {
    let cases = [
        ("unknown-type", json!({"type":"dance"}), "bad_request"),
        ("missing-type", json!({"room":"general"}), "bad_request"),
        ("type-not-string", json!({"type":7}), "bad_request"),
        (
            "room-not-string",
            json!({"type":"send","room":5,"text":"hi"}),
            "bad_request",
        ),
        (
            "text-not-string",
            json!({"type":"send","room":"general","text":["hi"]}),
            "bad_request",
        ),
        (
            "missing-text",
            json!({"type":"send","room":"general"}),
            "bad_request",
        ),
        (
            "offset-negative",
            json!({"type":"join","room":"general","serverOffset":-1}),
            "bad_request",
        ),
        (
            "offset-string",
            json!({"type":"join","room":"general","serverOffset":"5"}),
            "bad_request",
        ),
        (
            "limit-string",
            json!({"type":"history","room":"general","limit":"10"}),
            "bad_request",
        ),
        (
            "limit-zero",
            json!({"type":"history","room":"general","limit":0}),
            "bad_request",
        ),
        (
            "second-hello",
            json!({"type":"hello","nick":"alice"}),
            "bad_request",
        ),
        (
            "send-invalid-room",
            json!({"type":"send","room":"General","text":"hi"}),
            "invalid_room",
        ),
        (
            "join-invalid-room",
            json!({"type":"join","room":"-general"}),
            "invalid_room",
        ),
        (
            "leave-invalid-room",
            json!({"type":"leave","room":"a".repeat(65)}),
            "invalid_room",
        ),
        (
            "history-invalid-room",
            json!({"type":"history","room":""}),
            "invalid_room",
        ),
        (
            "too-long",
            json!({"type":"send","room":"general","text":"x".repeat(11)}),
            "too_long",
        ),
        (
            "empty",
            json!({"type":"send","room":"general","text":"  "}),
            "empty",
        ),
        (
            "send-not-joined",
            json!({"type":"send","room":"random","text":"hi"}),
            "not_joined",
        ),
        (
            "leave-not-joined",
            json!({"type":"leave","room":"random"}),
            "not_joined",
        ),
        (
            "too-many-rooms",
            json!({"type":"join","room":"one-more"}),
            "too_many_rooms",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, mut frame, code)| {
            frame["ref"] = json!(name);
            (name, frame, code)
        })
        .collect()
}

/// Errors for frames that are not JSON objects, so there is nothing to echo.
fn unparsed_errors() -> Vec<(&'static str, Message)> {
    vec![
        ("not JSON", Message::text("not json")),
        ("a JSON array", Message::text("[1]")),
        ("a binary frame", Message::binary(vec![1u8, 2, 3])),
    ]
}

/// Every error a `hello` can get on a server without an access token, as
/// (ref, frame carrying that ref, expected code).
fn hello_errors() -> Vec<(&'static str, Value, &'static str)> {
    let rooms: Vec<String> = (0..51).map(|i| format!("room-{i}")).collect();
    let cases = [
        (
            "nick-too-long",
            json!({"type":"hello","nick":"a".repeat(33)}),
            "invalid_nick",
        ),
        (
            "nick-control",
            json!({"type":"hello","nick":"a\u{7}"}),
            "invalid_nick",
        ),
        ("nick-missing", json!({"type":"hello"}), "bad_request"),
        (
            "nick-not-string",
            json!({"type":"hello","nick":5}),
            "bad_request",
        ),
        (
            "rooms-not-array",
            json!({"type":"hello","nick":"alice","rooms":"general"}),
            "bad_request",
        ),
        (
            "room-not-string",
            json!({"type":"hello","nick":"alice","rooms":[1]}),
            "bad_request",
        ),
        (
            "room-invalid",
            json!({"type":"hello","nick":"alice","rooms":["General"]}),
            "invalid_room",
        ),
        (
            "too-many-rooms",
            json!({"type":"hello","nick":"alice","rooms":rooms}),
            "too_many_rooms",
        ),
        (
            "offset-negative",
            json!({"type":"hello","nick":"alice","serverOffset":-1}),
            "bad_request",
        ),
        (
            "offset-string",
            json!({"type":"hello","nick":"alice","serverOffset":"9"}),
            "bad_request",
        ),
        (
            "version-not-integer",
            json!({"type":"hello","nick":"alice","version":"2"}),
            "bad_request",
        ),
        (
            "version-zero",
            json!({"type":"hello","nick":"alice","version":0}),
            "bad_request",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, mut frame, code)| {
            frame["ref"] = json!(name);
            (name, frame, code)
        })
        .collect()
}

/// Send `frame` and return the answer.
async fn answer(client: &mut Client, frame: Value) -> Value {
    client.send(frame).await;
    client.recv().await
}

#[tokio::test]
async fn non_json_text_is_bad_request_without_ref() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for text in [
        "not json",
        "",
        r#"{"type":"ping","ref":"r""#,
        r#"{'type':'ping','ref':'r'}"#,
        r#"{"type":"ping","ref":"r"} {"type":"ping"}"#,
    ] {
        alice.send_raw(Message::text(text)).await;
        let error = alice.recv().await;
        assert_eq!(error["code"], "bad_request", "{text:?}");
        assert_eq!(error.get("ref"), None, "{text:?}");
    }
}

#[tokio::test]
async fn json_that_is_not_an_object_is_bad_request() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for text in ["[1]", "[]", r#"["ping"]"#, r#""x""#, "3", "null", "true"] {
        alice.send_raw(Message::text(text)).await;
        assert_eq!(alice.recv().await["code"], "bad_request", "{text}");
    }
}

#[tokio::test]
async fn json_array_is_bad_request_even_when_it_lists_a_requests_fields_in_order() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    // type, ref, nick, rooms, serverOffset, token, room, text, clientOffset, before, limit
    let positional = json!([
        "send",
        "r-1",
        null,
        null,
        null,
        null,
        "general",
        "via array",
        "arr-1",
        null,
        null
    ]);

    alice.send(positional).await;

    let answer = alice.recv().await;
    assert_eq!(answer["code"], "bad_request", "answered with {answer}");
}

#[tokio::test]
async fn frame_without_type_is_bad_request() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for frame in [
        json!({"room":"general","text":"hi"}),
        json!({"type":null,"room":"general"}),
    ] {
        assert_eq!(
            answer(&mut alice, frame.clone()).await["code"],
            "bad_request",
            "{frame}"
        );
    }
}

#[tokio::test]
async fn type_that_is_not_a_string_is_bad_request() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for kind in [json!(7), json!(["ping"]), json!({"ping":true}), json!(true)] {
        let error = answer(&mut alice, json!({"type":kind})).await;
        assert_eq!(error["code"], "bad_request", "{kind}");
    }
}

#[tokio::test]
async fn unknown_type_is_bad_request_echoing_ref() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for kind in ["dance", "PING", "Send", ""] {
        let error = answer(&mut alice, json!({"type":kind,"ref":"u-1"})).await;
        assert_eq!(error["code"], "bad_request", "{kind:?}");
        assert_eq!(error["ref"], "u-1", "{kind:?}");
    }
}

#[tokio::test]
async fn ill_typed_fields_are_bad_request() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for frame in [
        json!({"type":"send","room":5,"text":"hi"}),
        json!({"type":"send","room":"general","text":["hi"]}),
        json!({"type":"send","room":"general","text":7}),
        json!({"type":"send","room":"general","text":"hi","clientOffset":5}),
        json!({"type":"join","room":["general"]}),
        json!({"type":"join","room":"general","serverOffset":-1}),
        json!({"type":"join","room":"general","serverOffset":"5"}),
        json!({"type":"join","room":"general","serverOffset":1.5}),
        json!({"type":"leave","room":true}),
        json!({"type":"history","room":"general","limit":"10"}),
        json!({"type":"history","room":"general","limit":2.5}),
        json!({"type":"history","room":"general","before":"10"}),
        json!({"type":"history","room":"general","before":-1}),
    ] {
        assert_eq!(
            answer(&mut alice, frame.clone()).await["code"],
            "bad_request",
            "{frame}"
        );
    }
}

#[tokio::test]
async fn missing_required_fields_are_bad_request() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for frame in [
        json!({"type":"send","text":"hi"}),
        json!({"type":"send","room":"general"}),
        json!({"type":"join"}),
        json!({"type":"leave"}),
        json!({"type":"history"}),
    ] {
        assert_eq!(
            answer(&mut alice, frame.clone()).await["code"],
            "bad_request",
            "{frame}"
        );
    }
}

#[tokio::test]
async fn invalid_room_is_reported_by_send_join_leave_and_history() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for frame in [
        json!({"type":"send","room":"General","text":"hi","ref":"r"}),
        json!({"type":"join","room":"-general","ref":"r"}),
        json!({"type":"leave","room":"a".repeat(65),"ref":"r"}),
        json!({"type":"history","room":"","ref":"r"}),
    ] {
        assert_eq!(
            answer(&mut alice, frame.clone()).await["code"],
            "invalid_room",
            "{frame}"
        );
    }
}

#[tokio::test]
async fn joining_a_51st_room_is_too_many_rooms() {
    let server = server();
    let mut alice = alice_in_50_rooms(&server).await;

    let error = answer(&mut alice, json!({"type":"join","room":"one-more"})).await;

    assert_eq!(error["code"], "too_many_rooms");
}

#[tokio::test]
async fn every_request_error_echoes_its_ref() {
    let server = server();
    let mut alice = alice_in_50_rooms(&server).await;

    for (name, frame, _) in request_errors() {
        let error = answer(&mut alice, frame).await;
        assert_eq!(error["type"], "error", "{name}: {error}");
        assert_eq!(error["ref"], name, "{name}: {error}");
    }
}

#[tokio::test]
async fn every_request_error_has_its_code() {
    let server = server();
    let mut alice = alice_in_50_rooms(&server).await;

    for (name, frame, code) in request_errors() {
        let error = answer(&mut alice, frame).await;
        assert_eq!(error["code"], code, "{name}: {error}");
    }
}

#[tokio::test]
async fn every_hello_error_has_its_code() {
    let server = server();
    let mut client = server.client().await;

    for (name, frame, code) in hello_errors() {
        let error = answer(&mut client, frame).await;
        assert_eq!(error["code"], code, "{name}: {error}");
    }
}

#[tokio::test]
async fn every_hello_error_echoes_its_ref() {
    let server = server();
    let mut client = server.client().await;

    for (name, frame, _) in hello_errors() {
        let error = answer(&mut client, frame).await;
        assert_eq!(error["type"], "error", "{name}: {error}");
        assert_eq!(error["ref"], name, "{name}: {error}");
    }
}

#[tokio::test]
async fn unauthorized_echoes_ref() {
    let server = Server::start(&["--access-token", "s3cret"]);
    let mut client = server.client().await;

    let error = answer(
        &mut client,
        json!({"type":"hello","nick":"alice","token":"wrong","ref":"h-1"}),
    )
    .await;

    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["ref"], "h-1");
}

#[tokio::test]
async fn rate_limited_echoes_ref() {
    let server = Server::start(&["--sends-per-10s", "1"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    alice.say("general", "the only one", "c-1").await;
    alice.next_of("message").await;

    let error = answer(
        &mut alice,
        json!({"type":"send","room":"general","text":"one more","clientOffset":"c-2","ref":"r-2"}),
    )
    .await;

    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["ref"], "r-2");
}

#[tokio::test]
async fn client_offset_is_echoed_when_there_is_no_ref() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for frame in [
        json!({"type":"dance","clientOffset":"c-1"}),
        json!({"type":"send","room":"general","text":["hi"],"clientOffset":"c-1"}),
        json!({"type":"send","room":"General","text":"hi","clientOffset":"c-1"}),
        json!({"type":"send","room":"general","text":"x".repeat(11),"clientOffset":"c-1"}),
        json!({"type":"send","room":"general","text":" ","clientOffset":"c-1"}),
        json!({"type":"send","room":"random","text":"hi","clientOffset":"c-1"}),
    ] {
        let error = answer(&mut alice, frame.clone()).await;
        assert_eq!(error["ref"], "c-1", "{frame}: {error}");
    }
}

#[tokio::test]
async fn ref_takes_precedence_over_client_offset() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    let error = answer(
        &mut alice,
        json!({"type":"send","room":"random","text":"hi","clientOffset":"c-1","ref":"r-1"}),
    )
    .await;

    assert_eq!(error["ref"], "r-1");
}

#[tokio::test]
async fn non_string_ref_or_client_offset_is_not_echoed() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    for frame in [
        json!({"type":"dance","ref":5}),
        json!({"type":"dance","ref":["r"]}),
        json!({"type":"dance","ref":{"r":1}}),
        json!({"type":"dance","ref":true}),
        json!({"type":"dance","ref":null}),
        json!({"type":"dance","clientOffset":5}),
    ] {
        let error = answer(&mut alice, frame.clone()).await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error.get("ref"), None, "{frame}: {error}");
    }
}

#[tokio::test]
async fn non_string_ref_falls_back_to_client_offset() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    let error = answer(
        &mut alice,
        json!({"type":"dance","ref":5,"clientOffset":"c-1"}),
    )
    .await;

    assert_eq!(error["ref"], "c-1");
}

#[tokio::test]
async fn connection_stays_usable_and_keeps_its_rooms_after_every_request_error() {
    let server = server();
    let mut alice = alice_in_50_rooms(&server).await;
    let mut frames: Vec<(&str, Message)> = request_errors()
        .into_iter()
        .map(|(name, frame, _)| (name, Message::text(frame.to_string())))
        .collect();
    frames.extend(unparsed_errors());

    for (i, (name, frame)) in frames.into_iter().enumerate() {
        alice.send_raw(frame).await;
        let error = alice.recv().await;
        assert_eq!(error["type"], "error", "{name}: {error}");
        alice.assert_usable().await;
        let ack = alice
            .say("general", "still here", &format!("after-{i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{name}");
        // Its own broadcast, so the next error is the next frame.
        alice.next_of("message").await;
    }
}

#[tokio::test]
async fn connection_stays_usable_and_in_its_rooms_after_rate_limited() {
    let server = Server::start(&["--sends-per-10s", "1"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (mut bob, _) = server.joined("bob", &["general"]).await;
    alice.say("general", "the only one", "a-1").await;
    alice.next_of("message").await;
    let error = answer(
        &mut alice,
        json!({"type":"send","room":"general","text":"more"}),
    )
    .await;
    assert_eq!(error["code"], "rate_limited");

    alice.assert_usable().await;
    bob.say("general", "can you hear me", "b-1").await;

    // Sending is what is limited; the connection is still in `general`.
    let message = alice.next_of("message").await;
    assert_eq!(message["nick"], "bob");
}

#[tokio::test]
async fn handshake_stays_open_after_every_hello_error() {
    let server = server();
    let mut client = server.client().await;
    // Each answer is read on the same connection: it stayed open.
    for (name, frame, _) in hello_errors() {
        let error = answer(&mut client, frame).await;
        assert_eq!(error["type"], "error", "{name}: {error}");
    }

    client.hello("alice", &["general"], None).await;

    assert_eq!(client.recv().await["type"], "welcome");
}

#[tokio::test]
async fn error_frames_have_type_code_and_a_non_empty_message() {
    let server = server();
    let mut errors = Vec::new();
    let mut alice = alice_in_50_rooms(&server).await;
    for (_, frame, _) in request_errors() {
        errors.push(answer(&mut alice, frame).await);
    }
    for (_, frame) in unparsed_errors() {
        alice.send_raw(frame).await;
        errors.push(alice.recv().await);
    }
    let mut newcomer = server.client().await;
    for (_, frame, _) in hello_errors() {
        errors.push(answer(&mut newcomer, frame).await);
    }
    let guarded = Server::start(&["--access-token", "s3cret"]);
    let mut intruder = guarded.client().await;
    errors.push(answer(&mut intruder, json!({"type":"hello","nick":"eve"})).await);

    for error in &errors {
        assert_eq!(error["type"], "error", "{error}");
        assert!(
            error["code"].as_str().is_some_and(|c| CODES.contains(&c)),
            "{error}"
        );
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| !m.trim().is_empty()),
            "{error}"
        );
    }
}

#[tokio::test]
async fn rejected_request_gets_its_error_and_nothing_else() {
    let server = server();
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send(json!({"type":"send","room":"general","text":"  ","ref":"r"}))
        .await;

    assert_eq!(alice.recv().await["code"], "empty");
    assert_eq!(alice.maybe_recv(Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn a_key_given_twice_is_bad_request_and_still_echoes_ref() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;

    alice
        .send_raw(Message::text(
            r#"{"type":"send","room":"general","text":"a","text":"b","ref":"d1"}"#,
        ))
        .await;

    let error = alice.recv().await;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["ref"], "d1");
    alice.assert_usable().await;
}
