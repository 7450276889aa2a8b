//! Test harness: the real `natter` binary on 127.0.0.1:0 with its own SQLite
//! file (`natter-test-support`), plus what only these tests need: direct
//! database access, seeding, and frame filters.
//!
//! Every wait is bounded (`WAIT`), so a broken server fails a test instead of hanging it.
//! The server's log is kept in the temp dir and printed when a test fails; set
//! `TEST_LOG=1` to see it live on stderr instead.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use natter_test_support::{Launch, Signal, procfs};
use serde_json::Value;

pub use natter_test_support::{Client, Event, WAIT};

pub const BIN: &str = env!("CARGO_BIN_EXE_natter");

/// A running server process with its own temp dir and database; the shared
/// `Server`'s fields and methods (`db`, `dir`, `addr`, `pid()`, `http()`,
/// `ws_url()`, `log()`) through `Deref`, and these tests' own on top.
pub struct Server(natter_test_support::Server);

impl Deref for Server {
    type Target = natter_test_support::Server;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn launch(args: &[&str]) -> Launch {
    Launch::new(BIN)
        .args(args.iter().copied())
        .log_filter("natter=debug,warn")
}

impl Server {
    /// Start with default options plus `args`.
    pub fn start(args: &[&str]) -> Server {
        Server(launch(args).start().expect("start natter"))
    }

    /// Start on an existing database file (for example a copy of chat.db.example).
    pub fn start_in(dir: tempfile::TempDir, db: PathBuf, args: &[&str]) -> Server {
        Server(launch(args).start_in(dir, db).expect("start natter"))
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connect, say hello as `nick` in `rooms`, and read up to `synced`.
    /// Returns the client and every frame before `synced`, plus `synced`.
    pub async fn joined(&self, nick: &str, rooms: &[&str]) -> (Client, Vec<Value>) {
        Client::join(&self.ws_url(), nick, rooms).await
    }

    /// Send a signal (`"TERM"`, `"INT"`, `"KILL"`) and wait (bounded) for the process to exit.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let signal = Signal::named(signal).expect("a signal name");
        self.0.stop_with(signal).expect("stop natter").status
    }

    /// Start the same binary again on the same database (a new port).
    pub fn restart(&mut self) {
        self.0.restart().expect("restart natter");
    }

    /// A direct connection to the database file, as `sqlite3` would open it.
    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db).expect("open db")
    }

    pub fn count_rows(&self, sql_where: &str) -> i64 {
        self.sqlite()
            .query_row(
                &format!("SELECT count(*) FROM messages WHERE {sql_where}"),
                [],
                |r| r.get(0),
            )
            .expect("count")
    }
}

/// Wait (bounded) for a process a test started itself; killed and a panic after `WAIT`.
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    natter_test_support::process::wait_exit(child, WAIT).expect("process did not exit in time")
}

/// Run the binary to completion with `args` (for command-line errors).
pub fn run_binary(args: &[&str], cwd: &Path) -> (ExitStatus, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(cwd);
    let done = natter_test_support::process::run_to_end(&mut command, WAIT).expect("run natter");
    (done.status, done.stdout, done.stderr)
}

/// The `message` frames among `frames`.
pub fn messages(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "message").collect()
}

pub fn ids(frames: &[Value]) -> Vec<i64> {
    messages(frames)
        .iter()
        .map(|f| f["id"].as_i64().expect("id"))
        .collect()
}

/// Insert `n` messages straight into the database (with the server stopped
/// or running: SQLite handles the locking), returning the last id.
pub fn seed(db: &Path, room: &str, n: usize, text_len: usize) -> i64 {
    let mut conn = rusqlite::Connection::open(db).expect("open");
    let tx = conn.transaction().expect("tx");
    let text = "x".repeat(text_len);
    {
        let mut stmt = tx
            .prepare("INSERT INTO messages (room, nick, text, ts) VALUES (?1, 'seed', ?2, 0)")
            .expect("prepare");
        for _ in 0..n {
            stmt.execute(rusqlite::params![room, text]).expect("insert");
        }
    }
    let last: i64 = tx
        .query_row("SELECT max(id) FROM messages", [], |r| r.get(0))
        .expect("max");
    tx.commit().expect("commit");
    last
}

/// Resident memory of a process, in KiB, from /proc (`"VmRSS:"`, `"VmHWM:"`).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    procfs::status_kib(pid, field).expect("field in /proc status")
}
