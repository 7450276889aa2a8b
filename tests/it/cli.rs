//! Section 10: the command line and environment, exit codes, the stdout line, durability across kills and clean shutdown.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use futures_util::{SinkExt, StreamExt};
use natter_test_support::lines::{Lines, NoLine};
use natter_test_support::{Signal, process};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{BIN, Client, Server, WAIT, ids, run_binary};

/// The binary started by hand, for what `Server` hides: every stdout line,
/// stderr, and the environment.
struct Process {
    child: Child,
    stdout: Lines,
    stderr: std::path::PathBuf,
}

impl Process {
    fn start(dir: &Path, configure: impl FnOnce(&mut Command)) -> Process {
        let stderr = dir.join("stderr.log");
        let mut command = Command::new(BIN);
        command
            .current_dir(dir)
            .env_remove("NATTER_ADDR")
            .env_remove("NATTER_DB")
            .env("RUST_LOG", "natter=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        configure(&mut command);
        let mut child = command.spawn().expect("start natter");
        let stdout = Lines::read(child.stdout.take().unwrap(), |_| true, Vec::new());
        Process {
            child,
            stdout,
            stderr,
        }
    }

    fn first_line(&self) -> String {
        self.stdout
            .next_within(WAIT)
            .expect("no line on stdout in time")
    }

    /// SIGTERM, wait for the exit, and return the status and the rest of stdout.
    fn stop(&mut self) -> (ExitStatus, Vec<String>) {
        let status = process::stop(&mut self.child, Signal::Term, WAIT)
            .expect("stop natter")
            .status;
        // Exited: the reader thread reaches EOF and the channel disconnects.
        let mut rest = Vec::new();
        loop {
            match self.stdout.next_within(WAIT) {
                Ok(line) => rest.push(line),
                Err(NoLine::Closed) => return (status, rest),
                Err(NoLine::Timeout) => panic!("stdout still open after exit"),
            }
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = process::kill(&mut self.child);
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send `count` messages to general without waiting, then wait for every ack.
async fn send_pipelined(client: &mut Client, count: usize) -> Vec<i64> {
    for i in 0..count {
        client
            .send(json!({"type":"send","room":"general","text":format!("m{i}"),"clientOffset":format!("p-{i}")}))
            .await;
    }
    let mut acked = Vec::with_capacity(count);
    while acked.len() < count {
        let frame = client.recv().await;
        assert_ne!(frame["type"], "error", "send failed: {frame}");
        if frame["type"] == "ack" {
            acked.push(frame["id"].as_i64().unwrap());
        }
    }
    acked
}

fn stored_ids(server: &Server) -> Vec<i64> {
    let conn = server.sqlite();
    let mut stmt = conn.prepare("SELECT id FROM messages ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The one stderr line of a failed start; a panic or extra lines fail the test.
fn single_error_line(status: ExitStatus, stderr: &str) -> String {
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    lines[0].to_string()
}

#[tokio::test]
async fn stdout_is_only_the_listening_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = Process::start(dir.path(), |c| {
        c.args(["--addr", "127.0.0.1:0", "--db", "chat.db"]);
    });
    let first = process.first_line();
    // Some activity, so that there is something to log.
    let addr = first
        .strip_prefix("listening on http://")
        .unwrap_or_default();
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    client.hello("alice", &["general"], None).await;
    client.until("synced").await;
    client.say("general", "hi", "a-1").await;

    let (_, rest) = process.stop();

    let port: u16 = first
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("first line: {first:?}"));
    assert_ne!(port, 0);
    assert_eq!(rest, Vec::<String>::new());
    assert!(!process.stderr().is_empty(), "the logs went nowhere");
}

#[test]
fn natter_addr_sets_the_listening_address() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();

    let process = Process::start(dir.path(), |c| {
        c.env("NATTER_ADDR", format!("127.0.0.1:{port}"))
            .args(["--db", "chat.db"]);
    });

    assert_eq!(
        process.first_line(),
        format!("listening on http://127.0.0.1:{port}")
    );
}

#[test]
fn natter_db_sets_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-env.db");

    let process = Process::start(dir.path(), |c| {
        c.env("NATTER_DB", &db).args(["--addr", "127.0.0.1:0"]);
    });
    process.first_line();

    let tables: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'messages'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1, "schema not created in NATTER_DB");
    assert!(!dir.path().join("chat.db").exists(), "default chat.db used");
}

#[tokio::test]
async fn acked_messages_survive_kill_9() {
    let mut server = Server::start(&["--sends-per-10s", "0"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let acked = send_pipelined(&mut alice, 200).await;

    server.signal("KILL");
    server.restart();

    assert_eq!(stored_ids(&server), acked);
    let mut back = server.client().await;
    back.hello("alice", &["general"], Some(0)).await;
    assert_eq!(ids(&back.until("synced").await), acked);
}

#[test]
fn sigterm_stops_the_server_with_exit_code_0() {
    let mut server = Server::start(&[]);

    // At once after the listening line, as a supervisor may: a bound server
    // must already be listening for the signal.
    let status = server.signal("TERM");

    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_stops_the_server_with_exit_code_0() {
    let mut server = Server::start(&[]);

    // At once after the listening line, as a supervisor may: a bound server
    // must already be listening for the signal.
    let status = server.signal("INT");

    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn shutdown_closes_open_websockets_with_1001() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start(&[]);
        let (mut alice, _) = server.joined("alice", &["general"]).await;

        server.signal(signal);

        assert_eq!(alice.closed().await, Some(1001), "SIG{signal}");
    }
}

#[tokio::test]
async fn messages_acked_before_shutdown_are_in_the_database() {
    let mut server = Server::start(&["--sends-per-10s", "0"]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let acked = send_pipelined(&mut alice, 50).await;

    server.signal("INT");

    assert_eq!(stored_ids(&server), acked);
}

#[test]
fn port_refuses_connections_after_shutdown() {
    let mut server = Server::start(&[]);

    server.signal("TERM");

    let refused = std::net::TcpStream::connect(&server.addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// More sends than the server can take before the signal stops it.
const HEAVY_SENDS: usize = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_heavy_sending_loses_no_acknowledged_message() {
    let mut server = Server::start(&["--sends-per-10s", "0"]);
    let (alice, _) = server.joined("alice", &["general"]).await;
    let (mut sink, mut stream) = alice.ws.split();
    let (midway, reached) = tokio::sync::oneshot::channel();
    // Sends as fast as the socket takes them until the server is gone.
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < HEAVY_SENDS {
            let frame = json!({"type":"send","room":"general","text":"heavy","clientOffset":format!("h-{sent}")});
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    // Collects (clientOffset, id) of every ack until the connection ends.
    let reader = tokio::spawn(async move {
        let mut midway = Some(midway);
        let mut acked: Vec<(String, i64)> = Vec::new();
        loop {
            let text = match tokio::time::timeout(WAIT, stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break,
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "ack" {
                let client_offset = frame["clientOffset"].as_str().unwrap().to_string();
                acked.push((client_offset, frame["id"].as_i64().unwrap()));
            }
            if acked.len() >= 1_000
                && let Some(midway) = midway.take()
            {
                let _ = midway.send(());
            }
        }
        acked
    });
    tokio::time::timeout(WAIT, reached)
        .await
        .expect("1,000 acks in time")
        .unwrap();

    tokio::task::block_in_place(|| server.signal("TERM"));

    let acked = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    let sent = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    assert!(sent < HEAVY_SENDS, "the sender finished before the signal");
    let conn = server.sqlite();
    let mut lookup = conn
        .prepare("SELECT id FROM messages WHERE client_offset = ?1")
        .unwrap();
    for (client_offset, id) in &acked {
        let stored: Option<i64> = lookup.query_row([client_offset], |r| r.get(0)).ok();
        assert_eq!(stored, Some(*id), "acked {client_offset} is not stored");
    }
}

#[test]
fn database_path_that_is_a_directory_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a-directory");
    std::fs::create_dir(&db).unwrap();

    let (status, _, stderr) = run_binary(
        &["--addr", "127.0.0.1:0", "--db", db.to_str().unwrap()],
        dir.path(),
    );

    let line = single_error_line(status, &stderr);
    assert!(line.contains(db.to_str().unwrap()), "{line}");
    assert!(line.contains("directory"), "{line}");
}

#[test]
fn database_file_that_is_not_sqlite_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.txt");
    std::fs::write(&db, "these are my notes, not a database\n".repeat(200)).unwrap();

    let (status, _, stderr) = run_binary(
        &["--addr", "127.0.0.1:0", "--db", db.to_str().unwrap()],
        dir.path(),
    );

    let line = single_error_line(status, &stderr);
    assert!(line.contains(db.to_str().unwrap()), "{line}");
    assert!(line.contains("not a database"), "{line}");
}

#[test]
fn database_with_a_newer_schema_exits_1_naming_it() {
    let mut server = Server::start(&[]);
    server.signal("TERM");
    server
        .sqlite()
        .execute_batch("PRAGMA user_version = 999")
        .unwrap();
    let db = server.db.to_str().unwrap();

    let (status, _, stderr) = run_binary(&["--addr", "127.0.0.1:0", "--db", db], server.dir.path());

    let line = single_error_line(status, &stderr);
    assert!(line.contains(db), "{line}");
    assert!(line.contains("999"), "{line}");
}

#[test]
fn bad_command_line_values_exit_1_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, named) in [
        (&["--max-text-chars", "abc"][..], "--max-text-chars"),
        (&["--max-text-chars", "0"][..], "--max-text-chars"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let (status, _, stderr) = run_binary(args, dir.path());

        let line = single_error_line(status, &stderr);
        assert!(line.contains(named), "{args:?}: {line}");
    }
}

#[test]
fn help_exits_0_and_prints_the_options() {
    let dir = tempfile::tempdir().unwrap();

    let (status, stdout, _) = run_binary(&["--help"], dir.path());

    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("--db"), "{stdout}");
}

#[test]
fn version_exits_0_and_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();

    let (status, stdout, _) = run_binary(&["--version"], dir.path());

    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stdout.trim(),
        format!("natter {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn address_in_use_exits_1_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let (status, _, stderr) = run_binary(&["--addr", &addr, "--db", "chat.db"], dir.path());

    let line = single_error_line(status, &stderr);
    assert!(line.contains(&addr), "{line}");
}
