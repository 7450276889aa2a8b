//! Admission limits: open connections per client address (through trusted proxies only) and in total.

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{Client, Server};

/// Open a WebSocket, optionally claiming to come from `forwarded_for`;
/// returns the connection or the HTTP status of the refusal.
async fn open(server: &Server, forwarded_for: Option<&str>) -> Result<Client, u16> {
    let mut request = server.ws_url().into_client_request().unwrap();
    if let Some(ip) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(ip).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused_with_429() {
    let server = Server::start(&["--max-connections-per-ip", "3"]);
    let mut open_ones = Vec::new();
    for _ in 0..3 {
        open_ones.push(open(&server, None).await.expect("within the limit"));
    }

    let refused = open(&server, None).await;

    assert_eq!(refused.err(), Some(429));
}

#[tokio::test]
async fn a_closed_connection_frees_its_slot() {
    let server = Server::start(&["--max-connections-per-ip", "1"]);
    let mut first = open(&server, None).await.expect("first");
    assert_eq!(open(&server, None).await.err(), Some(429));

    first.ws.close(None).await.unwrap();
    first.closed().await;

    // The slot is freed when the server's task ends; retry within the bound.
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    loop {
        match open(&server, None).await {
            Ok(_) => break,
            Err(status) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still refused: {status}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_total_limit_are_refused_with_503() {
    let server = Server::start(&["--max-connections", "2", "--max-connections-per-ip", "0"]);
    let _a = open(&server, None).await.expect("first");
    let _b = open(&server, None).await.expect("second");

    let refused = open(&server, None).await;

    assert_eq!(refused.err(), Some(503));
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_counts_each_client_separately() {
    // Loopback is trusted by default: the test client plays the proxy.
    let server = Server::start(&["--max-connections-per-ip", "1"]);

    let _alice = open(&server, Some("198.51.100.1")).await.expect("alice");
    let _bob = open(&server, Some("198.51.100.2")).await.expect("bob");
    let again = open(&server, Some("198.51.100.1")).await;

    assert_eq!(again.err(), Some(429));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let server = Server::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxy",
        "10.9.9.9",
    ]);

    let _first = open(&server, Some("198.51.100.1")).await.expect("first");
    let spoofed = open(&server, Some("198.51.100.2")).await;

    assert_eq!(
        spoofed.err(),
        Some(429),
        "a forged header must not buy a new slot"
    );
}

#[tokio::test]
async fn posts_are_rate_limited_per_forwarded_client() {
    let server = Server::start(&["--sends-per-10s", "1"]);
    let http = reqwest::Client::new();
    let post = |ip: &'static str| {
        http.post(server.http("/api/rooms/general/messages"))
            .header("x-forwarded-for", ip)
            .json(&serde_json::json!({"nick":"bot","text":"hi"}))
            .send()
    };

    assert_eq!(post("198.51.100.1").await.unwrap().status(), 201);
    assert_eq!(post("198.51.100.2").await.unwrap().status(), 201);
    assert_eq!(post("198.51.100.1").await.unwrap().status(), 429);
}
