//! The store boundary: everything natter asks of its database, and the types that cross it; no caller names the engine behind it.
//!
//! # Layout
//! - `sqlite/`: the embedded store (one file, a single writer thread with
//!   group commit, a pool of readers, migrations, `natter backup`).
//! - this file: the `Store` handle the rest of the server holds, and the
//!   types of what goes in and comes out.
//!
//! The one promise every engine keeps (section 3 of the protocol): ids are
//! assigned, committed and published in one order, and `newest_id` rises
//! only once everything up to it is committed, so a reader that goes up to
//! `newest_id` can never skip an id that commits later. Publishing happens
//! after the commit and before the ack, through the `Publish` callback the
//! store is opened with; the store never imports the hub.

pub(crate) mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::protocol::ChatMessage;

pub use sqlite::backup::{BackupReport, backup};
pub use sqlite::schema::latest_version as schema_version;

/// Why a store operation failed. Callers log it and tell clients `internal`.
#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    Pool(r2d2::Error),
    /// A write transaction failed (disk full, read-only file, I/O error); it was rolled back.
    Write(String),
    /// The store has stopped (the server is shutting down).
    Closed,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
            StoreError::Pool(e) => write!(f, "connection pool: {e}"),
            StoreError::Write(e) => write!(f, "write failed: {e}"),
            StoreError::Closed => write!(f, "the store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// Runs once, right after the message it belongs to is committed and
/// published, and only if it was newly stored (not for a duplicate, not for
/// a rolled-back write).
pub type AfterCommit = Box<dyn FnOnce() + Send + 'static>;

/// A message to store, already validated.
pub struct NewMessage {
    pub room: String,
    pub nick: String,
    pub text: String,
    pub client_offset: Option<String>,
    /// The sender had a draft in this room: delete its row in the same
    /// transaction, so a crash right after the ack cannot bring it back.
    pub clear_draft: bool,
    pub after_commit: Option<AfterCommit>,
}

/// What an append produced: the stored id and commit time, and whether the
/// `clientOffset` was already stored (then nothing new was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub id: i64,
    pub ts: i64,
    pub duplicate: bool,
}

/// One draft as stored; an empty `text` means "delete it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftRow {
    pub nick: String,
    pub room: String,
    pub text: String,
    pub updated_at: i64,
}

/// One room that has messages, for `GET /api/rooms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomStats {
    pub room: String,
    pub messages: i64,
    pub last_id: i64,
}

/// Called for each committed batch, with its new messages in id order,
/// before any of the batch's acks is sent.
pub type Publish = Box<dyn Fn(&[ChatMessage]) + Send + 'static>;

/// Resolves when the store has stored (or found) the message.
pub type Pending = oneshot::Receiver<Result<Appended, StoreError>>;

/// Cheap to clone; every connection task holds one.
#[derive(Clone)]
pub struct Store {
    engine: sqlite::SqliteStore,
    /// Made when the store was created (protocol "Store identity"); a
    /// restored backup has another, so clients know their offsets are void.
    store_id: Arc<str>,
}

/// Stops the store once every `Store` handle is gone: everything queued is
/// committed first.
pub struct Closer(sqlite::WriterThread);

impl Closer {
    /// Blocks until the store has committed everything queued and closed.
    /// Every `Store` handle must be dropped first, or this waits forever.
    pub fn close(self) {
        self.0.join();
    }
}

/// Open (creating if missing) and migrate the store at `path`. `max_bytes`
/// (0: none) caps its size: writes beyond it fail and are answered
/// `internal`, as on a full disk. The error is one human line naming the cause.
pub fn open(path: &Path, max_bytes: u64, publish: Publish) -> Result<(Store, Closer), String> {
    let (engine, writer) = sqlite::open(path, max_bytes, publish)?;
    let store_id = engine.store_id().map_err(|e| e.to_string())?.into();
    Ok((Store { engine, store_id }, Closer(writer)))
}

impl Store {
    /// The newest committed id in the whole store (0 when empty). Every id
    /// up to it is committed.
    pub fn newest_id(&self) -> i64 {
        self.engine.newest_id()
    }

    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Queue one message for storage. The returned receiver resolves only
    /// after the row is committed (or found already stored under the same
    /// `clientOffset`), so callers can pipeline several appends.
    pub async fn append(&self, message: NewMessage) -> Result<Pending, StoreError> {
        self.engine.append(message).await
    }

    /// Write drafts; resolves once they are committed.
    pub async fn save_drafts(&self, drafts: Vec<DraftRow>) -> Result<(), StoreError> {
        self.engine.save_drafts(drafts).await
    }

    /// Every stored draft, read once at startup.
    pub fn load_drafts(&self) -> Result<Vec<DraftRow>, StoreError> {
        self.engine.load_drafts()
    }

    /// Whether the database answers (`/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.engine.ping().await
    }

    /// The first `limit` committed messages, in id order across rooms, of
    /// each room in `after` above its own id. They hold at least every such
    /// message up to `upto` (an id at or below `newest_id`); whether they go
    /// further is the engine's choice, and only ever by committed ids. The
    /// one read behind every replay and catch-up: see `ws::delivery`.
    pub async fn messages_after(
        &self,
        after: Vec<(Arc<str>, i64)>,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if after.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite's single writer commits ids in order, so whatever a reader
        // sees is a gapless prefix: it may read past `upto`.
        let _ = upto;
        self.engine.messages_after(after, limit).await
    }

    /// The point from which `room`'s newest `count` messages (at least up
    /// to `upto`) follow: the id just under the oldest of them, or 0 when
    /// the room has no more than `count`.
    pub async fn recent_start(&self, room: &str, upto: i64, count: u32) -> Result<i64, StoreError> {
        if count == 0 {
            return Ok(upto);
        }
        self.engine.recent_start(room, count).await
    }

    /// The first `limit` messages of `room` above `after` and below `before`,
    /// ascending, and whether more follow within that range.
    pub async fn messages_between(
        &self,
        room: &str,
        after: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<ChatMessage>, bool), StoreError> {
        self.engine
            .messages_between(room, after, before, limit)
            .await
    }

    /// The newest `limit` messages of `room` below `before` (or the newest of
    /// all), ascending, and whether older ones exist.
    pub async fn messages_before(
        &self,
        room: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<ChatMessage>, bool), StoreError> {
        self.engine.messages_before(room, before, limit).await
    }

    /// Every room that has messages, by name.
    pub async fn room_stats(&self) -> Result<Vec<RoomStats>, StoreError> {
        self.engine.room_stats().await
    }
}

/// Milliseconds since the Unix epoch: commit times, draft times.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A database path for messages and logs: as given, made absolute when possible.
pub fn display_path(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
