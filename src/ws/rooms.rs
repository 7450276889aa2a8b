//! A connection's rooms: joining (subscribe, replay, presence, draft), leaving, presence as this connection sees it, and writing replays and live events.

use std::sync::Arc;
use std::time::Instant;

use futures_util::SinkExt;
use tungstenite::{Message, Utf8Bytes};

use super::Connection;
use super::delivery::Replay;
use super::socket::{CLOSE_INTERNAL, End, feed, send_text, timed};
use crate::hub::Snapshot;
use crate::hub::inbox::{Live, Taken};
use crate::hub::presence::{self, Change, PresenceView};
use crate::protocol;
use crate::store::StoreError;

/// This connection's state in one room, beside its delivery mark.
#[derive(Debug, Default)]
pub struct RoomState {
    /// Presence diffs below this `seq` predate the `presence` this connection
    /// was sent and are skipped.
    min_seq: u64,
    /// Until the first diff after a `presence` snapshot arrives: what the
    /// snapshot said, so that diff is computed from the connection's view.
    view: Option<PresenceView>,
    /// The last typing state relayed for this connection, and when.
    pub typing: Option<(bool, Instant)>,
}

/// Whether a join is part of the handshake (each room replayed in turn, the
/// client stores its offset only at `synced`) or comes later, while other
/// rooms are live (the replay then covers every joined room, merged by id,
/// so the connection's one id order holds: see `delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPhase {
    Handshake,
    Live,
}

impl Connection {
    /// `joined`, replay, `presence`, `draft`. Subscribes before reading the
    /// store, so nothing committed meanwhile is missed.
    pub(super) async fn join(
        &mut self,
        room: &str,
        server_offset: Option<i64>,
        phase: JoinPhase,
    ) -> Result<(), End> {
        let (name, snapshot) = if self.delivery.contains(room) {
            // Joining again: a new replay, a fresh presence snapshot.
            let name: Arc<str> = room.into();
            (name, self.app.hub.presence(room))
        } else {
            let (name, snapshot) = self.app.hub.join(room, &self.nick, &self.handle);
            (name, Some(snapshot))
        };
        send_text(&mut self.socket, protocol::joined_frame(room).into()).await?;
        let upto = self.app.store.newest_id();
        let from = match server_offset {
            Some(offset) => offset,
            // The newest `history_on_join` messages.
            None => {
                let count = self.app.config.history_on_join;
                Box::pin(self.app.store.recent_start(room, upto, count))
                    .await
                    .map_err(store_failed)?
            }
        };
        self.delivery.enter(name.clone(), from, RoomState::default);
        let rooms = match phase {
            JoinPhase::Handshake => vec![name],
            JoinPhase::Live => self.delivery.rooms(),
        };
        self.replay(self.delivery.replay(rooms, upto)).await?;
        if let Some(snapshot) = snapshot {
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
        let Some(state) = self.delivery.leave(room) else {
            return false;
        };
        self.app.hub.leave(room, &self.nick, self.handle.id);
        if matches!(state.typing, Some((true, _))) {
            self.app.hub.typing(room, &self.nick, false);
        }
        true
    }

    /// Write a replay, page by page, then flush.
    pub(super) async fn replay(&mut self, mut replay: Replay) -> Result<(), End> {
        let mut written = 0u64;
        while let Some(page) = Box::pin(replay.next(&mut self.delivery, &self.app.store))
            .await
            .map_err(store_failed)?
        {
            for message in &page {
                let frame = protocol::message_frame(message);
                feed(&mut self.socket, Message::Text(frame.into())).await?;
            }
            written += page.len() as u64;
            if self.app.shutdown.is_cancelled() {
                return Err(End::shutting_down());
            }
        }
        metrics::counter!(crate::metrics::REPLAYED).increment(written);
        timed(self.socket.flush()).await
    }

    /// Write what the inbox held, in order (flushing is the caller's). After
    /// a lag, what was dropped is reloaded from the store, and the presence
    /// of rooms whose diffs were dropped is stated afresh.
    pub(super) async fn deliver(&mut self, taken: Taken) -> Result<(), End> {
        for event in taken.events {
            if let Some(frame) = self.live_frame(event) {
                feed(&mut self.socket, Message::Text(frame)).await?;
            }
        }
        if taken.lagged {
            tracing::debug!(
                rooms = self.delivery.len(),
                "inbox lagged; reloading from the store"
            );
            let upto = self.app.store.newest_id();
            Box::pin(self.replay(self.delivery.catch_up(upto))).await?;
            let mut restated: Vec<Arc<str>> = taken.presence_lost.into_iter().collect();
            restated.sort();
            for room in restated {
                if self.delivery.contains(&room)
                    && let Some(snapshot) = self.app.hub.presence(&room)
                {
                    self.send_presence(&room, snapshot).await?;
                }
            }
        }
        Ok(())
    }

    /// What, if anything, this connection writes for one live event.
    fn live_frame(&mut self, event: Live) -> Option<Utf8Bytes> {
        match event {
            // Not owed when already replayed, or the room was left meanwhile.
            Live::Message { room, id, frame } => self.delivery.claim(&room, id).then_some(frame),
            Live::Presence {
                room,
                seq,
                viewers,
                window,
                frame,
            } => {
                let state = self.delivery.state_mut(&room)?;
                presence_frame(&room, state, seq, viewers, &window, frame)
            }
            Live::Typing { room, nick, frame } => {
                (self.delivery.contains(&room) && *nick != *self.nick).then_some(frame)
            }
            Live::Direct(frame) => Some(frame),
        }
    }

    /// Send a full `presence` and remember what it said (see `RoomState::view`).
    async fn send_presence(&mut self, room: &str, snapshot: Snapshot) -> Result<(), End> {
        if let Some(state) = self.delivery.state_mut(room) {
            state.min_seq = snapshot.view.next_seq;
            state.view = Some(snapshot.view);
        }
        send_text(&mut self.socket, snapshot.frame.into()).await
    }
}

/// A presence diff as this connection must see it (see `RoomState::view`).
fn presence_frame(
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
fn store_failed(e: StoreError) -> End {
    tracing::error!(error = %e, "replay failed; closing the connection");
    End::Close(CLOSE_INTERNAL, "store unavailable, reconnect")
}
