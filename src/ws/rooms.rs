//! A connection's rooms: joining (subscribe, replay, presence, draft) without gaps or duplicates, and leaving.

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::SinkExt;
use tokio_stream::wrappers::BroadcastStream;
use tungstenite::{Message, Utf8Bytes};

use super::Connection;
use super::socket::{CLOSE_INTERNAL, End, feed, send_text, timed};
use crate::presence::{self, Change, PresenceView, Snapshot};
use crate::protocol::{self, ChatMessage};
use crate::store::StoreError;

/// Rows read per query while replaying: bounds memory per connection no
/// matter how long the client was away.
const REPLAY_PAGE: i64 = 500;

/// This connection's state in one room.
pub struct RoomState {
    /// Every message of this room up to this id has been written to the
    /// socket (or predates what the client asked for). Live messages at or
    /// below it are skipped.
    pub(super) last_id: i64,
    /// Presence diffs below this `seq` predate the `presence` this connection
    /// was sent and are skipped.
    min_seq: u64,
    /// Until the first diff after a `presence` snapshot arrives: what the
    /// snapshot said, so that diff is computed from the connection's view.
    view: Option<PresenceView>,
    /// The last typing state relayed for this connection, and when.
    pub typing: Option<(bool, Instant)>,
}

impl Connection {
    /// `joined`, replay, `presence`, `draft`. Subscribes before reading the
    /// store, so nothing committed meanwhile is missed.
    ///
    /// During the handshake each room is replayed in turn (the client stores
    /// its offset only at `synced`). A `join` later, while other rooms are
    /// live, is `merged`: its replay is interleaved by id with what the other
    /// rooms have pending, so the connection's one id order holds (see `live`).
    pub(super) async fn join(
        &mut self,
        room: &str,
        server_offset: Option<i64>,
        merged: bool,
    ) -> Result<(), End> {
        let presence = if self.rooms.contains_key(room) {
            // Joining again: a new replay, a fresh presence snapshot.
            self.app.hub.presence(room)
        } else {
            let joined = self.app.hub.join(room, &self.nick, &self.handle);
            self.live
                .insert(room.into(), BroadcastStream::new(joined.receiver));
            self.rooms.insert(
                room.to_string(),
                RoomState {
                    last_id: 0,
                    min_seq: 0,
                    view: None,
                    typing: None,
                },
            );
            Some(joined.presence)
        };
        send_text(&mut self.socket, protocol::joined_frame(room).into()).await?;
        match (merged, server_offset) {
            (true, _) => self.replay_merged(room, server_offset).await?,
            (false, Some(offset)) => self.replay_after(room, offset).await?,
            (false, None) => self.send_recent(room).await?,
        }
        if let Some(snapshot) = presence {
            self.send_presence(room, snapshot).await?;
        }
        if let Some((text, updated_at)) = self.app.drafts.get(&self.nick, room) {
            let frame = protocol::draft_frame(room, &text, updated_at);
            send_text(&mut self.socket, frame.into()).await?;
        }
        Ok(())
    }

    /// Leave `room`: stop listening, drop out of its presence, end any typing.
    pub(super) fn leave(&mut self, room: &str) -> bool {
        let Some(state) = self.rooms.remove(room) else {
            return false;
        };
        self.live.remove(room);
        self.app.hub.leave(room, &self.nick, self.handle.id);
        if matches!(state.typing, Some((true, _))) {
            self.app.hub.typing(room, &self.nick, false);
        }
        true
    }

    /// Send a full `presence` and remember what it said (see `RoomState::view`).
    pub(super) async fn send_presence(
        &mut self,
        room: &str,
        snapshot: Snapshot,
    ) -> Result<(), End> {
        if let Some(state) = self.rooms.get_mut(room) {
            state.min_seq = snapshot.view.next_seq;
            state.view = Some(snapshot.view);
        }
        send_text(&mut self.socket, snapshot.frame(room).into()).await
    }

    /// The newest `history_on_join` messages, for a client without an offset.
    async fn send_recent(&mut self, room: &str) -> Result<(), End> {
        let limit = i64::from(self.app.config.history_on_join);
        let newest = self.app.store.newest_id();
        if limit == 0 {
            // Owed nothing from before now; later catch-ups start here too.
            self.note_synced(room, newest);
            return Ok(());
        }
        let (messages, _) = self
            .app
            .store
            .messages_before(room, None, limit)
            .await
            .map_err(store_failed)?;
        self.write_messages(room, &messages).await?;
        // Everything of this room up to `newest` was either sent now or is
        // older than what a client without an offset is owed.
        self.note_synced(room, newest);
        timed(self.socket.flush()).await
    }

    /// Stream every stored message of `room` above `after`, page by page,
    /// until the store has nothing newer.
    async fn replay_after(&mut self, room: &str, mut after: i64) -> Result<(), End> {
        // The client has everything up to its offset: never send that again,
        // whatever a later catch-up reads.
        self.note_synced(room, after);
        loop {
            let newest = self.app.store.newest_id();
            let (page, _) = self
                .app
                .store
                .messages_between(room, after, None, REPLAY_PAGE)
                .await
                .map_err(store_failed)?;
            let Some(last) = page.last() else {
                self.note_synced(room, newest);
                break;
            };
            after = last.id;
            self.write_messages(room, &page).await?;
            if (page.len() as i64) < REPLAY_PAGE {
                // The page ended before `newest`: nothing of this room up to
                // it is left unsent.
                self.note_synced(room, newest);
                break;
            }
            if self.app.shutdown.is_cancelled() {
                return Err(End::shutting_down());
            }
        }
        timed(self.socket.flush()).await
    }

    /// The replay of a room joined while others are live: the room's replay
    /// (above `server_offset`, or its newest `history_on_join`) merged by id
    /// with every message the other rooms have not delivered yet, all read
    /// from the store up to the newest id at the start. Their live copies are
    /// skipped afterwards.
    async fn replay_merged(&mut self, room: &str, server_offset: Option<i64>) -> Result<(), End> {
        let newest = self.app.store.newest_id();
        if let Some(offset) = server_offset {
            // Covered by the client's own claim, as in `replay_after`.
            self.note_synced(room, offset);
        }
        let below = newest.saturating_add(1);
        let store = self.app.store.clone();
        // The joined room's part: a range read in pages, or one short list.
        let mut mine: VecDeque<ChatMessage> = VecDeque::new();
        let mut mine_after = server_offset;
        if server_offset.is_none() {
            let limit = i64::from(self.app.config.history_on_join);
            if limit > 0 {
                let (recent, _) = store
                    .messages_before(room, Some(below), limit)
                    .await
                    .map_err(store_failed)?;
                mine.extend(recent);
            }
        }
        // The other rooms' part, from the oldest point any of them is synced to.
        let others: Vec<String> = self.rooms.keys().filter(|r| *r != room).cloned().collect();
        let mut others_after = others
            .iter()
            .filter_map(|r| self.rooms.get(r).map(|s| s.last_id))
            .min()
            .filter(|after| *after < newest);
        let mut theirs: VecDeque<ChatMessage> = VecDeque::new();
        let mut written = 0u64;
        loop {
            if mine.is_empty()
                && let Some(after) = mine_after
            {
                let (page, _) = store
                    .messages_between(room, after, Some(below), REPLAY_PAGE)
                    .await
                    .map_err(store_failed)?;
                mine_after = match page.last() {
                    Some(last) if page.len() as i64 == REPLAY_PAGE => Some(last.id),
                    _ => None,
                };
                mine.extend(page);
            }
            if theirs.is_empty()
                && let Some(after) = others_after
            {
                let page = store
                    .messages_in_rooms_between(others.clone(), after, below, REPLAY_PAGE)
                    .await
                    .map_err(store_failed)?;
                others_after = match page.last() {
                    Some(last) if page.len() as i64 == REPLAY_PAGE => Some(last.id),
                    _ => None,
                };
                theirs.extend(
                    page.into_iter()
                        .filter(|m| self.rooms.get(&m.room).is_some_and(|s| m.id > s.last_id)),
                );
            }
            let next = match (mine.front(), theirs.front()) {
                (None, None) if mine_after.is_none() && others_after.is_none() => break,
                (None, None) => continue,
                (Some(a), Some(b)) if b.id < a.id => theirs.pop_front(),
                (Some(_), _) => mine.pop_front(),
                (None, Some(_)) => theirs.pop_front(),
            };
            if let Some(message) = next {
                let frame = protocol::message_frame(&message);
                feed(&mut self.socket, Message::Text(frame.into())).await?;
                self.note_delivered(&message.room, message.id);
                written += 1;
            }
            if self.app.shutdown.is_cancelled() {
                return Err(End::shutting_down());
            }
        }
        metrics::counter!(crate::metrics::REPLAYED).increment(written);
        // Every room is now complete up to `newest`.
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for name in rooms {
            self.note_synced(&name, newest);
        }
        timed(self.socket.flush()).await
    }

    /// Queue messages read from the store (flushing is the caller's).
    async fn write_messages(&mut self, room: &str, messages: &[ChatMessage]) -> Result<(), End> {
        for message in messages {
            let frame = protocol::message_frame(message);
            feed(&mut self.socket, Message::Text(frame.into())).await?;
            self.note_delivered(room, message.id);
        }
        metrics::counter!(crate::metrics::REPLAYED).increment(messages.len() as u64);
        Ok(())
    }

    /// Every message of `room` up to `id` has been written (or is older than
    /// what the client asked for): live copies at or below it are skipped,
    /// and a catch-up never needs to look further back.
    pub(super) fn note_synced(&mut self, room: &str, id: i64) {
        if let Some(state) = self.rooms.get_mut(room) {
            state.last_id = state.last_id.max(id);
        }
    }

    fn note_delivered(&mut self, room: &str, id: i64) {
        self.note_synced(room, id);
        self.max_delivered = self.max_delivered.max(id);
    }

    /// Whether message `id` of `room` is still owed to this connection (a
    /// joined room, above what it already has). If so it counts as delivered
    /// from now on, and the caller writes it.
    pub(super) fn claim(&mut self, room: &str, id: i64) -> bool {
        // One lookup: this runs for every live delivery.
        match self.rooms.get_mut(room) {
            Some(state) if id > state.last_id => {
                state.last_id = id;
                self.max_delivered = self.max_delivered.max(id);
                true
            }
            _ => false,
        }
    }
}

/// A presence diff as this connection must see it (see `RoomState::view`).
pub(super) fn presence_frame(
    room: &str,
    state: &mut RoomState,
    seq: u64,
    viewers: usize,
    window: &[Change],
    frame: Option<Utf8Bytes>,
) -> Option<Utf8Bytes> {
    if seq < state.min_seq {
        return None;
    }
    match state.view.take() {
        Some(view) if seq == view.next_seq => {
            presence::diff_frame(room, viewers, window, view.seen, view.viewers).map(Into::into)
        }
        _ => frame,
    }
}

/// A replay that cannot read the store would leave the client with a gap, so
/// the connection is closed instead: the client reconnects with its offset.
pub(super) fn store_failed(e: StoreError) -> End {
    tracing::error!(error = %e, "replay failed; closing the connection");
    End::Close(CLOSE_INTERNAL, "store unavailable, reconnect")
}
