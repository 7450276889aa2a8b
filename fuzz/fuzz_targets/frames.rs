//! Fuzz target: server frames built from arbitrary stored messages
//! (`protocol::message_frame`, `protocol::history_frame`) parse back, with
//! serde_json, to exactly the fields they were built from.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run frames -- -max_total_time=120`
//! (no seeds needed: the input is structured by `arbitrary`).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter::protocol::{self, ChatMessage};
use serde_json::{Map, Value};

/// A `ChatMessage` with every field arbitrary (the store never produces some
/// of these, such as negative ids, but the serializer must not care).
#[derive(Arbitrary, Debug)]
struct Message {
    id: i64,
    room: String,
    nick: String,
    text: String,
    ts: i64,
    client_offset: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    message: Message,
    history_room: String,
    history_ref: Option<String>,
    history: Vec<Message>,
    has_more: bool,
}

impl From<Message> for ChatMessage {
    fn from(m: Message) -> Self {
        ChatMessage {
            id: m.id,
            room: m.room,
            nick: m.nick,
            text: m.text,
            ts: m.ts,
            client_offset: m.client_offset,
        }
    }
}

fuzz_target!(|input: Input| {
    let message = ChatMessage::from(input.message);
    let frame = protocol::message_frame(&message);
    let value: Value = serde_json::from_str(&frame).expect("message_frame is JSON");
    check_message(value.as_object().expect("an object"), &message, &frame);

    let messages: Vec<ChatMessage> = input.history.into_iter().map(Into::into).collect();
    let frame = protocol::history_frame(
        &input.history_room,
        input.history_ref.as_deref(),
        &messages,
        input.has_more,
    );
    let value: Value = serde_json::from_str(&frame).expect("history_frame is JSON");
    let object = value.as_object().expect("an object");
    assert_eq!(object.get("type"), Some(&Value::from("history")), "{frame}");
    assert_eq!(
        object.get("room"),
        Some(&Value::from(input.history_room.as_str())),
        "{frame}"
    );
    assert_eq!(
        object
            .get("ref")
            .map(|r| r.as_str().expect("ref is a string")),
        input.history_ref.as_deref(),
        "{frame}"
    );
    assert_eq!(
        object.get("hasMore"),
        Some(&Value::Bool(input.has_more)),
        "{frame}"
    );
    assert_eq!(
        object.len(),
        4 + usize::from(input.history_ref.is_some()),
        "{frame}"
    );
    let listed = object
        .get("messages")
        .and_then(Value::as_array)
        .expect("messages is an array");
    assert_eq!(listed.len(), messages.len(), "{frame}");
    for (item, message) in listed.iter().zip(&messages) {
        check_message(item.as_object().expect("an object"), message, &frame);
    }
});

/// `{"type":"message","id":..,"room":..,"nick":..,"text":..,"ts":..[,"clientOffset":..]}`
fn check_message(object: &Map<String, Value>, message: &ChatMessage, frame: &str) {
    assert_eq!(object.get("type"), Some(&Value::from("message")), "{frame}");
    assert_eq!(
        object.get("id").and_then(Value::as_i64),
        Some(message.id),
        "{frame}"
    );
    assert_eq!(
        object.get("ts").and_then(Value::as_i64),
        Some(message.ts),
        "{frame}"
    );
    for (key, expected) in [
        ("room", &message.room),
        ("nick", &message.nick),
        ("text", &message.text),
    ] {
        assert_eq!(
            object.get(key).and_then(Value::as_str),
            Some(expected.as_str()),
            "{key} in {frame}"
        );
    }
    assert_eq!(
        object
            .get("clientOffset")
            .map(|c| c.as_str().expect("a string")),
        message.client_offset.as_deref(),
        "{frame}"
    );
    assert_eq!(
        object.len(),
        6 + usize::from(message.client_offset.is_some()),
        "{frame}"
    );
}
