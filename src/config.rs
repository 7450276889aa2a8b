//! Command line and environment: every option natter understands, with its default and why.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

/// Largest text a message may carry, in Unicode scalar values. Long enough for a
/// pasted stack trace, short enough that 50 of them fit comfortably in one page.
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4000;
/// Largest client frame. A 4,000-character message of 4-byte characters plus
/// JSON overhead fits; anything larger is abuse or a bug.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 65_536;
/// Sends per connection per 10 s: a fast typist sends about one message a
/// second; 20 leaves room for bursts and pasted lines without allowing a flood.
pub const DEFAULT_SENDS_PER_10S: u32 = 20;
/// Messages shown when a client joins a room without an offset: one screenful
/// and a little scrolling; older ones are paged in on demand.
pub const DEFAULT_HISTORY_ON_JOIN: u32 = 50;
/// How long a nick stays "present" after its last connection went, so that a
/// page reload does not flash "left / joined".
pub const DEFAULT_PRESENCE_GRACE_MS: u64 = 5_000;
/// WebSocket ping interval: under the 60 s idle limit of most reverse proxies.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 20_000;
/// A connection that sent nothing (pongs included) for this long is dead.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Time a new connection has to send a valid `hello`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// natter: a real-time chat server in one binary, with its messages in SQLite.
#[derive(Debug, Parser)]
#[command(
    name = "natter",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy the database consistently to DEST, safe while natter is running on it.
    Backup(BackupArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The database to copy.
    #[arg(long, env = "NATTER_DB", default_value = "chat.db")]
    pub db: PathBuf,
    /// Where to write the copy; must not exist yet.
    pub dest: PathBuf,
}

/// Everything the server needs to run. Options can also come from the
/// environment (`NATTER_*`), which is handy under systemd.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "NATTER_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: String,

    /// SQLite database file, created with its schema when missing.
    #[arg(long, env = "NATTER_DB", default_value = "chat.db")]
    pub db: PathBuf,

    /// Token every client must present (in `hello`, or as a Bearer token on the API).
    #[arg(long, env = "NATTER_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,

    /// Extra origin allowed to open WebSockets (full origin, e.g. https://chat.example.org).
    #[arg(
        long = "allowed-origin",
        env = "NATTER_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Vec<String>,

    /// Longest message text, in characters.
    #[arg(long, env = "NATTER_MAX_TEXT_CHARS", default_value_t = DEFAULT_MAX_TEXT_CHARS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize), value_name = "N")]
    pub max_text_chars: usize,

    /// Sends allowed per connection per 10 seconds (0: no limit).
    #[arg(long = "sends-per-10s", env = "NATTER_SENDS_PER_10S", default_value_t = DEFAULT_SENDS_PER_10S, value_name = "N")]
    pub sends_per_10s: u32,

    /// Messages sent per room on join when the client gives no serverOffset.
    #[arg(long, env = "NATTER_HISTORY_ON_JOIN", default_value_t = DEFAULT_HISTORY_ON_JOIN,
          value_parser = clap::value_parser!(u32).range(0..=10_000), value_name = "N")]
    pub history_on_join: u32,

    /// How long a nick stays present after its last connection closed, in ms.
    #[arg(long, env = "NATTER_PRESENCE_GRACE_MS", default_value_t = DEFAULT_PRESENCE_GRACE_MS, value_name = "N")]
    pub presence_grace_ms: u64,

    /// Largest WebSocket frame a client may send, in bytes (larger: close 1009).
    #[arg(long, env = "NATTER_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216).map(|v| v as usize), value_name = "N")]
    pub max_frame_bytes: usize,

    /// Interval between WebSocket pings, in ms.
    #[arg(long, env = "NATTER_PING_INTERVAL_MS", default_value_t = DEFAULT_PING_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..), value_name = "N")]
    pub ping_interval_ms: u64,

    /// Close a connection that sent nothing (pongs included) for this long, in ms.
    #[arg(long, env = "NATTER_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..), value_name = "N")]
    pub idle_timeout_ms: u64,

    /// Time a new connection has to send a valid `hello`, in ms.
    #[arg(long, env = "NATTER_HANDSHAKE_TIMEOUT_MS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..), value_name = "N")]
    pub handshake_timeout_ms: u64,
}

impl ServeConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}
