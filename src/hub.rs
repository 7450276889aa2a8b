//! Rooms and live fan-out: one broadcast channel per room, carrying frames serialized once.
//!
//! The hub only knows who listens to what. Messages reach it from the store's
//! writer thread after they are committed (`publish`), so the order on every
//! channel is the commit order, which is the id order. A receiver that falls
//! more than `ROOM_BUFFER` events behind is told so by the channel (`Lagged`)
//! and catches up from the store; the sender never waits for anyone.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

use crate::protocol::{ChatMessage, message_frame};

/// Events buffered per room for receivers that are momentarily busy. Beyond
/// this a receiver lags and reloads from SQLite, which is always correct; the
/// buffer only has to absorb ordinary bursts.
pub const ROOM_BUFFER: usize = 256;

/// What travels on a room's channel.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// A committed message. `frame` is its complete JSON text, shared by all
    /// receivers (cloning `Utf8Bytes` only bumps a reference count).
    Message { id: i64, frame: Utf8Bytes },
}

#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, broadcast::Sender<RoomEvent>>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start listening to `room`, creating it if nobody listened yet. Subscribe
    /// before reading the store, so nothing committed afterwards is missed.
    pub fn subscribe(&self, room: &str) -> broadcast::Receiver<RoomEvent> {
        let mut rooms = self.lock();
        match rooms.get(room) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(ROOM_BUFFER);
                rooms.insert(room.to_string(), sender);
                receiver
            }
        }
    }

    /// Forget `room` if its last receiver is gone. Call after dropping a receiver.
    pub fn release(&self, room: &str) {
        let mut rooms = self.lock();
        if rooms.get(room).is_some_and(|s| s.receiver_count() == 0) {
            rooms.remove(room);
        }
    }

    /// Fan a committed message out to its room. Called by the writer thread, in id order.
    pub fn publish(&self, message: ChatMessage) {
        let Some(sender) = self.lock().get(&message.room).cloned() else {
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

    /// How many rooms have at least one listener (for metrics and tests).
    pub fn active_rooms(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<RoomEvent>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert/remove), so poisoning is ignored.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}
