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
//! connections, through each connection's direct channel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::protocol::{ChatMessage, message_frame};

/// Events buffered per room for receivers that are momentarily busy. Beyond
/// this a receiver lags and reloads from SQLite, which is always correct; the
/// buffer only has to absorb ordinary bursts.
pub const ROOM_BUFFER: usize = 256;
/// How often dirty rooms send their `presence_diff`: the coalescing window
/// (the protocol allows at most 250 ms).
pub const PRESENCE_TICK: Duration = Duration::from_millis(200);
/// Frames waiting in one connection's direct channel (draft echoes).
pub const DIRECT_BUFFER: usize = 64;

/// What travels on a room's channel. Frames are serialized once and shared:
/// cloning `Utf8Bytes` only bumps a reference count.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// A committed message.
    Message { id: i64, frame: Utf8Bytes },
    /// A coalesced presence change. `members` is the full member set after it,
    /// for connections that joined during the window (see `PresenceView`).
    Presence {
        seq: u64,
        viewers: usize,
        members: Arc<BTreeSet<String>>,
        frame: Utf8Bytes,
    },
    /// Someone's typing state, for the connections of the room's other nicks.
    Typing { nick: Arc<str>, frame: Utf8Bytes },
}

/// A connection as the hub knows it: an id and a way to reach it directly.
#[derive(Debug, Clone)]
pub struct Handle {
    pub id: u64,
    pub direct: mpsc::Sender<Utf8Bytes>,
}

/// Presence as one connection was told it when joining: the baseline against
/// which the first diff after its join is computed, so it never hears about
/// its own join and never misses a change from the same window.
#[derive(Debug, Clone)]
pub struct PresenceView {
    /// The `seq` of the first diff sent after this view was taken.
    pub next_seq: u64,
    pub viewers: usize,
    pub members: BTreeSet<String>,
}

struct Member {
    connections: Vec<Handle>,
    /// Set when the last connection left; the nick is announced as gone once
    /// this is older than the grace period.
    gone_since: Option<Instant>,
}

struct Room {
    sender: broadcast::Sender<RoomEvent>,
    members: BTreeMap<String, Member>,
    viewers: usize,
    /// What the last `presence_diff` announced.
    announced_members: Arc<BTreeSet<String>>,
    announced_viewers: usize,
    /// Diffs sent so far.
    seq: u64,
    dirty: bool,
}

impl Room {
    fn new() -> Room {
        Room {
            sender: broadcast::channel(ROOM_BUFFER).0,
            members: BTreeMap::new(),
            viewers: 0,
            announced_members: Arc::default(),
            announced_viewers: 0,
            seq: 0,
            dirty: false,
        }
    }

    fn member_set(&self) -> BTreeSet<String> {
        self.members.keys().cloned().collect()
    }

    fn view(&self) -> PresenceView {
        PresenceView {
            next_seq: self.seq + 1,
            viewers: self.viewers,
            members: self.member_set(),
        }
    }

    fn presence_frame(&self, room: &str) -> Utf8Bytes {
        let members: Vec<_> = self
            .members
            .iter()
            .map(|(nick, m)| json!({"nick": nick, "connections": m.connections.len()}))
            .collect();
        json!({"type": "presence", "room": room, "viewers": self.viewers, "members": members})
            .to_string()
            .into()
    }
}

pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    grace: Duration,
    next_connection: AtomicU64,
}

/// What a connection gets when it joins a room.
pub struct Joined {
    pub receiver: broadcast::Receiver<RoomEvent>,
    pub view: PresenceView,
    /// The `presence` frame, already counting the new connection.
    pub presence: Utf8Bytes,
}

impl Hub {
    pub fn new(grace: Duration) -> Self {
        Hub {
            rooms: Mutex::default(),
            grace,
            next_connection: AtomicU64::new(1),
        }
    }

    /// A new connection's handle and the receiving end of its direct channel.
    pub fn connect(&self) -> (Handle, mpsc::Receiver<Utf8Bytes>) {
        let (direct, receiver) = mpsc::channel(DIRECT_BUFFER);
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        (Handle { id, direct }, receiver)
    }

    /// Enter `room` as `nick`: subscribe to its channel (before the caller
    /// reads the store, so nothing committed afterwards is missed) and count
    /// the connection in its presence.
    pub fn join(&self, room: &str, nick: &str, handle: &Handle) -> Joined {
        let mut rooms = self.lock();
        let entry = rooms.entry(room.to_string()).or_insert_with(Room::new);
        let receiver = entry.sender.subscribe();
        let member = entry.members.entry(nick.to_string()).or_insert(Member {
            connections: Vec::new(),
            gone_since: None,
        });
        member.connections.push(handle.clone());
        member.gone_since = None;
        entry.viewers += 1;
        entry.dirty = true;
        Joined {
            receiver,
            view: entry.view(),
            presence: entry.presence_frame(room),
        }
    }

    /// The connection left `room` (explicitly or by closing). Its nick stays a
    /// member for the grace period after its last connection went.
    pub fn leave(&self, room: &str, nick: &str, connection: u64) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let Some(member) = entry.members.get_mut(nick) else {
            return;
        };
        let before = member.connections.len();
        member.connections.retain(|h| h.id != connection);
        if member.connections.len() < before {
            entry.viewers -= 1;
            entry.dirty = true;
            if member.connections.is_empty() {
                member.gone_since = Some(Instant::now());
            }
        }
    }

    /// The current presence of `room`, for a connection that lost track (lagged).
    pub fn presence(&self, room: &str) -> Option<(PresenceView, Utf8Bytes)> {
        let rooms = self.lock();
        rooms.get(room).map(|r| (r.view(), r.presence_frame(room)))
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
        let targets: Vec<mpsc::Sender<Utf8Bytes>> = {
            let rooms = self.lock();
            let Some(member) = rooms.get(room).and_then(|r| r.members.get(nick)) else {
                return;
            };
            member
                .connections
                .iter()
                .filter(|h| h.id != origin)
                .map(|h| h.direct.clone())
                .collect()
        };
        for target in targets {
            // A tab too busy to take a draft echo gets the draft on its next join.
            let _ = target.try_send(frame.clone());
        }
    }

    /// Expire graced members, send one `presence_diff` per changed room, and
    /// forget rooms nobody is in. Called every `PRESENCE_TICK`.
    pub fn tick(&self, now: Instant) {
        let mut rooms = self.lock();
        rooms.retain(|name, room| {
            let grace = self.grace;
            let before = room.members.len();
            room.members.retain(|_, m| {
                !m.connections.is_empty()
                    || m.gone_since.is_none_or(|t| now.duration_since(t) < grace)
            });
            if room.members.len() != before {
                room.dirty = true;
            }
            if room.dirty {
                room.dirty = false;
                send_diff(name, room);
            }
            !room.members.is_empty() || room.sender.receiver_count() > 0
        });
    }

    /// Open connections per room, for rooms with at least one.
    pub fn viewer_counts(&self) -> HashMap<String, usize> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.viewers > 0)
            .map(|(name, r)| (name.clone(), r.viewers))
            .collect()
    }

    /// Rooms held in memory (for tests and metrics).
    pub fn active_rooms(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // Every critical section leaves the map consistent between statements
        // that can panic, so a poisoned lock is still safe to use.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Announce what changed since the last diff, if anything did.
fn send_diff(name: &str, room: &mut Room) {
    let members = room.member_set();
    if members == *room.announced_members && room.viewers == room.announced_viewers {
        return;
    }
    let joins: Vec<&String> = members.difference(&room.announced_members).collect();
    let leaves: Vec<&String> = room.announced_members.difference(&members).collect();
    let frame: Utf8Bytes = json!({
        "type": "presence_diff",
        "room": name,
        "viewers": room.viewers,
        "joins": joins,
        "leaves": leaves,
    })
    .to_string()
    .into();
    room.seq += 1;
    let members = Arc::new(members);
    let _ = room.sender.send(RoomEvent::Presence {
        seq: room.seq,
        viewers: room.viewers,
        members: members.clone(),
        frame,
    });
    room.announced_members = members;
    room.announced_viewers = room.viewers;
}

/// The diff a connection that joined with `view` must see for the first
/// presence event after its join: the change from what it was told, not from
/// what was announced before (which may include its own join). `None` when
/// nothing changed from its point of view.
pub fn diff_from_view(
    room: &str,
    view: &PresenceView,
    viewers: usize,
    members: &BTreeSet<String>,
) -> Option<Utf8Bytes> {
    let joins: Vec<&String> = members.difference(&view.members).collect();
    let leaves: Vec<&String> = view.members.difference(members).collect();
    if joins.is_empty() && leaves.is_empty() && viewers == view.viewers {
        return None;
    }
    Some(
        json!({"type": "presence_diff", "room": room, "viewers": viewers, "joins": joins, "leaves": leaves})
            .to_string()
            .into(),
    )
}
