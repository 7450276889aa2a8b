//! One connection's inbox: the live events of all its rooms, queued by the hub in the order they happened, and the lag flag.
//!
//! Why one queue per connection rather than a channel per room: the writer
//! publishes in id order, so one queue holds a connection's messages in the
//! one id order across all its rooms by construction, with nothing to merge;
//! and a room costs no buffer of its own, so a thousand DMs cost no more
//! than one big room. The queue allocates only while something waits in it.
//!
//! The hub never waits for a connection: when `LIMIT` events are waiting,
//! further ones are dropped and the inbox is marked lagged until the
//! connection takes it. The connection then reloads what it missed from the
//! store, where everything is committed; see `ws::delivery`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tungstenite::Utf8Bytes;

use super::presence::Change;

/// Events waiting for one connection before it counts as lagging. Large
/// enough for a burst in a busy room, small enough that a stalled
/// connection holds little memory (about 100 bytes an event).
pub const LIMIT: usize = 1_024;

/// A live event as the hub hands it to a connection.
#[derive(Debug, Clone)]
pub enum Live {
    /// A committed message (its frame is shared by every receiver).
    Message {
        room: Arc<str>,
        id: i64,
        frame: Utf8Bytes,
    },
    /// A coalesced presence change: the shared frame, and the window of
    /// member changes behind it for connections that joined mid-window
    /// (see `presence::PresenceView`). `frame` is `None` when the window
    /// nets out to nothing for those who saw the previous diff.
    Presence {
        room: Arc<str>,
        seq: u64,
        viewers: usize,
        window: Arc<[Change]>,
        frame: Option<Utf8Bytes>,
    },
    /// Someone's typing state, for the connections of the room's other nicks.
    Typing {
        room: Arc<str>,
        nick: Arc<str>,
        frame: Utf8Bytes,
    },
    /// A frame for this connection alone (a draft echo from another tab).
    Direct(Utf8Bytes),
}

/// What a connection takes from its inbox in one go (and, until then, the
/// inbox's own state).
#[derive(Debug, Default)]
pub struct Taken {
    /// Everything queued, oldest first.
    pub events: VecDeque<Live>,
    /// Events were dropped after these: reload from the store.
    pub lagged: bool,
    /// Rooms whose presence diffs were among the dropped: restate them.
    pub presence_lost: HashSet<Arc<str>>,
}

#[derive(Debug, Default)]
pub struct Inbox {
    queue: Mutex<Taken>,
    ready: Notify,
}

impl Inbox {
    /// Queue an event, or note that it was dropped.
    pub fn push(&self, event: Live) {
        let mut queue = self.lock();
        if queue.lagged || queue.events.len() >= LIMIT {
            queue.lagged = true;
            if let Live::Presence { room, .. } = &event {
                queue.presence_lost.insert(room.clone());
            }
            return;
        }
        let was_empty = queue.events.is_empty();
        queue.events.push_back(event);
        drop(queue);
        // One wake per batch: the connection takes everything at once.
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Everything queued, and whether anything was dropped since the last
    /// take; `None` when there is nothing (the common case on a busy loop).
    pub fn take(&self) -> Option<Taken> {
        let mut queue = self.lock();
        if queue.events.is_empty() && !queue.lagged {
            return None;
        }
        Some(std::mem::take(&mut *queue))
    }

    /// Resolves once an event was pushed into an empty inbox since the last
    /// wake (or at once, if one was pushed while nobody waited).
    pub async fn pushed(&self) {
        self.ready.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, Taken> {
        // Every critical section leaves the queue consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64) -> Live {
        Live::Message {
            room: "r".into(),
            id,
            frame: Utf8Bytes::from_static("{}"),
        }
    }

    #[test]
    fn events_come_out_in_the_order_they_went_in() {
        let inbox = Inbox::default();
        for id in 1..=3 {
            inbox.push(message(id));
        }
        let taken = inbox.take().unwrap_or_default();
        let ids: Vec<i64> = taken
            .events
            .iter()
            .filter_map(|e| match e {
                Live::Message { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(!taken.lagged);
    }

    #[test]
    fn a_full_inbox_drops_everything_after_and_says_so_once() {
        let inbox = Inbox::default();
        for id in 0..LIMIT as i64 + 5 {
            inbox.push(message(id));
        }
        let taken = inbox.take().unwrap_or_default();
        assert_eq!(taken.events.len(), LIMIT);
        assert!(taken.lagged);
        assert!(inbox.take().is_none());
    }

    #[test]
    fn once_lagged_nothing_newer_is_queued_before_the_take() {
        // A newer event queued after a dropped one would let the connection
        // mark its room delivered past the gap.
        let inbox = Inbox::default();
        for id in 0..LIMIT as i64 {
            inbox.push(message(id));
        }
        inbox.push(message(10_000));
        let taken = inbox.take().unwrap_or_default();
        assert!(taken.lagged);
        assert!(
            taken
                .events
                .iter()
                .all(|e| !matches!(e, Live::Message { id: 10_000, .. }))
        );
    }
}
