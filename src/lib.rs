//! natter: a real-time chat server in one binary, with every message in SQLite.
//!
//! # Layout
//! One-way data flow: socket → `protocol` → `messages` → `store` → `hub` →
//! sockets. Each module's first comment says what it owns.
//! - `config`: command line and environment.
//! - `protocol/`: the wire format: client frames parsed and validated,
//!   server frames built (no I/O).
//! - `error`: the error codes clients see, with their HTTP statuses.
//! - `messages`: the path of every message, WebSocket or HTTP, into the store.
//! - `drafts`: unsent text per (nick, room), written at most once a second.
//! - `store/`: the store boundary; `store/sqlite/` the embedded store (single
//!   writer with group commit, read pool, migrations, backup).
//! - `hub/`: rooms in memory: presence, and live fan-out into each
//!   connection's inbox (messages, presence diffs, typing, draft echoes).
//! - `ws/`: one WebSocket connection: upgrade, handshake, delivery (exactly
//!   once, in id order), joins and replay, the live loop, requests.
//! - `http/`: HTTP routes: the page, the API under `/api`, the Origin check,
//!   connection admission, `/healthz`, `/metrics`.
//! - `ratelimit`: the token bucket behind send and post limits.
//! - `metrics`: metric names and the Prometheus rendering.
//! - `shutdown`: SIGINT/SIGTERM.
//!
//! `App::open` opens the store; `App::serve` runs on a listener the caller
//! bound (tests bind port 0) until the shutdown future resolves.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The crate's public surface: what the binary, the tests and the fuzz
// targets use. Everything else is the server's own.
pub mod config;
pub mod error;
pub mod protocol;
pub mod shutdown;
pub mod store;

pub(crate) mod drafts;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod messages;
pub(crate) mod metrics;
pub(crate) mod ratelimit;
pub(crate) mod ws;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::drafts::Drafts;
use crate::http::admission::Admission;
use crate::hub::{Hub, PRESENCE_TICK};
use crate::protocol::Limits;
use crate::store::{Closer, Store};

/// How long shutdown waits for connections to say goodbye before exiting anyway.
const CONNECTION_DRAIN: Duration = Duration::from_secs(10);

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    pub config: ServeConfig,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub drafts: Arc<Drafts>,
    /// HTTP post rate limits per client address.
    pub post_limits: http::api::PostLimits,
    /// Connection limits, in total and per client address.
    pub admission: Admission,
    /// Cancelled when the server stops; every connection task watches it.
    pub shutdown: CancellationToken,
    /// Upgraded WebSockets outlive axum's graceful shutdown, so they are
    /// tracked here and waited for.
    pub tracker: TaskTracker,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    pub fn limits(&self) -> Limits {
        Limits {
            max_text_chars: self.config.max_text_chars,
        }
    }
}

/// An opened store and hub, ready to serve.
pub struct App {
    state: AppState,
    closer: Closer,
}

impl App {
    /// Open (or create) and migrate the database. The error names the file and the cause.
    pub fn open(config: ServeConfig) -> Result<App, String> {
        metrics::install();
        let hub = Arc::new(Hub::new(Duration::from_millis(config.presence_grace_ms)));
        let publisher = hub.clone();
        let cannot_open = |cause| {
            format!(
                "cannot open database {}: {cause}",
                store::display_path(&config.db).display()
            )
        };
        let (store, closer) = store::open(
            &config.db,
            config.max_db_mb.saturating_mul(1024 * 1024),
            Box::new(move |messages| publisher.publish(messages)),
        )
        .map_err(cannot_open)?;
        let drafts = store
            .load_drafts()
            .map_err(|e| cannot_open(e.to_string()))?;
        let state = AppState(Arc::new(Shared {
            drafts: Arc::new(Drafts::load(drafts)),
            post_limits: http::api::PostLimits::default(),
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            store,
            hub,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }));
        Ok(App { state, closer })
    }

    /// Serve until `shutdown` resolves, then stop cleanly: refuse new
    /// connections, close the open ones, commit everything queued, close the database.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App { state, closer } = self;
        let token = state.shutdown.clone();
        let tracker = state.tracker.clone();
        let background = [
            tokio::spawn(every(Duration::from_secs(5), metrics::upkeep)),
            tokio::spawn({
                let hub = state.hub.clone();
                every(PRESENCE_TICK, move || hub.tick(std::time::Instant::now()))
            }),
        ];
        // Not aborted like the others: a flush cut short after taking the
        // dirty drafts and before queueing them would lose them. It stops
        // between flushes once shutdown begins.
        let flusher = tokio::spawn({
            let state = state.clone();
            async move { drafts::run_flusher(&state.drafts, &state.store, &state.shutdown).await }
        });
        let last_flush = state.clone();
        let router = http::router(state);
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        // Small frames (a message, then its ack) must not wait for Nagle's
        // algorithm: without TCP_NODELAY each one can stall ~40 ms.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let result = axum::serve(listener, service)
            .with_graceful_shutdown({
                let token = token.clone();
                async move {
                    tokio::select! {
                        () = shutdown => {}
                        () = token.cancelled() => {}
                    }
                    tracing::info!("shutting down");
                    token.cancel();
                }
            })
            .await;
        token.cancel();
        tracker.close();
        if tokio::time::timeout(CONNECTION_DRAIN, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        for task in background {
            task.abort();
            let _ = task.await;
        }
        let _ = flusher.await;
        // No connection can change a draft any more: write what is pending.
        drafts::flush(&last_flush.drafts, &last_flush.store).await;
        drop(last_flush);
        // The router and every connection have dropped their store handles by
        // now; the writer commits what is queued and stops.
        tokio::task::spawn_blocking(move || closer.close())
            .await
            .ok();
        tracing::info!("stopped");
        result
    }
}

/// Run `f` every `period` until the task is aborted.
async fn every(period: Duration, f: impl Fn()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        f();
    }
}
