//! Section 10: `GET /metrics`: Prometheus text with the section 10 series and their types, and values that follow connections, sends, duplicates, replays and commits.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Server, WAIT, messages, seed};

const CONNECTIONS: &str = "natter_connections";
const MESSAGES: &str = "natter_messages_total";
const DUPLICATES: &str = "natter_duplicate_sends_total";
const REPLAYED: &str = "natter_replayed_messages_total";
const COMMIT_SECONDS: &str = "natter_store_commit_seconds";
const DRAFT_WRITES: &str = "natter_draft_writes_total";

/// One scrape of `/metrics`, parsed.
struct Scrape {
    text: String,
    /// `# TYPE` by metric name.
    types: HashMap<String, String>,
    /// Sample value by series as written: the name, plus `{labels}` if any.
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// Parse the Prometheus text format; a line that is neither a comment nor
    /// `SERIES VALUE [TIMESTAMP]` fails the test.
    fn parse(text: String) -> Scrape {
        let mut types = HashMap::new();
        let mut samples = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line: {line:?}"));
                types.insert(name.to_string(), kind.trim().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            // Label values may hold spaces; the series ends at its closing brace.
            let split = match line.find('{') {
                Some(_) => line.rfind('}').map(|end| end + 1),
                None => line.find(' '),
            };
            let (series, rest) =
                line.split_at(split.unwrap_or_else(|| panic!("bad sample line: {line:?}")));
            let value = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("bad sample value: {line:?}"));
            samples.insert(series.to_string(), value);
        }
        Scrape {
            text,
            types,
            samples,
        }
    }

    /// The value of one series, which must be present.
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.text))
    }

    fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// `(le, cumulative count)` of a histogram's buckets, by increasing `le`.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(series, value)| {
                let labels = series.strip_prefix(&prefix)?;
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                Some((le.parse::<f64>().expect("le"), *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

async fn scrape(server: &Server) -> Scrape {
    let response = reqwest::get(server.http("/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    Scrape::parse(response.text().await.expect("metrics body"))
}

/// Scrape until `series` equals `expected` (a gauge settles once the server
/// has noticed the change); bounded by `WAIT`.
async fn wait_for_value(server: &Server, series: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = scrape(server).await.value(series);
        if value == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed at {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn metrics_is_prometheus_text_with_the_section_10_gauge_and_counters() {
    let server = Server::start(&[]);

    let scrape = scrape(&server).await;

    let expected = [
        (CONNECTIONS, "gauge"),
        (MESSAGES, "counter"),
        (DUPLICATES, "counter"),
        (REPLAYED, "counter"),
        (DRAFT_WRITES, "counter"),
    ];
    for (name, kind) in expected {
        assert_eq!(
            scrape.kind(name),
            Some(kind),
            "TYPE of {name} in\n{}",
            scrape.text
        );
        assert_eq!(scrape.value(name), 0.0, "{name} on a fresh server");
    }
}

#[tokio::test]
async fn store_commit_histogram_has_bucket_sum_and_count_lines() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    alice.say("general", "one commit", "c-1").await;

    let scrape = scrape(&server).await;

    assert_eq!(
        scrape.kind(COMMIT_SECONDS),
        Some("histogram"),
        "{}",
        scrape.text
    );
    let buckets = scrape.buckets(COMMIT_SECONDS);
    let count = scrape.value(&format!("{COMMIT_SECONDS}_count"));
    let sum = scrape.value(&format!("{COMMIT_SECONDS}_sum"));
    assert!(count >= 1.0, "count {count}");
    assert!(sum > 0.0, "sum {sum}");
    assert!(buckets.len() >= 2, "buckets {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets not cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().copied(), Some((f64::INFINITY, count)));
}

#[tokio::test]
async fn store_commit_histogram_is_exposed_before_the_first_write() {
    let server = Server::start(&[]);

    let scrape = scrape(&server).await;

    assert_eq!(
        scrape.kind(COMMIT_SECONDS),
        Some("histogram"),
        "{}",
        scrape.text
    );
    assert_eq!(scrape.value(&format!("{COMMIT_SECONDS}_count")), 0.0);
}

#[tokio::test]
async fn connections_gauge_counts_open_websockets() {
    let server = Server::start(&[]);

    let _alice = server.joined("alice", &["general"]).await;
    let _bob = server.joined("bob", &["general"]).await;
    // Not yet said hello: still an open connection.
    let _carol = server.client().await;

    wait_for_value(&server, CONNECTIONS, 3.0).await;
}

#[tokio::test]
async fn connections_gauge_falls_when_websockets_close() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    let (bob, _) = server.joined("bob", &["general"]).await;
    let _carol = server.joined("carol", &["general"]).await;
    wait_for_value(&server, CONNECTIONS, 3.0).await;

    // One closes cleanly, one just goes away.
    alice.send_raw(Message::Close(None)).await;
    drop(bob);

    wait_for_value(&server, CONNECTIONS, 1.0).await;
}

#[tokio::test]
async fn messages_total_rises_by_exactly_the_number_of_messages_stored() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    alice.say("general", "before", "m-0").await;
    let before = scrape(&server).await.value(MESSAGES);

    for i in 1..=5 {
        alice.say("general", "counted", &format!("m-{i}")).await;
    }

    let after = scrape(&server).await.value(MESSAGES);
    assert_eq!(after - before, 5.0);
}

#[tokio::test]
async fn duplicate_sends_total_rises_by_one_for_a_duplicate_send() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    alice.say("general", "once", "d-1").await;
    let before = scrape(&server).await.value(DUPLICATES);

    let ack = alice.say("general", "once", "d-1").await;

    assert_eq!(ack["duplicate"], true);
    let after = scrape(&server).await.value(DUPLICATES);
    assert_eq!(after - before, 1.0);
}

#[tokio::test]
async fn a_duplicate_send_is_not_counted_as_a_stored_message() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    alice.say("general", "once", "d-1").await;
    let before = scrape(&server).await.value(MESSAGES);

    alice.say("general", "once", "d-1").await;

    let after = scrape(&server).await.value(MESSAGES);
    assert_eq!(after, before);
}

#[tokio::test]
async fn replayed_messages_total_rises_by_the_messages_replayed_on_hello_with_server_offset() {
    let server = Server::start(&[]);
    let newest = seed(&server.db, "general", 20, 5);
    let before = scrape(&server).await.value(REPLAYED);

    let mut alice = server.client().await;
    alice.hello("alice", &["general"], Some(newest - 7)).await;
    let frames = alice.until("synced").await;

    assert_eq!(messages(&frames).len(), 7, "the replay itself");
    let after = scrape(&server).await.value(REPLAYED);
    assert_eq!(after - before, 7.0);
}

#[tokio::test]
async fn store_commit_seconds_count_rises_after_sends() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    alice.say("general", "first commit", "s-0").await;
    let count = format!("{COMMIT_SECONDS}_count");
    let before = scrape(&server).await.value(&count);

    for i in 1..=3 {
        alice
            .send(json!({"type":"send","room":"general","text":"more","clientOffset":format!("s-{i}")}))
            .await;
    }
    for _ in 1..=3 {
        alice.next_of("ack").await;
    }

    let after = scrape(&server).await.value(&count);
    assert!(after > before, "{count} stayed at {before}");
}
