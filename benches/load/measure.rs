//! The server seen from inside over a measured window: its CPU time and
//! memory from `/proc` (through `natter-test-support`), the kernel's accept
//! queue overflows, and the store's counters from `/metrics`.

use std::time::{Duration, Instant};

use natter_test_support::procfs::{self, Sample};
use serde_json::Value;
use tokio::time::timeout;

use crate::Report;
use crate::client::Target;
use crate::stats::{mib, ms, r3};

/// Connections the kernel refused because an accept queue was full (every
/// listener in this network namespace, so other processes' too). Each one
/// costs its client a SYN retry after 1 s or more.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let at = names
                .split_whitespace()
                .position(|n| n == "ListenOverflows")?;
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// The counters of `/metrics` the reports use.
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    messages: f64,
    duplicates: f64,
    replayed: f64,
    commits: f64,
    commit_seconds: f64,
}

async fn scrape(target: &Target) -> Option<Scrape> {
    let fetch = async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        client.get(&target.metrics_url).send().await?.text().await
    };
    let body = timeout(Duration::from_secs(5), fetch).await.ok()?.ok()?;
    let mut scrape = Scrape::default();
    for line in body.lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match name {
            "natter_messages_total" => scrape.messages = value,
            "natter_duplicate_sends_total" => scrape.duplicates = value,
            "natter_replayed_messages_total" => scrape.replayed = value,
            "natter_store_commit_seconds_count" => scrape.commits = value,
            "natter_store_commit_seconds_sum" => scrape.commit_seconds = value,
            _ => {}
        }
    }
    Some(scrape)
}

/// The measured window: samples taken at its start.
pub struct Window {
    started: Instant,
    server: Option<Sample>,
    client: Option<Sample>,
    metrics: Option<Scrape>,
    peak_reset: bool,
    overflows: Option<u64>,
}

/// Samples at the start and end of the window.
pub struct Measured {
    pub secs: f64,
    server: Option<(Sample, Sample)>,
    client_cpu_us: Option<u64>,
    peak_reset: bool,
    metrics: Option<(Scrape, Scrape)>,
    listen_overflows: Option<u64>,
}

impl Window {
    pub async fn begin(target: &Target) -> Window {
        let metrics = scrape(target).await;
        let peak_reset = target.pid.is_some_and(procfs::reset_peak_rss);
        Window {
            server: target.pid.and_then(procfs::sample),
            client: procfs::sample(std::process::id()),
            metrics,
            peak_reset,
            overflows: listen_overflows(),
            started: Instant::now(),
        }
    }

    pub async fn end(&self, target: &Target) -> Measured {
        let secs = self.started.elapsed().as_secs_f64();
        let server_after = target.pid.and_then(procfs::sample);
        let client_after = procfs::sample(std::process::id());
        let metrics_after = scrape(target).await;
        Measured {
            secs,
            server: self.server.zip(server_after),
            client_cpu_us: self
                .client
                .zip(client_after)
                .map(|(a, b)| b.cpu_us.saturating_sub(a.cpu_us)),
            peak_reset: self.peak_reset,
            metrics: self.metrics.zip(metrics_after),
            listen_overflows: self
                .overflows
                .zip(listen_overflows())
                .map(|(a, b)| b.saturating_sub(a)),
        }
    }
}

impl Measured {
    fn server_cpu_us(&self) -> Option<u64> {
        self.server.map(|(a, b)| b.cpu_us.saturating_sub(a.cpu_us))
    }

    /// Server CPU µs per unit of work (message, delivery, connection).
    pub fn cpu_per(&self, units: u64) -> Option<f64> {
        let cpu = self.server_cpu_us()?;
        (units > 0).then(|| r3(cpu as f64 / units as f64))
    }

    pub fn rss_before_kib(&self) -> Option<u64> {
        self.server.map(|(a, _)| a.rss_kib)
    }

    pub fn peak_kib(&self) -> Option<u64> {
        self.server.map(|(_, b)| b.hwm_kib)
    }

    /// The figures every scenario reports, and their summary lines.
    pub fn report(&self, report: &mut Report) {
        let pct = |us: u64| r3(us as f64 / 1e6 / self.secs.max(1e-9) * 100.0);
        match self.server {
            Some((before, after)) => {
                let cpu = after.cpu_us.saturating_sub(before.cpu_us);
                report.fig("server_cpu_ms", r3(ms(cpu)));
                report.fig("server_cpu_pct", pct(cpu));
                report.fig("rss_before_mib", mib(before.rss_kib));
                report.fig("rss_after_mib", mib(after.rss_kib));
                report.fig("peak_rss_mib", mib(after.hwm_kib));
                report.line(format!(
                    "server          cpu {:.0} ms ({:.0} % of a core); rss {:.1} -> {:.1} MiB, peak {:.1} MiB{}",
                    ms(cpu),
                    pct(cpu),
                    mib(before.rss_kib),
                    mib(after.rss_kib),
                    mib(after.hwm_kib),
                    if self.peak_reset { " (in the window)" } else { " (since start)" }
                ));
            }
            None => {
                for key in [
                    "server_cpu_ms",
                    "server_cpu_pct",
                    "rss_before_mib",
                    "rss_after_mib",
                    "peak_rss_mib",
                ] {
                    report.fig(key, Value::Null);
                }
                report.line("server          no /proc figures (pass --pid with --url)".into());
            }
        }
        if let Some(cpu) = self.client_cpu_us {
            report.fig("client_cpu_pct", pct(cpu));
            report.line(format!(
                "load generator  cpu {:.0} ms ({:.0} % of a core)",
                ms(cpu),
                pct(cpu)
            ));
        }
        report.fig("listen_overflows", self.listen_overflows);
        if let Some(overflows) = self.listen_overflows.filter(|&n| n > 0) {
            report.line(format!(
                "kernel          {overflows} connects overflowed an accept queue (each waits >= 1 s for a SYN retry)"
            ));
        }
        if let Some((a, b)) = self.metrics {
            let commits = b.commits - a.commits;
            let messages = b.messages - a.messages;
            let replayed = b.replayed - a.replayed;
            let avg_ms =
                (commits > 0.0).then(|| r3((b.commit_seconds - a.commit_seconds) * 1e3 / commits));
            let per_commit = (commits > 0.0).then(|| r3(messages / commits));
            report.fig("commits", commits);
            report.fig("msgs_per_commit", per_commit);
            report.fig("commit_avg_ms", avg_ms);
            report.fig("server_replayed_msgs", replayed);
            report.line(format!(
                "store           {commits} commits, {:.1} msgs/commit, {:.2} ms/commit; {replayed} msgs replayed from the store",
                per_commit.unwrap_or(0.0),
                avg_ms.unwrap_or(0.0)
            ));
        }
    }
}
