//! The SQLite store: one file, a single writer thread that commits in batches, and a pool of read-only connections.
//!
//! # Layout
//! - `schema`: migrations, tracked in `PRAGMA user_version`.
//! - `writer`: the thread that owns the only write connection and commits in
//!   batches (group commit); it assigns ids, commits, then publishes, so ids are
//!   committed and broadcast in one order.
//! - `backup`: the consistent online copy behind `natter backup`.
//! - this file: opening, pragmas, the read pool and the read queries.
//!
//! SQLite never runs on the async workers: writes go to the writer thread,
//! reads run on the pool inside `spawn_blocking`.

pub(crate) mod backup;
pub(crate) mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread::JoinHandle;

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::ChatMessage;

use super::{DraftRow, NewMessage, Pending, Publish, RoomStats, StoreError};

/// Cheap to clone; every connection task holds one.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    // Field order is drop order: the readers close before the last sender
    // lets the writer stop, so the writer's connection is the last one and
    // SQLite folds the WAL back into the database file on a clean exit.
    reads: Pool<SqliteConnectionManager>,
    writes: mpsc::Sender<writer::Command>,
    newest_id: Arc<AtomicI64>,
}

/// Owns the writer thread; `close` waits until everything queued is committed.
pub(crate) struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Blocks until the writer has drained its queue and closed the database.
    /// Every `Store` handle must be dropped first, or this waits forever.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// How many writes may wait for the writer before senders wait in turn.
const WRITE_QUEUE: usize = 16_384;
/// Readers: replay and history are short queries; a few cover two cores.
const READ_POOL_SIZE: u32 = 4;
/// How long a statement waits for a lock held by another process (a backup,
/// the sqlite3 shell) before failing.
const BUSY_TIMEOUT_MS: u32 = 5_000;

/// Open (creating if missing) and migrate the database at `path`, start the
/// writer thread. `max_bytes` (0: none) caps the file size: writes beyond it
/// fail and are answered `internal`, as on a full disk. The error is one
/// human line naming the cause.
pub fn open(
    path: &Path,
    max_bytes: u64,
    publish: Publish,
) -> Result<(SqliteStore, WriterThread), String> {
    let mut conn = open_writer_connection(path)?;
    schema::migrate(&mut conn)?;
    if max_bytes > 0 {
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(|e| e.to_string())?;
        let pages = (max_bytes / page_size.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| e.to_string())?;
    }
    let newest: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) FROM messages", [], |row| {
            row.get(0)
        })
        .map_err(|e| e.to_string())?;

    let manager = SqliteConnectionManager::file(path)
        .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_init(|c| {
            c.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
            Ok(())
        });
    let reads = Pool::builder()
        .max_size(READ_POOL_SIZE)
        .min_idle(Some(1))
        .build(manager)
        .map_err(|e| format!("cannot open read connections: {e}"))?;

    let newest_id = Arc::new(AtomicI64::new(newest));
    let (writes, commands) = mpsc::channel(WRITE_QUEUE);
    let thread = writer::spawn(conn, commands, publish, newest_id.clone())
        .map_err(|e| format!("cannot start the writer thread: {e}"))?;
    Ok((
        SqliteStore {
            reads,
            writes,
            newest_id,
        },
        WriterThread(thread),
    ))
}

/// The write connection: WAL so readers never block the writer, and
/// `synchronous=FULL` so a commit (and so an ack) survives power loss, not
/// only a crash of the process. Group commit pays for the extra fsync.
fn open_writer_connection(path: &Path) -> Result<Connection, String> {
    if path.is_dir() {
        return Err("it is a directory, not a file".into());
    }
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "SQLite refused WAL mode; readers may wait for the writer");
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        Ok(())
    };
    setup().map_err(|e| e.to_string())?;
    Ok(conn)
}

impl SqliteStore {
    /// The newest committed message id in the whole store (0 when empty).
    pub fn newest_id(&self) -> i64 {
        self.newest_id.load(Ordering::Acquire)
    }

    /// Append one message through the writer (see `Store::append`).
    pub async fn append(&self, message: NewMessage) -> Result<Pending, StoreError> {
        let (reply, receiver) = oneshot::channel();
        self.writes
            .send(writer::Command::Append { message, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(receiver)
    }

    /// Write drafts through the writer; resolves once they are committed.
    pub async fn save_drafts(&self, drafts: Vec<DraftRow>) -> Result<(), StoreError> {
        let (reply, receiver) = oneshot::channel();
        self.writes
            .send(writer::Command::SaveDrafts { drafts, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        receiver.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Every stored draft, read once at startup.
    pub fn load_drafts(&self) -> Result<Vec<DraftRow>, StoreError> {
        let conn = self.reads.get().map_err(StoreError::Pool)?;
        let mut stmt = conn.prepare("SELECT nick, room, text, updated_at FROM drafts")?;
        let rows = stmt.query_map([], |row| {
            Ok(DraftRow {
                nick: row.get(0)?,
                room: row.get(1)?,
                text: row.get(2)?,
                updated_at: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The store's identity (see `Store::store_id`), made by its migration.
    pub fn store_id(&self) -> Result<String, StoreError> {
        let conn = self.reads.get().map_err(StoreError::Pool)?;
        Ok(
            conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |row| {
                row.get(0)
            })?,
        )
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    /// Run a read on a pooled connection, off the async workers.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.reads.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(StoreError::Pool)?;
            f(&conn).map_err(StoreError::Sqlite)
        })
        .await
        .unwrap_or(Err(StoreError::Closed))
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
        let room = room.to_string();
        let before = before.unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, room, nick, text, ts, client_offset FROM messages
                 WHERE room = ?1 AND id > ?2 AND id < ?3 ORDER BY id LIMIT ?4",
            )?;
            let messages = stmt
                .query_map(params![room, after, before, limit + 1], row_to_message)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(split_extra(messages, limit))
        })
        .await
    }

    /// See `Store::messages_after`. One range scan of the `(room, id)`
    /// index per room, merged by id: SQLite runs a compound `UNION ALL` with
    /// an `ORDER BY` as a merge of its already ordered parts, so a page costs
    /// `limit` rows plus one index seek per room, however far apart the
    /// rooms' starting points are.
    pub async fn messages_after(
        &self,
        after: Vec<(Arc<str>, i64)>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(move |conn| {
            let part = "SELECT id, room, nick, text, ts, client_offset FROM messages \
                        WHERE room = ? AND id > ?";
            let sql = format!(
                "{} ORDER BY id LIMIT ?",
                vec![part; after.len()].join(" UNION ALL ")
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(after.len() * 2 + 1);
            for (room, from) in after {
                values.push(room.to_string().into());
                values.push(from.into());
            }
            values.push((limit as i64).into());
            let rows = stmt.query_map(rusqlite::params_from_iter(values), row_to_message)?;
            rows.collect()
        })
        .await
    }

    /// See `Store::recent_start`.
    pub async fn recent_start(&self, room: &str, count: u32) -> Result<i64, StoreError> {
        let room = room.to_string();
        self.read(move |conn| {
            let oldest: Option<i64> = conn
                .prepare_cached(
                    "SELECT id FROM messages WHERE room = ?1
                     ORDER BY id DESC LIMIT 1 OFFSET ?2",
                )?
                .query_row(params![room, i64::from(count) - 1], |row| row.get(0))
                .optional()?;
            Ok(oldest.map_or(0, |id| id - 1))
        })
        .await
    }

    /// Every room that has messages, by name.
    pub async fn room_stats(&self) -> Result<Vec<RoomStats>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT room, count(*), max(id) FROM messages GROUP BY room ORDER BY room",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(RoomStats {
                    room: row.get(0)?,
                    messages: row.get(1)?,
                    last_id: row.get(2)?,
                })
            })?;
            rows.collect()
        })
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
        let room = room.to_string();
        let before = before.unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, room, nick, text, ts, client_offset FROM messages
                 WHERE room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let newest_first = stmt
                .query_map(params![room, before, limit + 1], row_to_message)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (mut messages, has_more) = split_extra(newest_first, limit);
            messages.reverse();
            Ok((messages, has_more))
        })
        .await
    }
}

/// Queries fetch one row more than asked: its presence says whether there is
/// more, without a COUNT.
fn split_extra(mut messages: Vec<ChatMessage>, limit: i64) -> (Vec<ChatMessage>, bool) {
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    (messages, has_more)
}

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChatMessage> {
    Ok(ChatMessage {
        id: row.get(0)?,
        room: row.get(1)?,
        nick: row.get(2)?,
        text: row.get(3)?,
        ts: row.get(4)?,
        client_offset: row.get(5)?,
    })
}
