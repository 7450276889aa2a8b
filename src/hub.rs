//! Rooms in memory: live fan-out of messages, presence (who is here, coalesced diffs), typing and draft relays.
//!
//! Each room has one broadcast channel. Messages reach it from the store's
//! writer thread after they are committed (`publish`), so the order on every
//! channel is the commit order, which is the id order. A receiver that falls
//! more than `ROOM_BUFFER` events behind is told so by the channel (`Lagged`)
//! and catches up from the store; the sender never waits for anyone.
//!
//! Presence changes mark the room dirty; `tick` (every `PRESENCE_TICK`) sends
//! one `presence_diff` per dirty room, so a burst of joins costs each
//! connection a few frames. Drafts go only to the same nick's other
//! connections, through each connection's direct inbox.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Notify, broadcast};
use tungstenite::Utf8Bytes;

use crate::presence::{self, Change, RoomPresence, Snapshot};
use crate::protocol::{ChatMessage, message_frame};

/// Events buffered per room for receivers that are momentarily busy. Beyond
/// this a receiver lags and reloads from SQLite, which is always correct; the
/// buffer only has to absorb ordinary bursts.
pub const ROOM_BUFFER: usize = 256;
/// How often dirty rooms send their `presence_diff`: the coalescing window
/// (the protocol allows at most 250 ms).
pub const PRESENCE_TICK: Duration = Duration::from_millis(200);
/// Frames waiting in one connection's direct inbox (draft echoes).
pub const DIRECT_BUFFER: usize = 64;

/// What travels on a room's channel.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// A committed message.
    Message { id: i64, frame: Utf8Bytes },
    /// A coalesced presence change: the shared frame, and the window of
    /// member changes behind it for connections that joined mid-window (see
    /// `presence::PresenceView`).
    /// `frame` is `None` when the window nets out to nothing for those who
    /// saw the previous diff; the event still goes out for the others.
    Presence {
        seq: u64,
        viewers: usize,
        window: Arc<[Change]>,
        frame: Option<Utf8Bytes>,
    },
    /// Someone's typing state, for the connections of the room's other nicks.
    Typing { nick: Arc<str>, frame: Utf8Bytes },
}

/// A connection as the hub knows it: an id and a way to reach it directly.
#[derive(Debug, Clone)]
pub struct Handle {
    pub id: u64,
    pub direct: Arc<Inbox>,
}

/// Frames for one connection alone (draft echoes from its nick's other tabs).
///
/// A queue and a `Notify` rather than an mpsc channel: a channel allocates
/// its first block of slots up front, about 1.5 KiB per connection, for a
/// path most connections never use.
#[derive(Debug, Default)]
pub struct Inbox {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    ready: Notify,
}

impl Inbox {
    /// Queue a frame unless `DIRECT_BUFFER` are already waiting (a tab too
    /// busy to take a draft echo gets the draft on its next join).
    pub fn push(&self, frame: Utf8Bytes) {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if frames.len() < DIRECT_BUFFER {
            frames.push_back(frame);
            drop(frames);
            self.ready.notify_one();
        }
    }

    /// Everything queued, oldest first.
    pub fn take(&self) -> VecDeque<Utf8Bytes> {
        std::mem::take(&mut *self.frames.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once a frame was pushed since the last wake (or at once, if
    /// one was pushed while nobody waited).
    pub async fn pushed(&self) {
        self.ready.notified().await;
    }
}

struct Room {
    sender: broadcast::Sender<RoomEvent>,
    presence: RoomPresence,
}

pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    grace: Duration,
    next_connection: AtomicU64,
}

/// What a connection gets when it joins a room.
pub struct Joined {
    pub receiver: broadcast::Receiver<RoomEvent>,
    /// Presence already counting the new connection.
    pub presence: Snapshot,
}

impl Hub {
    pub fn new(grace: Duration) -> Self {
        Hub {
            rooms: Mutex::default(),
            grace,
            next_connection: AtomicU64::new(1),
        }
    }

    /// A new connection's handle, with its direct inbox.
    pub fn connect(&self) -> Handle {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        Handle {
            id,
            direct: Arc::default(),
        }
    }

    /// Enter `room` as `nick`: subscribe to its channel (before the caller
    /// reads the store, so nothing committed afterwards is missed) and count
    /// the connection in its presence.
    pub fn join(&self, room: &str, nick: &str, handle: &Handle) -> Joined {
        let mut rooms = self.lock();
        let entry = rooms.entry(room.to_string()).or_insert_with(|| Room {
            sender: broadcast::channel(ROOM_BUFFER).0,
            presence: RoomPresence::default(),
        });
        let receiver = entry.sender.subscribe();
        entry.presence.join(nick, handle);
        Joined {
            receiver,
            presence: entry.presence.snapshot(),
        }
    }

    /// The connection left `room` (explicitly or by closing). Its nick stays a
    /// member for the grace period after its last connection went.
    pub fn leave(&self, room: &str, nick: &str, connection: u64) {
        if let Some(entry) = self.lock().get_mut(room) {
            entry.presence.leave(nick, connection, Instant::now());
        }
    }

    /// The current presence of `room`, for a connection that lost track (lagged).
    pub fn presence(&self, room: &str) -> Option<Snapshot> {
        self.lock().get(room).map(|r| r.presence.snapshot())
    }

    /// Fan a committed message out to its room. Called by the writer thread, in id order.
    pub fn publish(&self, message: ChatMessage) {
        let Some(sender) = self.lock().get(&message.room).map(|r| r.sender.clone()) else {
            return; // nobody is listening; joiners will read it from the store
        };
        // Serialized outside the lock, once for every receiver.
        let event = RoomEvent::Message {
            id: message.id,
            frame: message_frame(&message).into(),
        };
        // An error only means every receiver left meanwhile.
        let _ = sender.send(event);
    }

    /// Relay a typing state to the room (receivers skip their own nick).
    pub fn typing(&self, room: &str, nick: &str, active: bool) {
        let frame: Utf8Bytes =
            json!({"type": "typing", "room": room, "nick": nick, "active": active})
                .to_string()
                .into();
        if let Some(sender) = self.lock().get(room).map(|r| r.sender.clone()) {
            let _ = sender.send(RoomEvent::Typing {
                nick: nick.into(),
                frame,
            });
        }
    }

    /// Send `frame` to `nick`'s connections in `room` other than `origin`.
    pub fn to_other_tabs(&self, room: &str, nick: &str, origin: u64, frame: Utf8Bytes) {
        let targets: Vec<Arc<Inbox>> = {
            let rooms = self.lock();
            let Some(entry) = rooms.get(room) else {
                return;
            };
            entry
                .presence
                .connections(nick)
                .iter()
                .filter(|h| h.id != origin)
                .map(|h| h.direct.clone())
                .collect()
        };
        for target in targets {
            target.push(frame.clone());
        }
    }

    /// Expire graced members, send one `presence_diff` per changed room, and
    /// forget rooms nobody is in. Called every `PRESENCE_TICK`.
    pub fn tick(&self, now: Instant) {
        let mut rooms = self.lock();
        rooms.retain(|name, room| {
            if let Some(diff) = room.presence.tick(now, self.grace) {
                let frame = presence::diff_frame(
                    name,
                    diff.viewers,
                    &diff.window,
                    0,
                    diff.previous_viewers,
                );
                // An error only means nobody is listening any more.
                let _ = room.sender.send(RoomEvent::Presence {
                    seq: diff.seq,
                    viewers: diff.viewers,
                    window: diff.window,
                    frame: frame.map(Into::into),
                });
            }
            !room.presence.is_empty() || room.sender.receiver_count() > 0
        });
    }

    /// Open connections per room, for rooms with at least one.
    pub fn viewer_counts(&self) -> HashMap<String, usize> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.presence.viewers() > 0)
            .map(|(name, r)| (name.clone(), r.presence.viewers()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // Every critical section leaves the map consistent between statements
        // that can panic, so a poisoned lock is still safe to use.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}
