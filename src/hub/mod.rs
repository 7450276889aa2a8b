//! Rooms in memory: who is in each one (presence), and the live fan-out of messages, presence diffs, typing and draft echoes into each connection's inbox.
//!
//! # Layout
//! - `inbox`: one connection's queue of live events, and its lag flag.
//! - `presence`: one room's members, the grace period, coalesced diffs.
//! - this file: the rooms, joining and leaving, and fan-out.
//!
//! Messages reach the hub from the store's writer thread after they are
//! committed (`publish`, one call per committed batch, in id order), and the
//! hub pushes each into the inbox of every connection in its room. So every
//! inbox receives its messages in id order across all its rooms; the hub
//! never waits for a connection (see `inbox`).
//!
//! A room in memory is only its presence: it has no buffer or channel of its
//! own, costs nothing once its last member's grace period is over, and is
//! then forgotten. The hub may not touch the store or a socket.
//!
//! Locks: the map of rooms, then a room; never the other way round, and
//! never across an `.await`. The map is held only to find or forget a room,
//! so fan-out to a big room does not stop joins elsewhere.

pub(crate) mod inbox;
pub(crate) mod presence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tungstenite::Utf8Bytes;

use self::inbox::{Inbox, Live};
use self::presence::{PresenceView, RoomPresence};
use crate::protocol::{self, ChatMessage};

/// How often dirty rooms send their `presence_diff`: the coalescing window
/// (the protocol allows at most 250 ms).
pub const PRESENCE_TICK: Duration = Duration::from_millis(200);

/// A connection as the hub knows it: an id and its inbox.
#[derive(Debug, Clone)]
pub struct Handle {
    pub id: u64,
    pub inbox: Arc<Inbox>,
}

struct Room {
    name: Arc<str>,
    presence: RoomPresence,
}

type Shared<T> = Arc<Mutex<T>>;

pub struct Hub {
    rooms: Mutex<HashMap<Arc<str>, Shared<Room>>>,
    grace: Duration,
    next_connection: AtomicU64,
}

/// A connection's `presence` frame on joining, and what it says.
pub struct Snapshot {
    pub view: PresenceView,
    pub frame: String,
}

impl Hub {
    pub fn new(grace: Duration) -> Self {
        Hub {
            rooms: Mutex::default(),
            grace,
            next_connection: AtomicU64::new(1),
        }
    }

    /// A new connection's handle, with its inbox.
    pub fn connect(&self) -> Handle {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        Handle {
            id,
            inbox: Arc::default(),
        }
    }

    /// Enter `room` as `nick`: from now on the room's events reach the
    /// connection's inbox (so the caller reads the store only afterwards, and
    /// nothing committed meanwhile is missed), and presence counts it.
    /// Returns the room's shared name and the joiner's `presence` frame.
    pub fn join(&self, room: &str, nick: &str, handle: &Handle) -> (Arc<str>, Snapshot) {
        let mut rooms = self.lock_rooms();
        let shared = match rooms.get(room) {
            Some(shared) => shared.clone(),
            None => {
                let name: Arc<str> = room.into();
                let shared = Arc::new(Mutex::new(Room {
                    name: name.clone(),
                    presence: RoomPresence::default(),
                }));
                rooms.insert(name, shared.clone());
                shared
            }
        };
        let mut entry = lock(&shared);
        // The room is counted before the map is let go, so `tick` cannot
        // forget it in between; the frame is built after.
        drop(rooms);
        entry.presence.join(nick, handle);
        let (view, frame) = entry.presence.snapshot(room);
        (entry.name.clone(), Snapshot { view, frame })
    }

    /// The connection left `room` (explicitly or by closing). Its nick stays a
    /// member for the grace period after its last connection went.
    pub fn leave(&self, room: &str, nick: &str, connection: u64) {
        if let Some(shared) = self.room(room) {
            lock(&shared)
                .presence
                .leave(nick, connection, Instant::now());
        }
    }

    /// The current presence of `room`, for a connection that joins again or lost track (lagged).
    pub fn presence(&self, room: &str) -> Option<Snapshot> {
        let shared = self.room(room)?;
        let entry = lock(&shared);
        let (view, frame) = entry.presence.snapshot(room);
        Some(Snapshot { view, frame })
    }

    /// Fan a committed batch out to its rooms. Called by the writer thread,
    /// in id order, once per batch: the map is locked once to find the rooms.
    pub fn publish(&self, messages: &[ChatMessage]) {
        let targets: Vec<Option<Shared<Room>>> = {
            let rooms = self.lock_rooms();
            messages
                .iter()
                .map(|m| rooms.get(m.room.as_str()).cloned())
                .collect()
        };
        for (message, target) in messages.iter().zip(targets) {
            // Nobody listening: joiners will read it from the store.
            let Some(shared) = target else { continue };
            // Serialized once for every receiver.
            let frame: Utf8Bytes = protocol::message_frame(message).into();
            let entry = lock(&shared);
            for (_, handle) in entry.presence.each_connection() {
                handle.inbox.push(Live::Message {
                    room: entry.name.clone(),
                    id: message.id,
                    frame: frame.clone(),
                });
            }
        }
    }

    /// Relay a typing state to the connections of the room's other nicks.
    pub fn typing(&self, room: &str, nick: &str, active: bool) {
        let Some(shared) = self.room(room) else {
            return;
        };
        let frame: Utf8Bytes = protocol::typing_frame(room, nick, active).into();
        let entry = lock(&shared);
        let sender: Arc<str> = nick.into();
        for (member, handle) in entry.presence.each_connection() {
            if **member != *nick {
                handle.inbox.push(Live::Typing {
                    room: entry.name.clone(),
                    nick: sender.clone(),
                    frame: frame.clone(),
                });
            }
        }
    }

    /// Send `frame` to `nick`'s connections in `room` other than `origin`.
    pub fn to_other_tabs(&self, room: &str, nick: &str, origin: u64, frame: Utf8Bytes) {
        let Some(shared) = self.room(room) else {
            return;
        };
        let entry = lock(&shared);
        for handle in entry.presence.connections(nick) {
            if handle.id != origin {
                handle.inbox.push(Live::Direct(frame.clone()));
            }
        }
    }

    /// Expire graced members, send one `presence_diff` per changed room, and
    /// forget rooms nobody is in. Called every `PRESENCE_TICK`.
    pub fn tick(&self, now: Instant) {
        let mut changed = Vec::new();
        {
            let mut rooms = self.lock_rooms();
            rooms.retain(|_, shared| {
                let mut entry = lock(shared);
                if let Some(diff) = entry.presence.tick(now, self.grace) {
                    drop(entry);
                    changed.push((shared.clone(), diff));
                    return true;
                }
                !entry.presence.is_empty()
            });
            // A burst of short-lived rooms must not leave a big table behind.
            if rooms.capacity() > 64 && rooms.len() < rooms.capacity() / 4 {
                let keep = rooms.len() * 2;
                rooms.shrink_to(keep);
            }
        }
        // Frames are built and pushed under the room's lock only.
        for (shared, diff) in changed {
            let entry = lock(&shared);
            let frame = presence::diff_frame(
                &entry.name,
                diff.viewers,
                &diff.window,
                0,
                diff.previous_viewers,
            )
            .map(Utf8Bytes::from);
            for (_, handle) in entry.presence.each_connection() {
                handle.inbox.push(Live::Presence {
                    room: entry.name.clone(),
                    seq: diff.seq,
                    viewers: diff.viewers,
                    window: diff.window.clone(),
                    frame: frame.clone(),
                });
            }
        }
    }

    /// Open connections per room, for rooms with at least one.
    pub fn viewer_counts(&self) -> HashMap<String, usize> {
        self.lock_rooms()
            .iter()
            .filter_map(|(name, shared)| {
                let viewers = lock(shared).presence.viewers();
                (viewers > 0).then(|| (name.to_string(), viewers))
            })
            .collect()
    }

    fn room(&self, room: &str) -> Option<Shared<Room>> {
        self.lock_rooms().get(room).cloned()
    }

    fn lock_rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, Shared<Room>>> {
        lock(&self.rooms)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent between statements
    // that can panic, so a poisoned lock is still safe to use.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
