//! The wire format: client frames parsed and validated into typed requests, server frames serialized. No I/O.
//!
//! Validation lives here, not in the connection handler, so the HTTP API and the
//! fuzz target check input with exactly the same rules.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ClientError, ErrorCode};

/// Rooms one connection may be in at once (section 4).
pub const MAX_ROOMS_PER_CONNECTION: usize = 50;
/// Longest nick, in Unicode scalar values, after trimming.
pub const MAX_NICK_CHARS: usize = 32;
/// Longest room name (the pattern `^[a-z0-9][a-z0-9_-]{0,63}$`).
pub const MAX_ROOM_CHARS: usize = 64;
/// Longest `clientOffset`.
pub const MAX_CLIENT_OFFSET_CHARS: usize = 64;
/// History page size bounds and default (section 5).
pub const MAX_HISTORY_LIMIT: i64 = 200;
pub const DEFAULT_HISTORY_LIMIT: i64 = 50;
/// The room a `hello` without `rooms` joins.
pub const DEFAULT_ROOM: &str = "general";

/// The limits that depend on configuration; the rest are protocol constants.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_text_chars: usize,
}

/// A validated client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Hello(Hello),
    Send {
        room: String,
        text: String,
        client_offset: Option<String>,
    },
    Join {
        room: String,
        server_offset: Option<i64>,
    },
    Leave {
        room: String,
    },
    History {
        room: String,
        before: Option<i64>,
        limit: i64,
        reference: Option<String>,
    },
    Typing {
        room: String,
        active: bool,
    },
    Draft {
        room: String,
        text: String,
    },
    Ping,
}

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Already trimmed.
    pub nick: String,
    /// Validated and without duplicates.
    pub rooms: Vec<String>,
    pub server_offset: Option<i64>,
    pub token: Option<String>,
}

/// The outcome of decoding one text frame: the request, or the error to send
/// back, and in both cases the `ref` an error must echo (section 8).
#[derive(Debug)]
pub struct Decoded {
    pub reference: Option<String>,
    pub frame: Result<ClientFrame, ClientError>,
}

/// Every field any client frame may carry. Unknown fields are ignored so that
/// newer clients keep working; each known field is type-checked by hand below
/// so the error names the field.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawFrame {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
    nick: Option<Value>,
    rooms: Option<Value>,
    server_offset: Option<Value>,
    token: Option<Value>,
    room: Option<Value>,
    text: Option<Value>,
    client_offset: Option<Value>,
    before: Option<Value>,
    limit: Option<Value>,
    active: Option<Value>,
}

/// Decode and validate one client text frame.
pub fn decode(text: &str, limits: &Limits) -> Decoded {
    // serde also fills a struct from a JSON array (fields by position); a
    // frame must be an object, so anything else is refused up front.
    if !text.trim_start().starts_with('{') {
        let message = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "a frame must be a JSON object with a string field `type`".to_string()
        } else {
            "frame is not valid JSON".to_string()
        };
        return Decoded {
            reference: None,
            frame: Err(ClientError::bad_request(message)),
        };
    }
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) if e.is_data() => {
            // An object serde would not map (a key given twice): still an
            // object, so the error echoes its `ref` (section 8).
            let reference = serde_json::from_str::<serde_json::Map<String, Value>>(text)
                .ok()
                .and_then(|map| echo_reference(map.get("ref"), map.get("clientOffset")));
            return Decoded {
                reference,
                frame: Err(ClientError::bad_request(format!("invalid frame ({e})"))),
            };
        }
        Err(e) => {
            return Decoded {
                reference: None,
                frame: Err(ClientError::bad_request(format!(
                    "frame is not valid JSON ({e})"
                ))),
            };
        }
    };
    let reference = echo_reference(raw.reference.as_ref(), raw.client_offset.as_ref());
    Decoded {
        reference,
        frame: validate(raw, limits),
    }
}

fn validate(mut raw: RawFrame, limits: &Limits) -> Result<ClientFrame, ClientError> {
    let kind = match raw.kind.take() {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(ClientError::bad_request("field `type` must be a string")),
        None => return Err(ClientError::bad_request("missing field `type`")),
    };
    match kind.as_str() {
        "hello" => {
            let nick = validate_nick(&required_string(raw.nick, "nick")?)?;
            let rooms = match raw.rooms {
                None | Some(Value::Null) => vec![DEFAULT_ROOM.to_string()],
                Some(Value::Array(items)) => {
                    if items.len() > MAX_ROOMS_PER_CONNECTION {
                        return Err(ClientError::new(
                            ErrorCode::TooManyRooms,
                            format!("at most {MAX_ROOMS_PER_CONNECTION} rooms per connection"),
                        ));
                    }
                    let mut rooms: Vec<String> = Vec::with_capacity(items.len());
                    for item in items {
                        let Value::String(room) = item else {
                            return Err(ClientError::bad_request(
                                "field `rooms` must be an array of strings",
                            ));
                        };
                        validate_room(&room)?;
                        if !rooms.contains(&room) {
                            rooms.push(room);
                        }
                    }
                    rooms
                }
                Some(_) => {
                    return Err(ClientError::bad_request(
                        "field `rooms` must be an array of strings",
                    ));
                }
            };
            Ok(ClientFrame::Hello(Hello {
                nick,
                rooms,
                server_offset: optional_id(raw.server_offset, "serverOffset")?,
                token: optional_string(raw.token, "token")?,
            }))
        }
        "send" => {
            let room = room_field(raw.room)?;
            let text = required_string(raw.text, "text")?;
            validate_text(&text, limits.max_text_chars)?;
            let client_offset = client_offset_field(raw.client_offset)?;
            Ok(ClientFrame::Send {
                room,
                text,
                client_offset,
            })
        }
        "join" => Ok(ClientFrame::Join {
            room: room_field(raw.room)?,
            server_offset: optional_id(raw.server_offset, "serverOffset")?,
        }),
        "leave" => Ok(ClientFrame::Leave {
            room: room_field(raw.room)?,
        }),
        "history" => {
            let room = room_field(raw.room)?;
            let before = optional_id(raw.before, "before")?;
            let limit = match raw.limit {
                None | Some(Value::Null) => DEFAULT_HISTORY_LIMIT,
                Some(value) => match value.as_i64() {
                    Some(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ClientError::bad_request(format!(
                            "`limit` must be an integer from 1 to {MAX_HISTORY_LIMIT}"
                        )));
                    }
                },
            };
            let reference = match raw.reference {
                Some(Value::String(r)) => Some(r),
                _ => None,
            };
            Ok(ClientFrame::History {
                room,
                before,
                limit,
                reference,
            })
        }
        "typing" => {
            let room = room_field(raw.room)?;
            let active = match raw.active {
                Some(Value::Bool(active)) => active,
                Some(_) => {
                    return Err(ClientError::bad_request("field `active` must be a boolean"));
                }
                None => return Err(ClientError::bad_request("missing field `active`")),
            };
            Ok(ClientFrame::Typing { room, active })
        }
        "draft" => {
            let room = room_field(raw.room)?;
            let text = required_string(raw.text, "text")?;
            // A draft may be empty (that clears it) or only white space.
            if text.chars().nth(limits.max_text_chars).is_some() {
                return Err(ClientError::new(
                    ErrorCode::TooLong,
                    format!("a draft is at most {} characters", limits.max_text_chars),
                ));
            }
            Ok(ClientFrame::Draft { room, text })
        }
        "ping" => Ok(ClientFrame::Ping),
        other => Err(ClientError::bad_request(format!(
            "unknown frame type `{}`",
            truncate(other, 40)
        ))),
    }
}

/// The optional idempotency key of a send or post: 1-64 characters.
pub fn client_offset_field(value: Option<Value>) -> Result<Option<String>, ClientError> {
    let client_offset = optional_string(value, "clientOffset")?;
    if let Some(offset) = &client_offset {
        let chars = offset.chars().count();
        if chars == 0 || chars > MAX_CLIENT_OFFSET_CHARS {
            return Err(ClientError::bad_request(format!(
                "`clientOffset` must be 1-{MAX_CLIENT_OFFSET_CHARS} characters"
            )));
        }
    }
    Ok(client_offset)
}

/// What an error echoes (section 8): the string `ref`, else the string `clientOffset`.
fn echo_reference(reference: Option<&Value>, client_offset: Option<&Value>) -> Option<String> {
    match (reference, client_offset) {
        (Some(Value::String(r)), _) => Some(r.clone()),
        (_, Some(Value::String(c))) => Some(c.clone()),
        _ => None,
    }
}

pub fn required_string(value: Option<Value>, field: &str) -> Result<String, ClientError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ClientError::bad_request(format!(
            "field `{field}` must be a string"
        ))),
        None => Err(ClientError::bad_request(format!("missing field `{field}`"))),
    }
}

pub fn optional_string(value: Option<Value>, field: &str) -> Result<Option<String>, ClientError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ClientError::bad_request(format!(
            "field `{field}` must be a string"
        ))),
    }
}

/// A message id from the client: a non-negative integer, or absent.
fn optional_id(value: Option<Value>, field: &str) -> Result<Option<i64>, ClientError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ClientError::bad_request(format!(
                "field `{field}` must be a non-negative integer"
            ))),
        },
    }
}

fn room_field(value: Option<Value>) -> Result<String, ClientError> {
    let room = required_string(value, "room")?;
    validate_room(&room)?;
    Ok(room)
}

/// A nick is 1-32 characters after trimming, none of them a control character.
/// Returns the trimmed nick, which is what the server uses from then on.
pub fn validate_nick(nick: &str) -> Result<String, ClientError> {
    let trimmed = nick.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > MAX_NICK_CHARS {
        return Err(ClientError::new(
            ErrorCode::InvalidNick,
            format!("a nick is 1-{MAX_NICK_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ClientError::new(
            ErrorCode::InvalidNick,
            "a nick may not contain control characters",
        ));
    }
    Ok(trimmed.to_string())
}

/// `^[a-z0-9][a-z0-9_-]{0,63}$`, checked without a regex engine.
pub fn validate_room(room: &str) -> Result<(), ClientError> {
    let bytes = room.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_ROOM_CHARS
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ClientError::new(
            ErrorCode::InvalidRoom,
            format!(
                "room `{}` is not valid: use 1-64 of a-z, 0-9, _ and -, starting with a letter or digit",
                truncate(room, 70)
            ),
        ))
    }
}

/// Text is 1..=max characters and not only white space.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), ClientError> {
    if text.chars().all(char::is_whitespace) {
        return Err(ClientError::new(
            ErrorCode::Empty,
            "a message needs some text",
        ));
    }
    // Counting stops early so a huge text costs no more than the limit.
    if text.chars().nth(max_chars).is_some() {
        return Err(ClientError::new(
            ErrorCode::TooLong,
            format!("a message is at most {max_chars} characters"),
        ));
    }
    Ok(())
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A stored chat message, as it leaves the store and goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: i64,
    pub room: String,
    pub nick: String,
    pub text: String,
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_offset: Option<String>,
}

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

pub fn welcome_frame(
    session_id: &str,
    nick: &str,
    server_offset: i64,
    limits: &WireLimits,
) -> String {
    json!({
        "type": "welcome",
        "sessionId": session_id,
        "nick": nick,
        "serverOffset": server_offset,
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
