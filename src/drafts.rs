//! Server-side drafts: the newest unsent text per (nick, room), held in memory and written through the store at most once a second.
//!
//! Keystroke-rate updates only touch memory and mark the key dirty; the
//! flusher (`run_flusher`, every `DRAFT_FLUSH`) hands every dirty key to the
//! store in one transaction, and shutdown flushes what is left. So 1,000 keystrokes in a
//! second are one or two writes, and a `kill -9` loses at most the last second
//! of typing.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{DraftRow, Store};

/// How often dirty drafts are written.
pub const DRAFT_FLUSH: Duration = Duration::from_secs(1);

type Key = (String, String);

#[derive(Debug, Clone)]
struct Draft {
    text: String,
    updated_at: i64,
    /// Changes with every edit, so a send can tell whether the draft it
    /// clears is still the one it saw (`sent`).
    version: u64,
}

#[derive(Default)]
pub struct Drafts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    current: HashMap<Key, Draft>,
    dirty: HashSet<Key>,
    next_version: u64,
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
                        version: 0,
                    },
                )
            })
            .collect();
        Drafts {
            inner: Mutex::new(Inner {
                current,
                dirty: HashSet::new(),
                next_version: 0,
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
            // Loaded drafts are version 0; every edit gets a new one.
            inner.next_version += 1;
            let version = inner.next_version;
            inner.current.insert(
                key.clone(),
                Draft {
                    text: text.to_string(),
                    updated_at: now,
                    version,
                },
            );
        }
        inner.dirty.insert(key);
    }

    /// The version of `nick`'s draft in `room`, if there is one: a send
    /// notes it, and clears the draft once stored (`sent`).
    pub fn version(&self, nick: &str, room: &str) -> Option<u64> {
        self.lock()
            .current
            .get(&(nick.to_string(), room.to_string()))
            .map(|d| d.version)
    }

    /// A message by `nick` in `room` was stored, and its transaction deleted
    /// the stored draft. Drop the draft from memory if it is still the
    /// `version` the send saw, and say so; a draft typed since is kept, and
    /// marked to be written again.
    pub fn sent(&self, nick: &str, room: &str, version: u64) -> bool {
        let key = (nick.to_string(), room.to_string());
        let mut inner = self.lock();
        let cleared = match inner.current.get(&key) {
            Some(draft) if draft.version == version => {
                inner.current.remove(&key);
                true
            }
            _ => false,
        };
        // Either way the row is written again by the next flush: deleted, or
        // the newer text, whichever a concurrent flush left behind.
        inner.dirty.insert(key);
        cleared
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

/// Write every changed draft once a second until shutdown begins. The
/// caller flushes once more after the last connection closed.
pub async fn run_flusher(drafts: &Drafts, store: &Store, shutdown: &CancellationToken) {
    let mut tick = tokio::time::interval(DRAFT_FLUSH);
    loop {
        tokio::select! {
            _ = tick.tick() => flush(drafts, store).await,
            () = shutdown.cancelled() => break,
        }
    }
}

/// Write every draft changed since the last flush in one transaction. On
/// failure the drafts stay dirty and the next flush tries again.
pub async fn flush(drafts: &Drafts, store: &Store) {
    let rows = drafts.take_dirty();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = store.save_drafts(rows.clone()).await {
        tracing::warn!(error = %e, drafts = rows.len(), "could not save drafts; will retry");
        drafts.restore_dirty(&rows);
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
    fn a_stored_send_clears_the_draft_it_saw_and_marks_a_delete() {
        let drafts = Drafts::default();
        drafts.set("alice", "general", "half", 1);
        drafts.take_dirty();
        let seen = drafts.version("alice", "general").unwrap_or_default();
        assert!(drafts.sent("alice", "general", seen));
        assert_eq!(drafts.take_dirty()[0].text, "");
        assert_eq!(drafts.get("alice", "general"), None);
        assert_eq!(drafts.version("alice", "general"), None);
    }

    #[test]
    fn a_draft_typed_after_the_send_is_kept() {
        let drafts = Drafts::default();
        drafts.set("alice", "general", "sent text", 1);
        let seen = drafts.version("alice", "general").unwrap_or_default();
        drafts.set("alice", "general", "next thought", 2);
        drafts.take_dirty();

        assert!(!drafts.sent("alice", "general", seen));
        assert_eq!(
            drafts.get("alice", "general"),
            Some(("next thought".to_string(), 2))
        );
        // Written again: the message's transaction deleted the stored row.
        assert_eq!(drafts.take_dirty()[0].text, "next thought");
    }
}
