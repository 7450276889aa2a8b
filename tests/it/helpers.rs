//! Test harness: the real `natter` binary on 127.0.0.1:0 with its own SQLite file, and a WebSocket client.
//!
//! Every wait is bounded (`WAIT`), so a broken server fails a test instead of hanging it.
//! The server's log is kept in the temp dir and printed when a test fails; set
//! `TEST_LOG=1` to also see it live on stderr.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// The longest any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub const BIN: &str = env!("CARGO_BIN_EXE_natter");

/// A running server process with its own temp dir and database.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub addr: String,
    pub child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

impl Server {
    /// Start with default options plus `args`.
    pub fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("chat.db");
        Self::start_in(dir, db, args)
    }

    /// Start on an existing database file (for example a copy of chat.db.example).
    pub fn start_in(dir: tempfile::TempDir, db: PathBuf, args: &[&str]) -> Server {
        let log = dir.path().join("server.log");
        let mut server = Server {
            dir,
            db,
            addr: String::new(),
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            log,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = Command::new(BIN)
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(&self.db)
            .args(&self.args)
            .env("RUST_LOG", "natter=debug,warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start natter");
        let stdout = child.stdout.take().expect("stdout");
        self.addr = read_listening_line(stdout);
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connect, say hello as `nick` in `rooms`, and read up to `synced`.
    /// Returns the client and every frame before `synced`, plus `synced`.
    pub async fn joined(&self, nick: &str, rooms: &[&str]) -> (Client, Vec<Value>) {
        let mut client = self.client().await;
        client
            .send(json!({"type":"hello","nick":nick,"rooms":rooms}))
            .await;
        let frames = client.until("synced").await;
        (client, frames)
    }

    /// Send a signal and wait (bounded) for the process to exit.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
        wait_exit(&mut child)
    }

    /// Start the same binary again on the same database (a new port).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.signal("KILL");
        }
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}

pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read stdout until `listening on http://HOST:PORT`; returns `HOST:PORT`.
fn read_listening_line(stdout: impl Read + Send + 'static) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("server printed no listening line");
    line.strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"))
        .to_string()
}

/// Run the binary to completion with `args` (for command-line errors).
pub fn run_binary(args: &[&str], cwd: &Path) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run natter");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child);
    (status, out.join().unwrap(), err.join().unwrap())
}

/// A WebSocket client speaking JSON frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while looking for something else (an ack), returned first by `recv`.
    stash: std::collections::VecDeque<Value>,
}

/// What `next_event` saw.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Ping,
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client {
            ws,
            stash: Default::default(),
        }
    }

    /// Wrap a stream opened by hand (custom headers).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            stash: Default::default(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next JSON frame, skipping pings; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.stash.pop_front() {
            return frame;
        }
        match self.next_event(WAIT).await {
            Some(Event::Frame(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next event within `within`, or `None` if nothing came.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("server sent JSON");
                    return Some(Event::Frame(value));
                }
                Some(Ok(Message::Ping(_))) => return Some(Event::Ping),
                Some(Ok(Message::Close(frame))) => {
                    return Some(Event::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Event::Closed(None)),
            }
        }
    }

    /// A frame if one arrives within `within` (skipping pings).
    pub async fn maybe_recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(frame) = self.stash.pop_front() {
            return Some(frame);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(v)) => return Some(v),
                Some(Event::Ping) => continue,
                _ => return None,
            }
        }
    }

    /// Frames up to and including the first of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.until(kind).await.pop().expect("frame")
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_event(WAIT).await {
                Some(Event::Closed(code)) => return code,
                Some(_) => continue,
                None => panic!("connection was not closed in time"),
            }
        }
    }

    pub async fn hello(&mut self, nick: &str, rooms: &[&str], offset: Option<i64>) {
        let mut hello = json!({"type":"hello","nick":nick,"rooms":rooms});
        if let Some(offset) = offset {
            hello["serverOffset"] = json!(offset);
        }
        self.send(hello).await;
    }

    /// Send a message and wait for its ack; other frames stay for `recv`.
    pub async fn say(&mut self, room: &str, text: &str, client_offset: &str) -> Value {
        self.send(json!({"type":"send","room":room,"text":text,"clientOffset":client_offset}))
            .await;
        let mut skipped = Vec::new();
        loop {
            let frame = match self.next_event(WAIT).await {
                Some(Event::Frame(frame)) => frame,
                Some(Event::Ping) => continue,
                other => panic!("no ack for {client_offset}: {other:?}"),
            };
            if frame["type"] == "ack" && frame["clientOffset"] == client_offset {
                self.stash.extend(skipped);
                return frame;
            }
            assert_ne!(frame["type"], "error", "send failed: {frame}");
            skipped.push(frame);
        }
    }

    /// Is the connection still usable? An application ping must get a pong.
    pub async fn assert_usable(&mut self) {
        self.send(json!({"type":"ping"})).await;
        let frame = self.recv().await;
        assert_eq!(frame["type"], "pong", "connection not usable: {frame}");
    }
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

/// Resident memory of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc status")
}
