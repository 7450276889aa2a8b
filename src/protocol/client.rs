//! Client frames: decoding one text frame into a validated request, or the error to answer with.

use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::error::{ClientError, ErrorCode};

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
    /// The protocol version the client speaks: 1 unless it said more, and
    /// never more than `LATEST_VERSION`.
    pub version: u8,
}

/// The outcome of decoding one text frame: the request, or the error to send
/// back, and in both cases the `ref` an error must echo (section 8).
#[derive(Debug)]
pub struct Decoded {
    pub reference: Option<String>,
    pub frame: Result<ClientFrame, ClientError>,
    /// The frame was a JSON object with `"type":"hello"`, valid or not: the
    /// handshake lets a client correct such a frame, and closes on any other.
    pub hello: bool,
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
    version: Option<Value>,
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
            hello: false,
        };
    }
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) if e.is_data() => {
            // An object serde would not map (a key given twice): still an
            // object, so the error echoes its `ref` (section 8).
            let map = serde_json::from_str::<serde_json::Map<String, Value>>(text).ok();
            let reference = map
                .as_ref()
                .and_then(|map| echo_reference(map.get("ref"), map.get("clientOffset")));
            let hello = map.is_some_and(|map| map.get("type") == Some(&Value::from("hello")));
            return Decoded {
                reference,
                frame: Err(ClientError::bad_request(format!("invalid frame ({e})"))),
                hello,
            };
        }
        Err(e) => {
            return Decoded {
                reference: None,
                frame: Err(ClientError::bad_request(format!(
                    "frame is not valid JSON ({e})"
                ))),
                hello: false,
            };
        }
    };
    let reference = echo_reference(raw.reference.as_ref(), raw.client_offset.as_ref());
    let hello = matches!(&raw.kind, Some(Value::String(kind)) if kind == "hello");
    Decoded {
        reference,
        frame: validate(raw, limits),
        hello,
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
                version: version_field(raw.version)?,
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

/// `hello.version`: a positive integer, or absent (version 1). A client
/// newer than this server is served the newest version it speaks.
fn version_field(value: Option<Value>) -> Result<u8, ClientError> {
    match value {
        None | Some(Value::Null) => Ok(1),
        Some(value) => match value.as_u64() {
            Some(v) if v >= 1 => Ok(v.min(u64::from(LATEST_VERSION)) as u8),
            _ => Err(ClientError::bad_request(
                "field `version` must be a positive integer",
            )),
        },
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
