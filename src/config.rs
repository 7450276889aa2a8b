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
/// Open WebSockets in total: thousands fit in little memory, but every one is
/// a file descriptor; the limit keeps a flood from exhausting them.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Open WebSockets per client address: a household or office behind one NAT
/// with many tabs stays well under it, one script opening sockets in a loop
/// does not.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Upper bound for the database size when none is given: effectively none.
pub const DEFAULT_MAX_DB_MB: u64 = 0;

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

    /// Open WebSocket connections allowed in total (0: no limit).
    #[arg(long, env = "NATTER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    /// Open WebSocket connections allowed per client IP address (0: no limit).
    #[arg(long = "max-connections-per-ip", env = "NATTER_MAX_CONNECTIONS_PER_IP",
          default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP, value_name = "N")]
    pub max_connections_per_ip: usize,

    /// Reverse proxy whose X-Forwarded-For is believed (IP or CIDR, repeatable).
    /// The default trusts loopback only: a proxy on the same machine.
    #[arg(long = "trusted-proxy", env = "NATTER_TRUSTED_PROXIES", value_delimiter = ',',
          value_name = "ADDR", value_parser = parse_net, default_value = "127.0.0.0/8,::1")]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Largest size the database may grow to, in MiB (0: no limit). Sends
    /// beyond it fail with `internal` until space is freed.
    #[arg(long, env = "NATTER_MAX_DB_MB", default_value_t = DEFAULT_MAX_DB_MB, value_name = "N")]
    pub max_db_mb: u64,
}

/// An address (`10.0.0.1`, `::1`) or a network (`10.0.0.0/8`).
fn parse_net(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{value}` is not an IP address or network"))
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
