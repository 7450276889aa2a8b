//! The real `natter` binary as a child process: its temp dir and SQLite
//! file, its log (kept in the temp dir, printed when a test fails, streamed
//! with `TEST_LOG=1`), the address from its `listening on` line, and
//! stopping, killing and restarting it on the same database.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::lines::{Lines, NoLine};
use crate::process::{self, Signal, Stopped};
use crate::procfs;
use crate::{Error, Result, WAIT};

/// The start of the line natter prints on stdout once it accepts connections.
pub const LISTENING: &str = "listening on http://";

/// How to start the server: the binary, its options and environment, and how
/// long it may take to start or stop.
#[derive(Debug, Clone)]
pub struct Launch {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    wait: Duration,
}

impl Launch {
    /// `bin` is the binary to run: `env!("CARGO_BIN_EXE_natter")` in tests,
    /// the release build in the bench.
    pub fn new(bin: impl Into<PathBuf>) -> Launch {
        Launch {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
            wait: WAIT,
        }
    }

    /// Options after `--addr 127.0.0.1:0 --db PATH`, kept for restarts.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `RUST_LOG` for the server (unset: natter's default).
    pub fn log_filter(mut self, filter: &str) -> Launch {
        self.env.push(("RUST_LOG".into(), filter.into()));
        self
    }

    /// The longest the server may take to print its address, or to exit
    /// once told to stop (default [`WAIT`]).
    pub fn wait(mut self, wait: Duration) -> Launch {
        self.wait = wait;
        self
    }

    /// Start in a new temp dir, on a new `chat.db` in it.
    pub fn start(self) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("chat.db");
        self.start_in(dir, db)
    }

    /// Start on `db` (new or existing), with the log in `dir`, which the
    /// server owns from now on and removes on drop.
    pub fn start_in(self, dir: TempDir, db: PathBuf) -> Result<Server> {
        let mut server = Server {
            log: dir.path().join("server.log"),
            dir,
            db,
            addr: String::new(),
            child: None,
            pid: 0,
            launch: self,
            streamed: crate::logs_wanted(),
        };
        server.spawn("127.0.0.1:0")?;
        Ok(server)
    }
}

/// A running (or stopped) server with its own temp dir and database. Killed
/// with SIGKILL on drop; its log is printed then if the thread is panicking.
pub struct Server {
    pub dir: TempDir,
    pub db: PathBuf,
    /// `127.0.0.1:PORT` of the current run.
    pub addr: String,
    /// The process, while it runs.
    pub child: Option<Child>,
    /// The current (or last) process id.
    pid: u32,
    launch: Launch,
    log: PathBuf,
    /// The log also goes to stderr as it is written (`TEST_LOG`).
    streamed: bool,
}

impl Server {
    fn spawn(&mut self, addr: &str) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Without TEST_LOG the server writes its log file itself: nothing in
        // between that could lag behind or lose the last lines of a kill.
        let stderr = if self.streamed {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone()?)
        };
        let mut child = Command::new(&self.launch.bin)
            .arg("--addr")
            .arg(addr)
            .arg("--db")
            .arg(&self.db)
            .args(&self.launch.args)
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::new(format!("cannot start {}: {e}", self.launch.bin.display())))?;
        if let Some(stderr) = child.stderr.take() {
            // Straight to stderr, past the test harness's capture: TEST_LOG
            // asks for the log while it happens.
            let copies: Vec<Box<dyn Write + Send>> =
                vec![Box::new(log), Box::new(std::io::stderr())];
            Lines::read(stderr, |_| false, copies);
        }
        let stdout = child.stdout.take().ok_or("the server has no stdout")?;
        self.pid = child.id();
        self.child = Some(child);
        match Lines::read(stdout, |l| l.starts_with(LISTENING), Vec::new())
            .next_within(self.launch.wait)
        {
            Ok(line) => {
                self.addr = line[LISTENING.len()..].trim().to_string();
                Ok(())
            }
            Err(why) => {
                let _ = self.kill();
                let when = match why {
                    NoLine::Timeout => format!("within {} s", self.launch.wait.as_secs()),
                    NoLine::Closed => "before its stdout closed".into(),
                };
                Err(Error::new(format!(
                    "the server printed no `listening on` line {when}; its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail(20)
                )))
            }
        }
    }

    /// The process id of the current run (or of the last one, once stopped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://HOST:PORT` plus `path`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://HOST:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Everything the server logged, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// CPU time and memory of the running process.
    pub fn sample(&self) -> Option<procfs::Sample> {
        self.child.as_ref().and(procfs::sample(self.pid))
    }

    /// Send `signal` without waiting for anything (SIGSTOP, SIGCONT, ...).
    pub fn send_signal(&self, signal: Signal) -> Result<()> {
        let child = self.child.as_ref().ok_or("the server is not running")?;
        process::send(child.id(), signal)
    }

    /// SIGTERM, then wait (bounded) for the exit; SIGKILL if it does not
    /// come, which is an error.
    pub fn stop(&mut self) -> Result<Stopped> {
        self.stop_with(Signal::Term)
    }

    /// [`Server::stop`] with another signal (SIGINT, or SIGKILL for a crash).
    pub fn stop_with(&mut self, signal: Signal) -> Result<Stopped> {
        let mut child = self.child.take().ok_or("the server was already stopped")?;
        process::stop(&mut child, signal, self.launch.wait)
            .map_err(|e| Error::new(format!("{e}; log: {}", self.log.display())))
    }

    /// SIGKILL, if it is running: no clean shutdown, no close frames.
    pub fn kill(&mut self) -> Result<()> {
        match self.child.take() {
            Some(mut child) => process::kill(&mut child).map(drop),
            None => Ok(()),
        }
    }

    /// Start the binary again on the same database and log, on a new port
    /// (after SIGKILL if it is still running).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn("127.0.0.1:0")
    }

    /// [`Server::restart`] on the same address, as a restarted deployment.
    pub fn restart_same_port(&mut self) -> Result<()> {
        let addr = self.addr.clone();
        self.kill()?;
        self.spawn(&addr)
    }

    /// Keep the temp dir (database and log) after drop; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
        if std::thread::panicking() && !self.streamed {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}
