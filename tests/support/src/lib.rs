//! natter-test-support: the real `natter` binary started for a test or the
//! load bench, and a WebSocket client to talk to it. It knows the binary's
//! command line, its `listening on http://HOST:PORT` line and its wire
//! protocol, never natter's library, so the server's internals can move.
//!
//! # Layout
//! - [`server`]: [`Launch`] and [`Server`]: a temp dir with its own SQLite
//!   file, the log kept there, the address, stop / kill / restart.
//! - [`process`]: signals and bounded waits for any child process.
//! - [`lines`]: a child's output read line by line on a thread.
//! - [`procfs`]: a process's CPU time and memory from `/proc`.
//! - [`client`]: a WebSocket [`Client`] speaking JSON frames (tests only).
//!
//! Every wait is bounded. [`Server`] and [`process`] return errors (the bench
//! reports them); [`Client`] panics, because only tests use it and a panic
//! is how a test fails.

pub mod client;
pub mod lines;
pub mod process;
pub mod procfs;
pub mod server;

use std::fmt;
use std::time::Duration;

pub use client::{Client, Event};
pub use process::{Signal, Stopped};
pub use server::{Launch, Server};

/// The longest any single expected event may take in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Something that went wrong starting, stopping or measuring a process, in
/// words fit for a test failure or the bench's error line.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error(e.to_string())
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `TEST_LOG` is set: stream the server's log (and other logs) live.
pub fn logs_wanted() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}
