//! Fuzz target: `natter::protocol::decode` (the client frame decoder and all of its
//! validation) and `protocol::error_frame`, checked against the protocol's rules.
//!
//! For every input (bytes taken as UTF-8, invalid sequences replaced) and each of a
//! few `max_text_chars` limits:
//! - `decode` never panics;
//! - a decoded frame re-validates: rooms match `^[a-z0-9][a-z0-9_-]{0,63}$`, a nick
//!   is trimmed, 1-32 characters, no control character; a `send` text is
//!   1..=max characters and not only white space; a draft at most max; history
//!   `limit` in 1..=200; offsets non-negative; a `clientOffset` 1-64 characters;
//!   `hello.rooms` at most 50 and without duplicates;
//! - a decoded frame carries exactly the input's values (same room, text, ...);
//! - decode accepts a frame if and only if an independent model of the rules
//!   (sections 2-5 of PROTOCOL.md) does;
//! - an error's code is one of the protocol codes a decoder may produce, and its
//!   message is short (it never echoes unbounded input);
//! - the returned `ref` is the input's string `ref`, or failing that its string
//!   `clientOffset`, whenever the frame is a JSON object; never anything else;
//! - the limit only matters to `send` and `draft`, and a frame accepted under a
//!   small limit is accepted, unchanged, under a larger one;
//! - `error_frame` yields a JSON object with exactly `type`, `code`, `message`
//!   and (when given) `ref`, holding those values.
//!
//! Seeds are in `fuzz/seeds/` (committed; the corpus is not). To run:
//!
//! ```text
//! cd fuzz && mkdir -p corpus/decode && cp seeds/* corpus/decode/
//! RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=600
//! ```
//!
//! `tests/it/fuzz_regressions.rs` replays the seeds and every input this target
//! ever found through the same checks in plain `cargo test`.

#![no_main]

use std::collections::HashMap;
use std::fmt;

use libfuzzer_sys::fuzz_target;
use natter::error::ClientError;
use natter::protocol::{self, ClientFrame, Decoded, Limits};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// Limits tried on every input: the smallest, a small one, the default.
const LIMITS: [usize; 3] = [1, 7, 4000];

/// The fields the decoder knows; all others are ignored.
const KNOWN: [&str; 12] = [
    "type",
    "ref",
    "nick",
    "rooms",
    "serverOffset",
    "token",
    "room",
    "text",
    "clientOffset",
    "before",
    "limit",
    "active",
];

/// The codes `decode` may produce; the others (`not_joined`, `rate_limited`,
/// `unauthorized`, `unsupported`, `internal`) belong to the connection.
const DECODE_CODES: [&str; 6] = [
    "bad_request",
    "invalid_nick",
    "invalid_room",
    "too_long",
    "empty",
    "too_many_rooms",
];

/// Every code of section 8.
const ALL_CODES: [&str; 11] = [
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

/// An error message tells what is wrong; it quotes at most a short piece of input.
const MAX_ERROR_MESSAGE_CHARS: usize = 300;

fuzz_target!(|data: &[u8]| {
    check(&String::from_utf8_lossy(data));
});

/// The members of a top-level JSON object in input order, duplicates kept; the
/// known fields' values parsed as `Value`, the others skipped the way the
/// decoder skips them (so both parsers accept the same texts).
struct Members(Vec<(String, Option<Value>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if KNOWN.contains(&key.as_str()) {
                        let value = map.next_value::<Value>()?;
                        members.push((key, Some(value)));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        members.push((key, None));
                    }
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Known fields of a frame without duplicate known keys; `null` counts as absent.
type Fields = HashMap<String, Value>;

fn check(text: &str) {
    let members = serde_json::from_str::<Members>(text).ok();
    let duplicated = members.as_ref().is_some_and(|m| {
        KNOWN
            .iter()
            .any(|k| m.0.iter().filter(|(key, _)| key == k).count() > 1)
    });
    let fields: Option<Fields> = match &members {
        Some(m) if !duplicated => Some(
            m.0.iter()
                .filter_map(|(k, v)| match v {
                    Some(Value::Null) | None => None,
                    Some(v) => Some((k.clone(), v.clone())),
                })
                .collect(),
        ),
        _ => None,
    };

    let decoded: Vec<(usize, Decoded)> = LIMITS
        .iter()
        .map(|&max| {
            let limits = Limits {
                max_text_chars: max,
            };
            (max, protocol::decode(text, &limits))
        })
        .collect();

    for (max, d) in &decoded {
        check_reference(
            text,
            members.as_ref(),
            fields.as_ref(),
            d.reference.as_deref(),
        );
        match &d.frame {
            Ok(frame) => {
                check_frame(text, frame, *max, d.reference.as_deref());
                if let Some(fields) = &fields {
                    check_frame_matches_input(text, frame, fields);
                }
            }
            Err(error) => {
                check_error(text, error);
                check_error_frame(error, d.reference.as_deref());
                // Any string at all must survive as a `ref`.
                check_error_frame(error, Some(text));
            }
        }
        if let Some(fields) = &fields {
            assert_eq!(
                model_accepts(fields, *max),
                d.frame.is_ok(),
                "decode and the model disagree (max {max}) on {text:?}: {:?}",
                d.frame
            );
        }
    }

    // The limit changes nothing but `send` and `draft` text checks.
    let (_, first) = &decoded[0];
    for pair in decoded.windows(2) {
        let ((small, a), (large, b)) = (&pair[0], &pair[1]);
        assert_eq!(
            a.reference, b.reference,
            "ref depends on the limit: {text:?}"
        );
        if let Ok(frame) = &a.frame {
            assert_eq!(
                Ok(frame),
                b.frame.as_ref(),
                "accepted under limit {small} but not the same under {large}: {text:?}"
            );
        }
    }
    let length_checked = matches!(
        fields
            .as_ref()
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str),
        Some("send" | "draft")
    );
    if !length_checked && fields.is_some() {
        for (max, d) in &decoded[1..] {
            assert_eq!(
                first.frame, d.frame,
                "limit {max} changed a frame that has no text: {text:?}"
            );
        }
    }
}

/// `ref`: the string `ref`, else the string `clientOffset`, of a JSON object.
fn check_reference(
    text: &str,
    members: Option<&Members>,
    fields: Option<&Fields>,
    reference: Option<&str>,
) {
    let Some(members) = members else {
        assert_eq!(
            reference, None,
            "a ref from a frame that is no JSON object: {text:?}"
        );
        return;
    };
    match fields {
        Some(fields) => {
            let expected = match (fields.get("ref"), fields.get("clientOffset")) {
                (Some(Value::String(r)), _) => Some(r.as_str()),
                (_, Some(Value::String(c))) => Some(c.as_str()),
                _ => None,
            };
            assert_eq!(reference, expected, "wrong ref for {text:?}");
        }
        None => {
            // Duplicate keys: whatever is echoed must be one of the input's strings.
            if let Some(reference) = reference {
                let found = members.0.iter().any(|(k, v)| {
                    (k == "ref" || k == "clientOffset")
                        && matches!(v, Some(Value::String(s)) if s == reference)
                });
                assert!(found, "ref {reference:?} is not in the input {text:?}");
            }
        }
    }
}

fn room_ok(room: &str) -> bool {
    let chars: Vec<char> = room.chars().collect();
    let lower_or_digit = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=64).contains(&chars.len())
        && lower_or_digit(chars[0])
        && chars[1..]
            .iter()
            .all(|&c| lower_or_digit(c) || c == '_' || c == '-')
}

fn nick_ok(nick: &str) -> bool {
    (1..=32).contains(&nick.chars().count()) && !nick.chars().any(char::is_control)
}

fn send_text_ok(text: &str, max: usize) -> bool {
    !text.chars().all(char::is_whitespace) && text.chars().count() <= max
}

fn client_offset_ok(offset: &str) -> bool {
    (1..=64).contains(&offset.chars().count())
}

/// Every decoded frame satisfies the rules again, checked independently.
fn check_frame(text: &str, frame: &ClientFrame, max: usize, reference: Option<&str>) {
    let room_of = |room: &str| assert!(room_ok(room), "bad room {room:?} accepted from {text:?}");
    match frame {
        ClientFrame::Hello(hello) => {
            assert_eq!(hello.nick, hello.nick.trim(), "nick not trimmed: {text:?}");
            assert!(nick_ok(&hello.nick), "bad nick accepted: {text:?}");
            assert!(hello.rooms.len() <= 50, "too many rooms accepted: {text:?}");
            for (i, room) in hello.rooms.iter().enumerate() {
                room_of(room);
                assert!(!hello.rooms[..i].contains(room), "duplicate room: {text:?}");
            }
            assert!(hello.server_offset.is_none_or(|o| o >= 0), "{text:?}");
        }
        ClientFrame::Send {
            room,
            text: body,
            client_offset,
        } => {
            room_of(room);
            assert!(
                send_text_ok(body, max),
                "bad text accepted (max {max}): {text:?}"
            );
            if let Some(offset) = client_offset {
                assert!(
                    client_offset_ok(offset),
                    "bad clientOffset accepted: {text:?}"
                );
            }
        }
        ClientFrame::Join {
            room,
            server_offset,
        } => {
            room_of(room);
            assert!(server_offset.is_none_or(|o| o >= 0), "{text:?}");
        }
        ClientFrame::Leave { room } | ClientFrame::Typing { room, .. } => room_of(room),
        ClientFrame::History {
            room,
            before,
            limit,
            reference: history_ref,
        } => {
            room_of(room);
            assert!(before.is_none_or(|b| b >= 0), "{text:?}");
            assert!((1..=200).contains(limit), "bad limit accepted: {text:?}");
            if let Some(history_ref) = history_ref {
                assert_eq!(Some(history_ref.as_str()), reference, "{text:?}");
            }
        }
        ClientFrame::Draft { room, text: body } => {
            room_of(room);
            assert!(body.chars().count() <= max, "long draft accepted: {text:?}");
        }
        ClientFrame::Ping => {}
    }
}

fn string_field<'a>(fields: &'a Fields, key: &str) -> Option<&'a str> {
    fields.get(key).and_then(Value::as_str)
}

fn id_field(fields: &Fields, key: &str) -> Option<i64> {
    fields.get(key).and_then(Value::as_i64)
}

/// A decoded frame holds what the input said, nothing else.
fn check_frame_matches_input(text: &str, frame: &ClientFrame, fields: &Fields) {
    let kind = string_field(fields, "type");
    let room = string_field(fields, "room");
    match frame {
        ClientFrame::Hello(hello) => {
            assert_eq!(kind, Some("hello"), "{text:?}");
            assert_eq!(
                Some(hello.nick.as_str()),
                string_field(fields, "nick").map(str::trim),
                "{text:?}"
            );
            let mut rooms: Vec<String> = Vec::new();
            match fields.get("rooms") {
                None => rooms.push("general".into()),
                Some(Value::Array(items)) => {
                    for item in items {
                        let room = item.as_str().unwrap_or_default().to_string();
                        if !rooms.contains(&room) {
                            rooms.push(room);
                        }
                    }
                }
                Some(other) => panic!("rooms {other} accepted from {text:?}"),
            }
            assert_eq!(hello.rooms, rooms, "{text:?}");
            assert_eq!(
                hello.server_offset,
                id_field(fields, "serverOffset"),
                "{text:?}"
            );
            assert_eq!(
                hello.token.as_deref(),
                string_field(fields, "token"),
                "{text:?}"
            );
        }
        ClientFrame::Send {
            room: r,
            text: body,
            client_offset,
        } => {
            assert_eq!(kind, Some("send"), "{text:?}");
            assert_eq!(Some(r.as_str()), room, "{text:?}");
            assert_eq!(
                Some(body.as_str()),
                string_field(fields, "text"),
                "{text:?}"
            );
            assert_eq!(
                client_offset.as_deref(),
                string_field(fields, "clientOffset"),
                "{text:?}"
            );
        }
        ClientFrame::Join {
            room: r,
            server_offset,
        } => {
            assert_eq!(kind, Some("join"), "{text:?}");
            assert_eq!(Some(r.as_str()), room, "{text:?}");
            assert_eq!(*server_offset, id_field(fields, "serverOffset"), "{text:?}");
        }
        ClientFrame::Leave { room: r } => {
            assert_eq!(kind, Some("leave"), "{text:?}");
            assert_eq!(Some(r.as_str()), room, "{text:?}");
        }
        ClientFrame::History {
            room: r,
            before,
            limit,
            reference,
        } => {
            assert_eq!(kind, Some("history"), "{text:?}");
            assert_eq!(Some(r.as_str()), room, "{text:?}");
            assert_eq!(*before, id_field(fields, "before"), "{text:?}");
            assert_eq!(*limit, id_field(fields, "limit").unwrap_or(50), "{text:?}");
            assert_eq!(
                reference.as_deref(),
                string_field(fields, "ref"),
                "{text:?}"
            );
        }
        ClientFrame::Typing { room: r, active } => {
            assert_eq!(kind, Some("typing"), "{text:?}");
            assert_eq!(Some(r.as_str()), room, "{text:?}");
            assert_eq!(
                fields.get("active"),
                Some(&Value::Bool(*active)),
                "{text:?}"
            );
        }
        ClientFrame::Draft {
            room: r,
            text: body,
        } => {
            assert_eq!(kind, Some("draft"), "{text:?}");
            assert_eq!(Some(r.as_str()), room, "{text:?}");
            assert_eq!(
                Some(body.as_str()),
                string_field(fields, "text"),
                "{text:?}"
            );
        }
        ClientFrame::Ping => assert_eq!(kind, Some("ping"), "{text:?}"),
    }
}

/// The rules of sections 2-5, written from the spec: does a frame with these
/// (unique) fields pass validation?
fn model_accepts(fields: &Fields, max: usize) -> bool {
    let room = || matches!(fields.get("room"), Some(Value::String(r)) if room_ok(r));
    let id = |key: &str| match fields.get(key) {
        None => true,
        Some(v) => v.as_i64().is_some_and(|n| n >= 0),
    };
    let optional_string = |key: &str| matches!(fields.get(key), None | Some(Value::String(_)));
    let Some(Value::String(kind)) = fields.get("type") else {
        return false;
    };
    match kind.as_str() {
        "hello" => {
            let nick = matches!(fields.get("nick"), Some(Value::String(n)) if nick_ok(n.trim()));
            let rooms = match fields.get("rooms") {
                None => true,
                Some(Value::Array(items)) => {
                    items.len() <= 50
                        && items
                            .iter()
                            .all(|i| matches!(i, Value::String(r) if room_ok(r)))
                }
                Some(_) => false,
            };
            nick && rooms && id("serverOffset") && optional_string("token")
        }
        "send" => {
            let body = matches!(fields.get("text"), Some(Value::String(t)) if send_text_ok(t, max));
            let offset = match fields.get("clientOffset") {
                None => true,
                Some(Value::String(o)) => client_offset_ok(o),
                Some(_) => false,
            };
            room() && body && offset
        }
        "join" => room() && id("serverOffset"),
        "leave" => room(),
        "history" => {
            let limit = match fields.get("limit") {
                None => true,
                Some(v) => v.as_i64().is_some_and(|n| (1..=200).contains(&n)),
            };
            room() && id("before") && limit
        }
        "typing" => room() && matches!(fields.get("active"), Some(Value::Bool(_))),
        "draft" => {
            room()
                && matches!(fields.get("text"), Some(Value::String(t)) if t.chars().count() <= max)
        }
        "ping" => true,
        _ => false,
    }
}

fn check_error(text: &str, error: &ClientError) {
    let code = error.code.as_str();
    assert!(
        DECODE_CODES.contains(&code),
        "decode produced code {code}: {text:?}"
    );
    let chars = error.message.chars().count();
    assert!(
        (1..=MAX_ERROR_MESSAGE_CHARS).contains(&chars),
        "error message of {chars} characters for {text:?}: {:?}",
        error.message
    );
}

/// `error_frame` is one JSON object with exactly the right members.
fn check_error_frame(error: &ClientError, reference: Option<&str>) {
    let frame = protocol::error_frame(error, reference);
    let value: Value = serde_json::from_str(&frame).expect("error_frame is JSON");
    let object = value.as_object().expect("error_frame is an object");
    assert_eq!(object.get("type"), Some(&Value::from("error")), "{frame}");
    let code = object.get("code").and_then(Value::as_str).expect("code");
    assert!(ALL_CODES.contains(&code), "{frame}");
    assert_eq!(code, error.code.as_str(), "{frame}");
    assert_eq!(
        object.get("message").and_then(Value::as_str),
        Some(error.message.as_str()),
        "{frame}"
    );
    assert_eq!(
        object.get("ref").and_then(Value::as_str),
        reference,
        "{frame}"
    );
    let expected_len = 3 + usize::from(reference.is_some());
    assert_eq!(object.len(), expected_len, "extra members: {frame}");
}
