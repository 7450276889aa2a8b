//! The single writer: one thread owns the write connection and commits whatever is queued in one transaction.
//!
//! Why one thread: SQLite allows one writer at a time anyway, and a single
//! owner makes "ids are assigned, committed and broadcast in the same order"
//! true by construction. Why batches: with `synchronous=FULL` every commit is
//! an fsync; taking everything that queued up during the previous fsync into
//! the next transaction (group commit) turns N fsyncs into one without adding
//! any waiting when the server is quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::metrics as metrics_names;
use crate::protocol::ChatMessage;
use crate::store::{AfterCommit, Appended, DraftRow, NewMessage, Publish, StoreError, now_ms};

/// Most commands in one transaction: bounds the latency of the first one in a
/// huge burst and the memory held for replies.
const MAX_BATCH: usize = 4_096;

pub(super) enum Command {
    Append {
        message: NewMessage,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    /// Upsert drafts (an empty text deletes the row).
    SaveDrafts {
        drafts: Vec<DraftRow>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Command {
    /// Tell the requester its command was not stored.
    fn fail(self, error: &str) {
        match self {
            Command::Append { reply, .. } => answer_failed(reply, error),
            Command::SaveDrafts { reply, .. } => answer_failed(reply, error),
        }
    }
}

/// Answer a requester whose command was not stored (the requester may have
/// gone; then there is nobody to tell).
fn answer_failed<T>(reply: oneshot::Sender<Result<T, StoreError>>, error: &str) {
    let _ = reply.send(Err(StoreError::Write(error.to_string())));
}

pub(super) fn spawn(
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    publish: Publish,
    newest_id: Arc<AtomicI64>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("natter-writer".into())
        .spawn(move || {
            Writer {
                conn,
                publish,
                newest_id,
                last_ts: 0,
            }
            .run(commands)
        })
}

struct Writer {
    conn: Connection,
    publish: Publish,
    newest_id: Arc<AtomicI64>,
    /// Commit times never go backwards, even if the wall clock does.
    last_ts: i64,
}

/// One command of the current batch, executed and waiting for the commit.
enum Pending {
    Append {
        reply: oneshot::Sender<Result<Appended, StoreError>>,
        outcome: Appended,
        /// The message to publish once committed; `None` for a duplicate.
        fresh: Option<ChatMessage>,
        after_commit: Option<AfterCommit>,
    },
    Drafts {
        reply: oneshot::Sender<Result<(), StoreError>>,
        rows: usize,
    },
}

impl Pending {
    /// The transaction rolled back: nothing this command did was stored.
    fn fail(self, error: &str) {
        match self {
            Pending::Append { reply, .. } => answer_failed(reply, error),
            Pending::Drafts { reply, .. } => answer_failed(reply, error),
        }
    }
}

impl Writer {
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // `blocking_recv` returns `None` once every `Store` handle is gone and
        // the queue is empty: everything sent before shutdown gets committed.
        while let Some(first) = commands.blocking_recv() {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        // Leave a self-contained database file behind, even if some other
        // process still holds the WAL open.
        if let Err(e) = self
            .conn
            .execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);")
        {
            tracing::debug!(error = %e, "closing maintenance failed");
        }
        tracing::debug!("writer stopped");
    }

    fn commit_batch(&mut self, batch: Vec<Command>) {
        let ts = now_ms().max(self.last_ts);
        let size = batch.len();
        let mut commands = batch.into_iter();
        let mut pending = Vec::with_capacity(size);
        let started = Instant::now();
        let result = write_batch(&mut self.conn, &mut commands, ts, &mut pending);
        metrics::histogram!(metrics_names::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.last_ts = ts;
                let (mut stored, mut duplicates, mut drafts) = (0, 0, 0);
                // The whole batch is committed: no reader can have seen an id
                // above `newest_id` once it is raised, before anything goes live.
                let batch_newest = pending
                    .iter()
                    .filter_map(|item| match item {
                        Pending::Append {
                            fresh: Some(message),
                            ..
                        } => Some(message.id),
                        _ => None,
                    })
                    .max();
                if let Some(id) = batch_newest {
                    self.newest_id.fetch_max(id, Ordering::AcqRel);
                }
                // Publish before acking, and in id order: anyone who sees the
                // ack can already find the message live or in the store.
                let mut published = Vec::with_capacity(pending.len());
                let mut hooks = Vec::new();
                for item in &mut pending {
                    match item {
                        Pending::Append {
                            fresh,
                            after_commit,
                            ..
                        } => match fresh.take() {
                            Some(message) => {
                                published.push(message);
                                hooks.extend(after_commit.take());
                            }
                            None => duplicates += 1,
                        },
                        Pending::Drafts { rows, .. } => drafts += *rows as u64,
                    }
                }
                stored += published.len() as u64;
                if !published.is_empty() {
                    (self.publish)(&published);
                }
                for hook in hooks {
                    hook();
                }
                metrics::counter!(metrics_names::MESSAGES).increment(stored);
                metrics::counter!(metrics_names::DUPLICATE_SENDS).increment(duplicates);
                metrics::counter!(metrics_names::DRAFT_WRITES).increment(drafts);
                // The requesters may have gone; what they asked for is stored regardless.
                for item in pending {
                    match item {
                        Pending::Append { reply, outcome, .. } => {
                            let _ = reply.send(Ok(outcome));
                        }
                        Pending::Drafts { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = size, "write transaction failed; nothing in it was stored");
                let error = e.to_string();
                for item in pending {
                    item.fail(&error);
                }
                for command in commands {
                    command.fail(&error);
                }
            }
        }
    }
}

/// Runs the commands in one transaction, moving each into `pending`. On an
/// error the transaction rolls back (on drop), the failing command has been
/// answered, and the caller answers `pending` and whatever is left in `commands`.
fn write_batch(
    conn: &mut Connection,
    commands: &mut std::vec::IntoIter<Command>,
    ts: i64,
    pending: &mut Vec<Pending>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for command in commands.by_ref() {
        let executed = match command {
            Command::Append { mut message, reply } => match append(&tx, &message, ts) {
                Ok((outcome, fresh)) => Ok(Pending::Append {
                    reply,
                    outcome,
                    after_commit: message.after_commit.take(),
                    fresh: fresh.then_some(ChatMessage {
                        id: outcome.id,
                        room: message.room,
                        nick: message.nick,
                        text: message.text,
                        ts,
                        client_offset: message.client_offset,
                    }),
                }),
                Err(e) => {
                    answer_failed(reply, &e.to_string());
                    Err(e)
                }
            },
            Command::SaveDrafts { drafts, reply } => match save_drafts(&tx, &drafts) {
                Ok(()) => Ok(Pending::Drafts {
                    reply,
                    rows: drafts.len(),
                }),
                Err(e) => {
                    answer_failed(reply, &e.to_string());
                    Err(e)
                }
            },
        };
        pending.push(executed?);
    }
    tx.commit()
}

/// Insert one message, or find the one already stored under its `clientOffset`.
/// Returns the outcome and whether a new row was written.
fn append(conn: &Connection, message: &NewMessage, ts: i64) -> rusqlite::Result<(Appended, bool)> {
    // Look first: an INSERT that hits the UNIQUE key would still use up an
    // AUTOINCREMENT id, leaving a hole in the sequence for every retry.
    if let Some(stored) = find_by_client_offset(conn, message.client_offset.as_deref())? {
        return Ok((stored, false));
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO messages (room, nick, text, ts, client_offset) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (client_offset) DO NOTHING",
        )?
        .execute(params![
            message.room,
            message.nick,
            message.text,
            ts,
            message.client_offset
        ])?;
    if inserted == 0 {
        // Only another process writing the same key meanwhile gets here.
        return find_by_client_offset(conn, message.client_offset.as_deref())?
            .map(|stored| (stored, false))
            .ok_or(rusqlite::Error::QueryReturnedNoRows);
    }
    let id = conn.last_insert_rowid();
    if message.clear_draft {
        conn.prepare_cached("DELETE FROM drafts WHERE nick = ?1 AND room = ?2")?
            .execute(params![message.nick, message.room])?;
    }
    Ok((
        Appended {
            id,
            ts,
            duplicate: false,
        },
        true,
    ))
}

fn find_by_client_offset(
    conn: &Connection,
    client_offset: Option<&str>,
) -> rusqlite::Result<Option<Appended>> {
    let Some(client_offset) = client_offset else {
        return Ok(None);
    };
    conn.prepare_cached("SELECT id, ts FROM messages WHERE client_offset = ?1")?
        .query_row(params![client_offset], |row| {
            Ok(Appended {
                id: row.get(0)?,
                ts: row.get(1)?,
                duplicate: true,
            })
        })
        .optional()
}

fn save_drafts(conn: &Connection, drafts: &[DraftRow]) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO drafts (nick, room, text, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (nick, room) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
    )?;
    let mut delete = conn.prepare_cached("DELETE FROM drafts WHERE nick = ?1 AND room = ?2")?;
    for draft in drafts {
        if draft.text.is_empty() {
            delete.execute(params![draft.nick, draft.room])?;
        } else {
            upsert.execute(params![
                draft.nick,
                draft.room,
                draft.text,
                draft.updated_at
            ])?;
        }
    }
    Ok(())
}
