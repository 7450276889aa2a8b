//! `natter backup`: a consistent copy of the live database through SQLite's online backup API.
//!
//! The copy is taken in one step, inside one read transaction, so it is a
//! snapshot of a single moment even while the server keeps committing (WAL
//! mode lets the writer go on meanwhile). It is written to `DEST.partial`,
//! checked, synced and only then renamed to DEST, so DEST is either a
//! complete backup or absent. A file copy of a database in WAL mode could
//! miss committed transactions still in the WAL; this cannot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// What a finished backup holds.
#[derive(Debug)]
pub struct BackupReport {
    pub messages: i64,
    pub newest_id: i64,
    pub bytes: u64,
}

/// A writer holds its lock only for the length of one commit; a few retries
/// cover a busy moment.
const BUSY_RETRIES: u32 = 50;
const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// Copy the database at `source` to `dest`, which must not exist yet.
pub fn backup(source: &Path, dest: &Path) -> Result<BackupReport, String> {
    if dest.exists() {
        return Err(format!(
            "{} already exists; natter never overwrites a file, choose a new path",
            dest.display()
        ));
    }
    if !source.is_file() {
        return Err(format!("{} is not a database file", source.display()));
    }
    // Read-write (never creating) when allowed, so that when no server is
    // running the last connection to close tidies the WAL away; read-only
    // otherwise, which is all the copy needs.
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .or_else(|_| Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY))
        .map_err(|e| format!("cannot open {}: {e}", source.display()))?;
    src.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    // Fails early, with a clear message, on a file that is not SQLite.
    src.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;

    let partial = partial_path(dest);
    let _ = std::fs::remove_file(&partial); // a leftover of an interrupted run
    let result = copy(&src, &partial).and_then(|report| {
        sync_file(&partial)?;
        std::fs::rename(&partial, dest)
            .map_err(|e| format!("cannot move the backup into place: {e}"))?;
        sync_parent(dest);
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn copy(src: &Connection, partial: &Path) -> Result<BackupReport, String> {
    let cannot_write = |e: rusqlite::Error| format!("cannot write {}: {e}", partial.display());
    let mut dst = Connection::open(partial).map_err(cannot_write)?;
    {
        let backup = Backup::new(src, &mut dst).map_err(cannot_write)?;
        let mut retries = 0;
        loop {
            // -1: every page in one step, so the copy is one snapshot.
            match backup.step(-1).map_err(cannot_write)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    retries += 1;
                    if retries > BUSY_RETRIES {
                        return Err("the database stayed locked; try again".into());
                    }
                    std::thread::sleep(BUSY_PAUSE);
                }
                _ => {}
            }
        }
    }
    // A backup is one self-contained file: no WAL beside it.
    dst.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))
        .map_err(cannot_write)?;
    // A copy is another store: a client that kept offsets from the live one
    // must not trust them against a restore of this copy (protocol "Store
    // identity"). A database from before store ids gets one when a server
    // next opens it.
    dst.execute(
        "UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'store_id'",
        [],
    )
    .or_else(|e| match &e {
        rusqlite::Error::SqliteFailure(_, Some(message)) if message.contains("no such table") => {
            Ok(0)
        }
        _ => Err(e),
    })
    .map_err(cannot_write)?;
    let check: String = dst
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(cannot_write)?;
    if check != "ok" {
        return Err(format!("the copy failed its integrity check: {check}"));
    }
    let (messages, newest_id) = dst
        .query_row(
            "SELECT count(*), coalesce(max(id), 0) FROM messages",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(|e| format!("the copy is not a natter database: {e}"))?;
    drop(dst);
    let bytes = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        messages,
        newest_id,
        bytes,
    })
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn sync_file(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", path.display()))
}

/// Make the rename itself durable (best effort: not every platform can).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let dir = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}
