//! natter: a real-time chat server in one binary, with every message in SQLite.
//!
//! # Layout
//! - `config`: command line and environment.
//! - `protocol`: the wire format, parsing and validation (no I/O).
//! - `error`: the error codes clients see.
//! - `store`: SQLite: the single writer thread (group commit) and the read pool.
//! - `hub`: rooms in memory: live fan-out, presence, typing, draft echoes.
//! - `presence`: one room's presence: members, grace period, coalesced diffs.
//! - `drafts`: unsent text per (nick, room), written at most once a second.
//! - `ws/`: one WebSocket connection: handshake, replay, live loop, requests.
//! - `web`: HTTP routes, the Origin check.
//! - `page`: the compiled-in page and its assets.
//! - `api`: the HTTP API under `/api` (history, posting).
//! - `ratelimit`: the per-connection send limit.
//! - `admission`: the client's address and the connection limits.
//! - `metrics`: the Prometheus metrics of `/metrics`.
//! - `shutdown`: SIGINT/SIGTERM.
//!
//! `App::open` opens the store; `App::serve` runs on a listener the caller
//! bound (tests bind port 0) until the shutdown future resolves.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admission;
pub mod api;
pub mod config;
pub mod drafts;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod page;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod shutdown;
pub mod store;
pub mod web;
pub mod ws;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::ServeConfig;
use crate::drafts::{DRAFT_FLUSH, Drafts};
use crate::hub::{Hub, PRESENCE_TICK};
use crate::protocol::Limits;
use crate::store::{Appended, NewMessage, Store, StoreError, WriterThread};

/// How long shutdown waits for connections to say goodbye before exiting anyway.
const CONNECTION_DRAIN: Duration = Duration::from_secs(10);

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: ServeConfig,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub drafts: Arc<Drafts>,
    /// HTTP post rate limits per client address.
    pub post_limits: api::PostLimits,
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

    /// The one path every message takes, from a WebSocket `send` or an HTTP
    /// post: clear the sender's draft (telling its tabs other than `origin`),
    /// then queue the message for the single writer, which assigns its id,
    /// commits, broadcasts, and answers on the returned channel.
    pub async fn submit(
        &self,
        room: String,
        nick: String,
        text: String,
        client_offset: Option<String>,
        origin: Option<u64>,
    ) -> Result<Pending, StoreError> {
        let clear_draft = self.drafts.clear(&nick, &room);
        if clear_draft {
            let frame = protocol::draft_frame(&room, "", store::now_ms());
            self.hub
                .to_other_tabs(&room, &nick, origin.unwrap_or(0), frame.into());
        }
        self.store
            .append(NewMessage {
                room,
                nick,
                text,
                client_offset,
                clear_draft,
            })
            .await
    }
}

/// Resolves when the writer has stored (or found) the message.
pub type Pending = tokio::sync::oneshot::Receiver<Result<Appended, StoreError>>;

/// An opened store and hub, ready to serve.
pub struct App {
    state: AppState,
    writer: WriterThread,
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
        let (store, writer) = store::open(
            &config.db,
            config.max_db_mb.saturating_mul(1024 * 1024),
            Box::new(move |message| publisher.publish(message)),
        )
        .map_err(cannot_open)?;
        let drafts = store
            .load_drafts()
            .map_err(|e| cannot_open(e.to_string()))?;
        let state = AppState(Arc::new(Shared {
            drafts: Arc::new(Drafts::load(drafts)),
            post_limits: api::PostLimits::default(),
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            store,
            hub,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }));
        Ok(App { state, writer })
    }

    /// Serve until `shutdown` resolves, then stop cleanly: refuse new
    /// connections, close the open ones, commit everything queued, close the database.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App { state, writer } = self;
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
            async move {
                let mut tick = tokio::time::interval(DRAFT_FLUSH);
                loop {
                    tokio::select! {
                        _ = tick.tick() => flush_drafts(&state).await,
                        () = state.shutdown.cancelled() => break,
                    }
                }
            }
        });
        let last_flush = state.clone();
        let router = web::router(state);
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
        flush_drafts(&last_flush).await;
        drop(last_flush);
        // The router and every connection have dropped their store handles by
        // now; the writer commits what is queued and stops.
        tokio::task::spawn_blocking(move || writer.join())
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

/// Write every draft changed since the last flush in one transaction. On
/// failure the drafts stay dirty and the next flush tries again.
async fn flush_drafts(state: &AppState) {
    let rows = state.drafts.take_dirty();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = state.store.save_drafts(rows.clone()).await {
        tracing::warn!(error = %e, drafts = rows.len(), "could not save drafts; will retry");
        state.drafts.restore_dirty(&rows);
    }
}
