//! The wire format (docs/protocol.md): client frames parsed and validated into typed requests, server frames serialized. No I/O.
//!
//! # Layout
//! - `client`: decoding and validating what clients send.
//! - `server`: every frame the server sends, built in one place.
//! - this file: the protocol's constants and the message type both share.
//!
//! Validation lives here, not in the connection handler, so the HTTP API and
//! the fuzz targets check input with exactly the same rules.

mod client;
mod server;

use serde::Serialize;

pub use client::*;
pub use server::*;

/// The newest protocol version this server speaks (`hello.version`).
pub const LATEST_VERSION: u8 = 2;

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
