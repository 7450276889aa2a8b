//! natter: a real-time chat server in one binary, with every message in SQLite.
//!
//! # Layout
//! - `config`: command line and environment.
//! - `protocol`: the wire format, parsing and validation (no I/O).
//! - `error`: the error codes clients see.
//! - `store`: SQLite: the single writer thread (group commit) and the read pool.
//! - `hub`: rooms and live fan-out.
//! - `ws`: one WebSocket connection: handshake, replay, live loop.
//! - `web`: HTTP routes, the compiled-in page, the Origin check.
//! - `ratelimit`: the per-connection send limit.
//! - `metrics`: the Prometheus metrics of `/metrics`.
//! - `shutdown`: SIGINT/SIGTERM.
//!
//! `App::open` opens the store; `App::serve` runs on a listener the caller
//! bound (tests bind port 0) until the shutdown future resolves.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod config;
pub mod error;
pub mod hub;
pub mod metrics;
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

use crate::config::ServeConfig;
use crate::hub::Hub;
use crate::protocol::Limits;
use crate::store::{Store, WriterThread};

/// How long shutdown waits for connections to say goodbye before exiting anyway.
const CONNECTION_DRAIN: Duration = Duration::from_secs(10);

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: ServeConfig,
    pub store: Store,
    pub hub: Arc<Hub>,
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
    writer: WriterThread,
}

impl App {
    /// Open (or create) and migrate the database. The error names the file and the cause.
    pub fn open(config: ServeConfig) -> Result<App, String> {
        metrics::install();
        let hub = Arc::new(Hub::new());
        let publisher = hub.clone();
        let (store, writer) =
            store::open(&config.db, Box::new(move |message| publisher.publish(message)))
                .map_err(|cause| {
                    format!(
                        "cannot open database {}: {cause}",
                        store::display_path(&config.db).display()
                    )
                })?;
        let state = AppState(Arc::new(Shared {
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
        let router = web::router(state);
        let upkeep = tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics::upkeep();
            }
        });
        let result = axum::serve(listener, router)
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
        upkeep.abort();
        tracker.close();
        if tokio::time::timeout(CONNECTION_DRAIN, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        // The router and every connection have dropped their store handles by
        // now; the writer commits what is queued and stops.
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .ok();
        tracing::info!("stopped");
        result
    }
}
