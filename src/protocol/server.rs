//! Server frames: every frame natter sends, serialized here and nowhere else.

use serde::Serialize;
use serde_json::{Value, json};

use super::ChatMessage;
use crate::error::ClientError;

/// A stored message as a frame, `{"type":"message",...}`: live, replayed,
/// in history pages and in the HTTP API alike.
#[derive(Serialize)]
pub struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    message: &'a ChatMessage,
}

impl<'a> From<&'a ChatMessage> for MessageFrame<'a> {
    fn from(message: &'a ChatMessage) -> Self {
        MessageFrame {
            kind: "message",
            message,
        }
    }
}

/// Serialized once per message and shared by every receiver.
pub fn message_frame(message: &ChatMessage) -> String {
    to_json(&MessageFrame::from(message))
}

pub fn error_frame(error: &ClientError, reference: Option<&str>) -> String {
    let mut frame = json!({
        "type": "error",
        "code": error.code.as_str(),
        "message": error.message,
    });
    if let Some(reference) = reference {
        frame["ref"] = Value::from(reference);
    }
    frame.to_string()
}

pub fn ack_frame(client_offset: Option<&str>, id: i64, ts: i64, duplicate: bool) -> String {
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "clientOffset", skip_serializing_if = "Option::is_none")]
        client_offset: Option<&'a str>,
        id: i64,
        ts: i64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    }
    to_json(&Ack {
        kind: "ack",
        client_offset,
        id,
        ts,
        duplicate,
    })
}

/// `welcome`: who the client is, where the store stands, and the limits.
pub fn welcome_frame(
    session_id: &str,
    nick: &str,
    server_offset: i64,
    store_id: &str,
    limits: &WireLimits,
) -> String {
    json!({
        "type": "welcome",
        "sessionId": session_id,
        "nick": nick,
        "serverOffset": server_offset,
        "storeId": store_id,
        "auth": "open",
        "limits": limits,
    })
    .to_string()
}

/// The limits a client is told in `welcome`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireLimits {
    pub max_text_chars: usize,
    pub max_frame_bytes: usize,
    pub sends_per10s: u32,
}

pub fn joined_frame(room: &str) -> String {
    json!({ "type": "joined", "room": room }).to_string()
}

pub fn left_frame(room: &str) -> String {
    json!({ "type": "left", "room": room }).to_string()
}

pub fn synced_frame(rooms: &[String], server_offset: i64) -> String {
    json!({ "type": "synced", "rooms": rooms, "serverOffset": server_offset }).to_string()
}

pub fn draft_frame(room: &str, text: &str, updated_at: i64) -> String {
    json!({ "type": "draft", "room": room, "text": text, "updatedAt": updated_at }).to_string()
}

/// One member's entry in a `presence` frame: `{"nick":...,"connections":N}`.
pub fn presence_member(nick: &str, connections: usize) -> String {
    #[derive(Serialize)]
    struct Member<'a> {
        nick: &'a str,
        connections: usize,
    }
    to_json(&Member { nick, connections })
}

/// `presence`, from members' entries already serialized by `presence_member`
/// (kept ready by the hub, so a join into a big room copies them instead of
/// serializing the whole room again).
pub fn presence_frame<'a>(
    room: &str,
    viewers: usize,
    members: impl Iterator<Item = &'a str>,
) -> String {
    let mut frame = String::with_capacity(64);
    frame.push_str(r#"{"type":"presence","room":"#);
    frame.push_str(&to_json(&room));
    frame.push_str(r#","viewers":"#);
    frame.push_str(&viewers.to_string());
    frame.push_str(r#","members":["#);
    for (i, member) in members.enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(member);
    }
    frame.push_str("]}");
    frame
}

pub fn presence_diff_frame(room: &str, viewers: usize, joins: &[&str], leaves: &[&str]) -> String {
    json!({"type": "presence_diff", "room": room, "viewers": viewers, "joins": joins, "leaves": leaves})
        .to_string()
}

pub fn typing_frame(room: &str, nick: &str, active: bool) -> String {
    json!({"type": "typing", "room": room, "nick": nick, "active": active}).to_string()
}

pub fn pong_frame() -> &'static str {
    r#"{"type":"pong"}"#
}

pub fn history_frame(
    room: &str,
    reference: Option<&str>,
    messages: &[ChatMessage],
    has_more: bool,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct History<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        room: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        messages: Vec<MessageFrame<'a>>,
        has_more: bool,
    }
    to_json(&History {
        kind: "history",
        room,
        reference,
        messages: messages.iter().map(MessageFrame::from).collect(),
        has_more,
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing plain structs of strings and integers into a String cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}
