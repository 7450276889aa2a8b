//! Section 10: `natter backup`: a consistent, self-contained copy while the server keeps writing, NATTER_DB, and clean refusals (existing DEST, unusable directory, missing or non-SQLite source).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{BIN, Server, WAIT, run_binary, seed, wait_exit};

/// Sends in flight at once from the writer: enough to keep the store busy,
/// few enough that the server's queue never fills.
const IN_FLIGHT: usize = 256;

/// Acks to wait for before the backup starts, and after it ends.
const ACKS_AROUND_BACKUP: usize = 500;

/// A connection that keeps sending to general, pipelined, until stopped, and
/// records every ack as `(clientOffset, id)`.
struct Writer {
    acked: Arc<Mutex<Vec<(String, i64)>>>,
    count: watch::Receiver<usize>,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<usize>,
    reader: JoinHandle<()>,
}

impl Writer {
    async fn start(server: &Server) -> Writer {
        let (client, _) = server.joined("writer", &["general"]).await;
        let (mut sink, mut stream) = client.ws.split();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (counter, count) = watch::channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let sender = tokio::spawn({
            let stop = stop.clone();
            let slots = slots.clone();
            async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok(slot)) = tokio::time::timeout(WAIT, slots.acquire()).await else {
                        panic!("no ack freed a slot in time");
                    };
                    slot.forget();
                    let frame = json!({"type":"send","room":"general","text":"busy","clientOffset":format!("w-{sent}")});
                    sink.send(Message::text(frame.to_string()))
                        .await
                        .expect("send");
                    sent += 1;
                }
                sent
            }
        });
        let reader = tokio::spawn({
            let acked = acked.clone();
            async move {
                loop {
                    let text = match tokio::time::timeout(WAIT, stream.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => text,
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                        other => panic!("the writer's connection ended: {other:?}"),
                    };
                    let frame: Value = serde_json::from_str(&text).expect("JSON");
                    assert_ne!(frame["type"], "error", "send failed: {frame}");
                    if frame["type"] == "ack" {
                        let offset = frame["clientOffset"].as_str().expect("offset").to_string();
                        let id = frame["id"].as_i64().expect("id");
                        let total = {
                            let mut acked = acked.lock().unwrap();
                            acked.push((offset, id));
                            acked.len()
                        };
                        slots.add_permits(1);
                        let _ = counter.send(total);
                    }
                }
            }
        });
        Writer {
            acked,
            count,
            stop,
            sender,
            reader,
        }
    }

    /// Every ack received so far.
    fn acked(&self) -> Vec<(String, i64)> {
        self.acked.lock().unwrap().clone()
    }

    fn acks(&self) -> usize {
        *self.count.borrow()
    }

    /// Wait (bounded) until at least `total` acks have come.
    async fn wait_for_acks(&mut self, total: usize) {
        // The borrow `wait_for` returns ends with this statement.
        let ok = matches!(
            tokio::time::timeout(WAIT, self.count.wait_for(|n| *n >= total)).await,
            Ok(Ok(_))
        );
        assert!(ok, "only {} of {total} acks in time", self.acks());
    }

    /// Stop sending, wait for the acks of everything sent.
    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = tokio::time::timeout(WAIT, &mut self.sender)
            .await
            .expect("the sender stopped in time")
            .expect("the sender did not fail");
        self.wait_for_acks(sent).await;
        self.reader.abort();
    }
}

/// What a backup taken while the server was busy writing left behind.
struct UnderLoad {
    _server: Server,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    dest: PathBuf,
    /// Acks received before the backup command started.
    acked_before: Vec<(String, i64)>,
    acks_at_start: usize,
    acks_at_end: usize,
    /// The writer got this many more acks after the backup (bounded wait).
    acks_after: usize,
}

/// Start a server, keep a writer sending, and run `natter backup` on its
/// database in the middle of it.
async fn backup_under_load() -> UnderLoad {
    let server = Server::start(&["--sends-per-10s", "0"]);
    // A few megabytes, so the copy takes a moment while the writer goes on.
    seed(&server.db, "archive", 20_000, 200);
    let mut writer = Writer::start(&server).await;
    writer.wait_for_acks(ACKS_AROUND_BACKUP).await;
    let dest = server.dir.path().join("backup.db");

    let acked_before = writer.acked();
    let acks_at_start = writer.acks();
    let (status, stdout, stderr) = {
        let args: Vec<String> = ["backup", "--db", path_str(&server.db), path_str(&dest)]
            .map(String::from)
            .to_vec();
        let cwd = server.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_binary(&args, &cwd)
        })
        .await
        .expect("backup command")
    };
    let acks_at_end = writer.acks();
    writer.wait_for_acks(acks_at_end + ACKS_AROUND_BACKUP).await;
    let acks_after = writer.acks() - acks_at_end;
    writer.stop().await;

    UnderLoad {
        _server: server,
        status,
        stdout,
        stderr,
        dest,
        acked_before,
        acks_at_start,
        acks_at_end,
        acks_after,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `DEST` with `suffix` appended to its file name (`-wal`, `.partial`).
fn beside(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn assert_no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
}

/// A refused backup: exit 1 and exactly one line on stderr, no panic.
fn assert_refused_with_one_line(status: ExitStatus, stderr: &str) {
    assert_no_panic(stderr);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one error line, got: {stderr}"
    );
}

/// Run the binary with a controlled environment (`NATTER_DB` removed unless
/// given in `env`); bounded like `run_binary`.
fn run_with_env(args: &[&str], env: &[(&str, &Path)], cwd: &Path) -> (ExitStatus, String, String) {
    let out = cwd.join("backup.stdout");
    let err = cwd.join("backup.stderr");
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("NATTER_DB")
        .stdout(Stdio::from(
            std::fs::File::create(&out).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&err).expect("stderr file"),
        ));
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("run natter");
    let status = wait_exit(&mut child);
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    (status, read(&out), read(&err))
}

fn message_count(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .expect("open")
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .expect("count")
}

// ---- a backup while the server writes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_the_server_writes_exits_0_printing_one_line() {
    let run = backup_under_load().await;

    assert_no_panic(&run.stderr);
    assert!(
        run.status.success(),
        "{:?}, stderr: {}",
        run.status,
        run.stderr
    );
    assert_eq!(run.stdout.lines().count(), 1, "stdout: {:?}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_the_server_writes_is_one_intact_file_without_a_wal() {
    let run = backup_under_load().await;
    assert!(run.status.success(), "stderr: {}", run.stderr);

    let wal_beside = beside(&run.dest, "-wal").exists();
    let check: String = rusqlite::Connection::open(&run.dest)
        .expect("open the backup")
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");

    assert!(!wal_beside, "a WAL beside the backup");
    assert_eq!(check, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_the_server_writes_holds_every_message_acked_before_it_started() {
    let run = backup_under_load().await;
    assert!(run.status.success(), "stderr: {}", run.stderr);

    let conn = rusqlite::Connection::open(&run.dest).expect("open the backup");
    let mut lookup = conn
        .prepare("SELECT id FROM messages WHERE client_offset = ?1")
        .unwrap();
    let missing: Vec<&(String, i64)> = run
        .acked_before
        .iter()
        .filter(|(offset, id)| lookup.query_row([offset], |r| r.get::<_, i64>(0)).ok() != Some(*id))
        .collect();

    assert!(run.acked_before.len() >= ACKS_AROUND_BACKUP);
    assert!(
        missing.is_empty(),
        "{} of {} acked messages missing from the backup, first {:?}",
        missing.len(),
        run.acked_before.len(),
        missing.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keeps_acknowledging_sends_during_and_after_a_backup() {
    let run = backup_under_load().await;
    assert!(run.status.success(), "stderr: {}", run.stderr);

    assert!(
        run.acks_at_end > run.acks_at_start,
        "no ack while the backup ran ({} before and after)",
        run.acks_at_start
    );
    assert!(run.acks_after >= ACKS_AROUND_BACKUP);
}

// ---- where the source comes from ----

#[tokio::test]
async fn backup_reads_the_database_named_by_natter_db_when_no_db_is_given() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 5, 10);
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let dest = elsewhere.path().join("backup.db");

    let (status, _, stderr) = run_with_env(
        &["backup", path_str(&dest)],
        &[("NATTER_DB", &server.db)],
        elsewhere.path(),
    );

    assert_no_panic(&stderr);
    assert!(status.success(), "{status:?}, stderr: {stderr}");
    assert_eq!(message_count(&dest), 5);
}

// ---- refusals ----

#[test]
fn backup_to_an_existing_file_exits_1_and_leaves_it_untouched() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 5, 10);
    let dest = server.dir.path().join("precious.db");
    let original = b"an earlier backup, not to be overwritten\n".to_vec();
    std::fs::write(&dest, &original).unwrap();

    let (status, _, stderr) = run_binary(
        &["backup", "--db", path_str(&server.db), path_str(&dest)],
        server.dir.path(),
    );

    assert_refused_with_one_line(status, &stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), original);
}

#[test]
fn backup_into_a_directory_that_does_not_exist_exits_1_leaving_nothing() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 5, 10);
    let dest = server.dir.path().join("no-such-dir").join("backup.db");

    let (status, _, stderr) = run_binary(
        &["backup", "--db", path_str(&server.db), path_str(&dest)],
        server.dir.path(),
    );

    assert_refused_with_one_line(status, &stderr);
    assert!(!dest.exists(), "DEST left behind");
    assert!(
        !beside(&dest, ".partial").exists(),
        "DEST.partial left behind"
    );
}

/// Tests may run as root, which writes through any permission bits; a path
/// whose parent is a regular file cannot be written by anyone.
#[test]
fn backup_into_a_directory_that_cannot_be_written_exits_1_leaving_nothing() {
    let server = Server::start(&[]);
    seed(&server.db, "general", 5, 10);
    let not_a_dir = server.dir.path().join("plain-file");
    std::fs::write(&not_a_dir, b"a file, not a directory\n").unwrap();
    let dest = not_a_dir.join("backup.db");

    let (status, _, stderr) = run_binary(
        &["backup", "--db", path_str(&server.db), path_str(&dest)],
        server.dir.path(),
    );

    assert_refused_with_one_line(status, &stderr);
    assert!(!dest.exists(), "DEST left behind");
    assert!(
        !beside(&dest, ".partial").exists(),
        "DEST.partial left behind"
    );
}

#[test]
fn backup_of_a_missing_source_exits_1_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("missing.db");
    let dest = dir.path().join("backup.db");

    let (status, _, stderr) = run_binary(
        &["backup", "--db", path_str(&src), path_str(&dest)],
        dir.path(),
    );

    assert_refused_with_one_line(status, &stderr);
    assert!(!dest.exists(), "DEST left behind");
}

#[test]
fn backup_of_a_file_that_is_not_sqlite_exits_1_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("notes.db");
    std::fs::write(&src, "these are notes, not a database\n".repeat(200)).unwrap();
    let dest = dir.path().join("backup.db");

    let (status, _, stderr) = run_binary(
        &["backup", "--db", path_str(&src), path_str(&dest)],
        dir.path(),
    );

    assert_refused_with_one_line(status, &stderr);
    assert!(!dest.exists(), "DEST left behind");
    assert!(
        !beside(&dest, ".partial").exists(),
        "DEST.partial left behind"
    );
}
