//! Server-side drafts: the newest unsent text per (nick, room), held in memory and written through the store at most once a second.
//!
//! Keystroke-rate updates only touch memory and mark the key dirty; a flusher
//! (`DRAFT_FLUSH`) hands every dirty key to the store's single writer in one
//! transaction, and shutdown flushes what is left. So 1,000 keystrokes in a
//! second are one or two writes, and a `kill -9` loses at most the last second
//! of typing.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How often dirty drafts are written.
pub const DRAFT_FLUSH: Duration = Duration::from_secs(1);

type Key = (String, String);

/// One draft as stored; an empty `text` means "delete it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftRow {
    pub nick: String,
    pub room: String,
    pub text: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
struct Draft {
    text: String,
    updated_at: i64,
}

#[derive(Default)]
pub struct Drafts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    current: HashMap<Key, Draft>,
    dirty: HashSet<Key>,
}

impl Drafts {
    /// Start from what the store holds (after a restart).
    pub fn load(rows: Vec<DraftRow>) -> Drafts {
        let current = rows
            .into_iter()
            .filter(|r| !r.text.is_empty())
            .map(|r| {
                (
                    (r.nick, r.room),
                    Draft {
                        text: r.text,
                        updated_at: r.updated_at,
                    },
                )
            })
            .collect();
        Drafts {
            inner: Mutex::new(Inner {
                current,
                dirty: HashSet::new(),
            }),
        }
    }

    /// The stored non-empty draft of `nick` in `room`: `(text, updatedAt)`.
    pub fn get(&self, nick: &str, room: &str) -> Option<(String, i64)> {
        self.lock()
            .current
            .get(&(nick.to_string(), room.to_string()))
            .map(|d| (d.text.clone(), d.updated_at))
    }

    /// Record a new draft (empty text clears it); written by the next flush.
    pub fn set(&self, nick: &str, room: &str, text: &str, now: i64) {
        let key = (nick.to_string(), room.to_string());
        let mut inner = self.lock();
        if text.is_empty() {
            inner.current.remove(&key);
        } else {
            inner.current.insert(
                key.clone(),
                Draft {
                    text: text.to_string(),
                    updated_at: now,
                },
            );
        }
        inner.dirty.insert(key);
    }

    /// A message was sent: drop the draft. Returns whether there was one (the
    /// message's transaction then deletes the stored row too).
    pub fn clear(&self, nick: &str, room: &str) -> bool {
        let key = (nick.to_string(), room.to_string());
        let mut inner = self.lock();
        if inner.current.remove(&key).is_some() {
            inner.dirty.insert(key);
            true
        } else {
            false
        }
    }

    /// Every draft changed since the last call, newest text each.
    pub fn take_dirty(&self) -> Vec<DraftRow> {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        dirty
            .into_iter()
            .map(|key| {
                let (text, updated_at) = inner
                    .current
                    .get(&key)
                    .map_or((String::new(), 0), |d| (d.text.clone(), d.updated_at));
                DraftRow {
                    nick: key.0,
                    room: key.1,
                    text,
                    updated_at,
                }
            })
            .collect()
    }

    /// Mark rows dirty again after a failed write; the next flush writes
    /// their then-current text, so a newer edit is never overwritten.
    pub fn restore_dirty(&self, rows: &[DraftRow]) {
        let mut inner = self.lock();
        for row in rows {
            inner.dirty.insert((row.nick.clone(), row.room.clone()));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_updates_make_one_dirty_row_with_the_newest_text() {
        let drafts = Drafts::default();
        for i in 0..1000 {
            drafts.set("alice", "general", &format!("text {i}"), i);
        }
        let rows = drafts.take_dirty();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].text, "text 999");
        assert!(drafts.take_dirty().is_empty());
    }

    #[test]
    fn clearing_marks_a_delete() {
        let drafts = Drafts::default();
        drafts.set("alice", "general", "half", 1);
        drafts.take_dirty();
        assert!(drafts.clear("alice", "general"));
        assert_eq!(drafts.take_dirty()[0].text, "");
        assert_eq!(drafts.get("alice", "general"), None);
        assert!(!drafts.clear("alice", "general"));
    }
}
