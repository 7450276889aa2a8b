//! The fuzz target's seeds and findings, replayed through `protocol::decode` with the same invariants in plain `cargo test`.
//!
//! CI does not run the fuzzer (`fuzz/`, nightly flags); this keeps what it
//! checks, for every file in `fuzz/seeds/` (a name starting `ok-` must decode,
//! `err-` must not), and for the inputs it found that once broke an invariant.

use std::fmt;

use natter::error::ClientError;
use natter::protocol::{self, ClientFrame, Decoded, Limits};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds");

const LIMITS: [usize; 3] = [1, 7, 4000];

/// Codes `decode` itself may return (section 8 minus the connection's own).
const DECODE_CODES: [&str; 6] = [
    "bad_request",
    "invalid_nick",
    "invalid_room",
    "too_long",
    "empty",
    "too_many_rooms",
];

const KNOWN_FIELDS: [&str; 12] = [
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

#[test]
fn every_fuzz_seed_decodes_within_the_protocol_rules() {
    let mut seeds: Vec<_> = std::fs::read_dir(SEEDS)
        .expect("fuzz/seeds")
        .map(|entry| entry.expect("seed").path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "fuzz/seeds is missing or nearly empty");
    for path in seeds {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read seed")).into_owned();
        let decoded = check_decode(&text);
        if name.starts_with("ok-") {
            assert!(decoded.frame.is_ok(), "{name}: {:?}", decoded.frame);
        } else if name.starts_with("err-") {
            assert!(decoded.frame.is_err(), "{name}: {:?}", decoded.frame);
        }
    }
}

#[test]
fn boundary_inputs_and_fuzzer_findings_keep_the_invariants() {
    for (input, accepted) in boundary_inputs() {
        let decoded = check_decode(&String::from_utf8_lossy(&input));
        assert_eq!(
            decoded.frame.is_ok(),
            accepted,
            "{}: {:?}",
            String::from_utf8_lossy(&input),
            decoded.frame
        );
    }
    for input in FOUND {
        check_decode(&String::from_utf8_lossy(input));
    }
}

/// Inputs `cargo fuzz run decode` found that broke an invariant: none in
/// about 2,200 s (1.83 million runs) so far. Add each new one here, minimised.
const FOUND: &[&[u8]] = &[];

/// Each limit at and past its edge, and inputs that sit between JSON parsers:
/// (input, accepted under the default limit of 4000).
fn boundary_inputs() -> Vec<(Vec<u8>, bool)> {
    let send = |text: &str, offset: &str| {
        serde_json::json!({"type":"send","room":"general","text":text,"clientOffset":offset})
            .to_string()
    };
    let hello = |nick: &str, rooms: Vec<&str>| {
        serde_json::json!({"type":"hello","nick":nick,"rooms":rooms}).to_string()
    };
    let history = |limit: &str| format!(r#"{{"type":"history","room":"general","limit":{limit}}}"#);
    let join =
        |offset: &str| format!(r#"{{"type":"join","room":"general","serverOffset":{offset}}}"#);
    let cases: Vec<(String, bool)> = vec![
        (send(&"é".repeat(4000), "o"), true),
        (send(&"é".repeat(4001), "o"), false),
        (send("x", &"é".repeat(64)), true),
        (send("x", &"é".repeat(65)), false),
        (send("\u{3000}\u{85}\t", "o"), false),
        (send("\u{200b}", "o"), true), // zero width space is not White_Space
        (hello(&format!("  {}\n", "ö".repeat(32)), vec![]), true),
        (hello(&"ö".repeat(33), vec![]), false),
        (hello("a\u{9f}b", vec![]), false), // C1 control
        (hello("alice", vec!["general"; 50]), true),
        (hello("alice", vec!["general"; 51]), false),
        (hello("alice", vec![&"a".repeat(64)]), true),
        (hello("alice", vec![&"a".repeat(65)]), false),
        (hello("alice", vec!["-a"]), false),
        (history("200"), true),
        (history("201"), false),
        (history("0"), false),
        (history("50.0"), false),
        (history("\"50\""), false),
        (join("9223372036854775807"), true),
        (join("9223372036854775808"), false),
        (join("0"), true),
        (join("-1"), false),
        (join("1e2"), false),
        (r#"{"type":"ping","x":1e400,"ref":"big"}"#.to_string(), true),
        (
            r#"{"type":"send","room":"general","text":"\ud800","ref":"s"}"#.to_string(),
            false,
        ),
        ("\u{feff}{\"type\":\"ping\"}".to_string(), false),
        ("\u{2003}{\"type\":\"ping\"}".to_string(), false),
        (" \r\n\t{\"type\":\"ping\"} \n".to_string(), true),
        (r#"{"type":"ping"}{"type":"ping"}"#.to_string(), false),
    ];
    let mut inputs: Vec<(Vec<u8>, bool)> = cases
        .into_iter()
        .map(|(text, accepted)| (text.into_bytes(), accepted))
        .collect();
    // Not UTF-8 (the fuzz target replaces invalid sequences, as here).
    inputs.push((b"{\"type\":\"ping\",\"ref\":\"\xff\"}".to_vec(), true));
    inputs
}

/// Decode `text` under several limits and check every invariant of the fuzz
/// target; returns the result under the default (largest) limit.
fn check_decode(text: &str) -> Decoded {
    let members = serde_json::from_str::<Members>(text).ok();
    let mut results: Vec<Decoded> = LIMITS
        .iter()
        .map(|&max| {
            let limits = Limits {
                max_text_chars: max,
            };
            protocol::decode(text, &limits)
        })
        .collect();
    for (decoded, max) in results.iter().zip(LIMITS) {
        check_reference(text, members.as_ref(), decoded.reference.as_deref());
        match &decoded.frame {
            Ok(frame) => check_frame(text, frame, max),
            Err(error) => {
                let code = error.code.as_str();
                assert!(DECODE_CODES.contains(&code), "code {code} for {text:?}");
                let chars = error.message.chars().count();
                assert!(
                    (1..=300).contains(&chars),
                    "message of {chars} chars: {text:?}"
                );
                check_error_frame(error, decoded.reference.as_deref());
                check_error_frame(error, Some(text));
            }
        }
    }
    // A larger limit accepts whatever a smaller one did, unchanged.
    for pair in results.windows(2) {
        assert_eq!(pair[0].reference, pair[1].reference, "{text:?}");
        if let Ok(frame) = &pair[0].frame {
            assert_eq!(Ok(frame), pair[1].frame.as_ref(), "{text:?}");
        }
    }
    results.pop().expect("decoded")
}

/// The known top-level members of a JSON object, duplicates kept.
struct Members(Vec<(String, Value)>);

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
                    if KNOWN_FIELDS.contains(&key.as_str()) {
                        members.push((key, map.next_value()?));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Section 8: the string `ref`, else the string `clientOffset`, of a frame that
/// is a JSON object; nothing for anything else. With a known key repeated,
/// whatever is echoed must at least be one of the input's strings.
fn check_reference(text: &str, members: Option<&Members>, reference: Option<&str>) {
    let Some(Members(members)) = members else {
        assert_eq!(
            reference, None,
            "ref from a frame that is no JSON object: {text:?}"
        );
        return;
    };
    let string_of = |key: &str| {
        members
            .iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let repeated = KNOWN_FIELDS
        .iter()
        .any(|k| members.iter().filter(|(key, _)| key == k).count() > 1);
    if repeated {
        if let Some(reference) = reference {
            let mut candidates = string_of("ref");
            candidates.extend(string_of("clientOffset"));
            assert!(
                candidates.contains(&reference),
                "ref {reference:?} not in {text:?}"
            );
        }
    } else {
        let expected = string_of("ref")
            .first()
            .or(string_of("clientOffset").first())
            .copied();
        assert_eq!(reference, expected, "wrong ref for {text:?}");
    }
}

fn room_ok(room: &str) -> bool {
    let mut chars = room.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && room.chars().count() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A decoded frame satisfies the rules of sections 2-5 again.
fn check_frame(text: &str, frame: &ClientFrame, max: usize) {
    let room = |room: &str| assert!(room_ok(room), "room {room:?} accepted: {text:?}");
    match frame {
        ClientFrame::Hello(hello) => {
            let nick = &hello.nick;
            assert_eq!(nick, nick.trim(), "untrimmed nick: {text:?}");
            assert!((1..=32).contains(&nick.chars().count()), "{text:?}");
            assert!(!nick.chars().any(char::is_control), "{text:?}");
            assert!(hello.rooms.len() <= 50, "{text:?}");
            for (i, r) in hello.rooms.iter().enumerate() {
                room(r);
                assert!(!hello.rooms[..i].contains(r), "duplicate room: {text:?}");
            }
            assert!(hello.server_offset.is_none_or(|o| o >= 0), "{text:?}");
        }
        ClientFrame::Send {
            room: r,
            text: body,
            client_offset,
        } => {
            room(r);
            assert!(!body.chars().all(char::is_whitespace), "{text:?}");
            assert!(body.chars().count() <= max, "{text:?}");
            if let Some(offset) = client_offset {
                assert!((1..=64).contains(&offset.chars().count()), "{text:?}");
            }
        }
        ClientFrame::Join {
            room: r,
            server_offset,
        } => {
            room(r);
            assert!(server_offset.is_none_or(|o| o >= 0), "{text:?}");
        }
        ClientFrame::Leave { room: r } | ClientFrame::Typing { room: r, .. } => room(r),
        ClientFrame::History {
            room: r,
            before,
            limit,
            ..
        } => {
            room(r);
            assert!(before.is_none_or(|b| b >= 0), "{text:?}");
            assert!((1..=200).contains(limit), "{text:?}");
        }
        ClientFrame::Draft {
            room: r,
            text: body,
        } => {
            room(r);
            assert!(body.chars().count() <= max, "{text:?}");
        }
        ClientFrame::Ping => {}
    }
}

/// An error frame is a JSON object with exactly `type`, `code`, `message`, and `ref` if given.
fn check_error_frame(error: &ClientError, reference: Option<&str>) {
    let frame = protocol::error_frame(error, reference);
    let value: Value = serde_json::from_str(&frame).expect("error frame is JSON");
    let mut expected = serde_json::json!({
        "type": "error",
        "code": error.code.as_str(),
        "message": error.message,
    });
    if let Some(reference) = reference {
        expected["ref"] = reference.into();
    }
    assert_eq!(value, expected);
}
