//! The path of every message, from a WebSocket `send` or an HTTP post: into the store, and the sender's draft cleared once the message is stored.

use crate::Shared;
use crate::protocol;
use crate::store::{AfterCommit, NewMessage, Pending, StoreError, now_ms};

/// Queue a validated message for the store, which assigns its id, commits,
/// publishes it to the room, and answers on the returned receiver.
///
/// The sender's draft in the room is cleared only once the message is newly
/// stored, after the commit (a duplicate retry or a failed write leaves it
/// as it was), and only if nothing was typed into it since this send: then
/// the sender's other tabs (all but `origin`, the connection that sent) are
/// told it is empty.
pub async fn submit(
    app: &Shared,
    room: String,
    nick: String,
    text: String,
    client_offset: Option<String>,
    origin: Option<u64>,
) -> Result<Pending, StoreError> {
    let draft = app.drafts.version(&nick, &room);
    let after_commit = draft.map(|version| {
        let drafts = app.drafts.clone();
        let hub = app.hub.clone();
        let (nick, room) = (nick.clone(), room.clone());
        Box::new(move || {
            if drafts.sent(&nick, &room, version) {
                let frame = protocol::draft_frame(&room, "", now_ms());
                hub.to_other_tabs(&room, &nick, origin.unwrap_or(0), frame.into());
            }
        }) as AfterCommit
    });
    app.store
        .append(NewMessage {
            room,
            nick,
            text,
            client_offset,
            clear_draft: draft.is_some(),
            after_commit,
        })
        .await
}
