//! Live delivery to one connection: everything ready in all its rooms, written in one global id order, with catch-up from the store after a lag.
//!
//! Why global order and not only per room: a client keeps one `serverOffset`,
//! the highest id it has seen in any room. If room B's message 11 reached it
//! before room A's message 10 and the connection then dropped, reconnecting
//! with offset 11 would skip 10 forever. The writer publishes to the rooms'
//! channels in id order, so once a message is in one channel every older one
//! is already in its own; draining every channel until none has anything
//! ready and then sorting by id yields the global order.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tungstenite::{Message, Utf8Bytes};

use super::Connection;
use super::rooms::{presence_frame, store_failed};
use super::socket::{End, feed, timed};
use crate::hub::RoomEvent;
use crate::protocol;

/// Events taken in one drain before the connection stops and reloads from
/// the store instead: a limit on memory, never on correctness.
const MAX_DRAIN: usize = 8_192;
/// Rows per query when catching up from the store.
const CATCH_UP_PAGE: i64 = 500;

/// A room's event as the connection's `StreamMap` yields it: keyed by a
/// shared name, so taking one costs no allocation.
pub(super) type Event = (Arc<str>, Result<RoomEvent, BroadcastStreamRecvError>);

impl Connection {
    /// Queue `first` and everything else already waiting, in id order
    /// (flushing is the caller's).
    pub(super) async fn on_live(&mut self, first: Event) -> Result<(), End> {
        let mut batch = vec![first];
        while batch.len() < MAX_DRAIN {
            // Unconstrained: tokio's cooperative budget would otherwise make
            // a ready channel look empty after ~128 polls, ending the drain
            // before it has seen everything and breaking the order.
            match tokio::task::unconstrained(self.live.next())
                .now_or_never()
                .flatten()
            {
                Some(event) => batch.push(event),
                None => break,
            }
        }
        // Rooms whose channel dropped events (lag), or whose events may not
        // all be in hand (the drain stopped at its limit), reload from the
        // store, where everything is committed, in global order.
        let reload: Vec<String> = if batch.len() >= MAX_DRAIN {
            batch.iter().map(|(room, _)| room.to_string()).collect()
        } else {
            batch
                .iter()
                .filter(|(_, event)| event.is_err())
                .map(|(room, _)| room.to_string())
                .collect()
        };
        if !reload.is_empty() {
            Box::pin(self.catch_up(&reload)).await?;
        }
        for (room, event) in in_id_order(batch) {
            if let Some(frame) = self.live_frame(&room, event) {
                feed(&mut self.socket, Message::Text(frame)).await?;
            }
        }
        Ok(())
    }

    /// What, if anything, this connection writes for one live event.
    fn live_frame(
        &mut self,
        room: &str,
        event: Result<RoomEvent, BroadcastStreamRecvError>,
    ) -> Option<Utf8Bytes> {
        // Events of a room left meanwhile are dropped.
        match event {
            // Not owed when already replayed or caught up.
            Ok(RoomEvent::Message { id, frame }) => self.claim(room, id).then_some(frame),
            Ok(RoomEvent::Presence {
                seq,
                viewers,
                window,
                frame,
            }) => {
                let state = self.rooms.get_mut(room)?;
                presence_frame(room, state, seq, viewers, &window, frame)
            }
            Ok(RoomEvent::Typing { nick, frame }) => {
                (self.rooms.contains_key(room) && *nick != *self.nick).then_some(frame)
            }
            // Handled by `catch_up` before the batch is written.
            Err(BroadcastStreamRecvError::Lagged(_)) => None,
        }
    }

    /// After a lag: reload what the lagged rooms missed, with everything
    /// else pending, in one id order; then restate their presence, whose
    /// diffs were lost too.
    async fn catch_up(&mut self, lagged: &[String]) -> Result<(), End> {
        self.reload(lagged, i64::MAX).await?;
        let mut restated: Vec<&String> = lagged.iter().collect();
        restated.sort();
        restated.dedup();
        for room in restated {
            if let Some(snapshot) = self.app.hub.presence(room) {
                self.send_presence(room, snapshot).await?;
            }
        }
        Ok(())
    }

    /// Write from the store, in id order, every message of this connection's
    /// rooms below `before` that it has not delivered, starting at the oldest
    /// point any room of `from` is synced to.
    pub(super) async fn reload(&mut self, from: &[String], before: i64) -> Result<(), End> {
        let Some(mut after) = from
            .iter()
            .filter_map(|room| self.rooms.get(room).map(|s| s.last_id))
            .min()
        else {
            return Ok(());
        };
        tracing::debug!(rooms = from.len(), after, "reloading from the store");
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        let mut replayed = 0u64;
        loop {
            let page = self
                .app
                .store
                .messages_in_rooms_between(rooms.clone(), after, before, CATCH_UP_PAGE)
                .await
                .map_err(store_failed)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for message in &page {
                if !self.claim(&message.room, message.id) {
                    continue;
                }
                let frame = protocol::message_frame(message);
                feed(&mut self.socket, Message::Text(frame.into())).await?;
                replayed += 1;
            }
            if (page.len() as i64) < CATCH_UP_PAGE {
                break;
            }
            if self.app.shutdown.is_cancelled() {
                return Err(End::shutting_down());
            }
        }
        metrics::counter!(crate::metrics::REPLAYED).increment(replayed);
        timed(self.socket.flush()).await
    }
}

/// Order a drained batch by message id across rooms while keeping each
/// room's own sequence: an event that is not a message sorts with the
/// message before it in its room, and the sort is stable.
fn in_id_order(batch: Vec<Event>) -> Vec<Event> {
    // The usual batch holds one room's events, already in order.
    if batch.iter().all(|(room, _)| Arc::ptr_eq(room, &batch[0].0)) {
        return batch;
    }
    let mut last_in_room: HashMap<Arc<str>, i64> = HashMap::new();
    let mut keyed: Vec<(i64, Event)> = batch
        .into_iter()
        .map(|(room, event)| {
            let last = last_in_room.entry(room.clone()).or_insert(0);
            if let Ok(RoomEvent::Message { id, .. }) = &event {
                *last = *id;
            }
            (*last, (room, event))
        })
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, event)| event).collect()
}
