//! Operational metrics: their names, what they count, and the Prometheus text rendering of `/metrics`.
//!
//! Recording goes through the `metrics` facade (a cheap atomic update where it
//! happens); `metrics-exporter-prometheus` formats the text. The recorder is
//! process-wide, installed once by `install`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: open WebSocket connections (after the upgrade, before close).
pub const CONNECTIONS: &str = "natter_connections";
/// Counter: messages stored (new rows, not duplicates).
pub const MESSAGES: &str = "natter_messages_total";
/// Counter: sends answered as duplicates of a stored `clientOffset`.
pub const DUPLICATE_SENDS: &str = "natter_duplicate_sends_total";
/// Counter: messages sent from the store on `hello`/`join`, lag catch-up included.
pub const REPLAYED: &str = "natter_replayed_messages_total";
/// Histogram: seconds per write transaction (group commit, fsync included).
pub const COMMIT_SECONDS: &str = "natter_store_commit_seconds";
/// Counter: draft rows written to (or deleted from) SQLite.
pub const DRAFT_WRITES: &str = "natter_draft_writes_total";

/// Commit times range from well under a millisecond (page cache, fast SSD) to
/// tens of milliseconds (fsync on an SD card or a busy VPS disk).
const COMMIT_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder (once; later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), COMMIT_BUCKETS)
            .ok()?;
        match builder.install_recorder() {
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

fn describe() {
    metrics::describe_gauge!(CONNECTIONS, "Open WebSocket connections.");
    metrics::describe_counter!(MESSAGES, "Messages stored.");
    metrics::describe_counter!(DUPLICATE_SENDS, "Sends answered as duplicates.");
    metrics::describe_counter!(REPLAYED, "Messages sent from the store on hello/join.");
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time per write transaction."
    );
    metrics::describe_counter!(DRAFT_WRITES, "Draft rows written to the store.");
    // Registered up front so a scrape shows every series from the start.
    metrics::gauge!(CONNECTIONS).set(0.0);
    metrics::counter!(MESSAGES).absolute(0);
    metrics::counter!(DUPLICATE_SENDS).absolute(0);
    metrics::counter!(REPLAYED).absolute(0);
    metrics::counter!(DRAFT_WRITES).absolute(0);
    // A histogram appears once it has a sample; a server that has not
    // written yet still shows an empty one.
    let _ = metrics::histogram!(COMMIT_SECONDS);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(handle)) => handle.render(),
        _ => String::new(),
    }
}

/// Histograms keep raw samples until upkeep folds them; run it now and then.
pub fn upkeep() {
    if let Some(Some(handle)) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// Counts one open connection for as long as it lives.
pub struct ConnectionGauge(());

impl ConnectionGauge {
    pub fn open() -> Self {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        ConnectionGauge(())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS).decrement(1.0);
    }
}
