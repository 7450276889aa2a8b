//! Section 1: the WebSocket transport: text-only frames, size limit, pings, idle and handshake deadlines, Origin.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameSocket};

use crate::helpers::{Client, Event, Server, WAIT};

/// The largest frame the server writes (`socket::FRAGMENT`).
const MAX_SERVER_FRAME: usize = 2 * 1024;

#[tokio::test]
async fn binary_frame_gets_unsupported_and_connection_stays_open() {
    let server = Server::start(&[]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    client.send_raw(Message::binary(vec![1u8, 2, 3])).await;

    let error = client.recv().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unsupported");
    client.assert_usable().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = Server::start(&["--max-frame-bytes", "2048"]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    let text = "a".repeat(4000);
    client
        .send(json!({"type":"send","room":"general","text":text}))
        .await;

    assert_eq!(client.closed().await, Some(1009));
}

#[tokio::test]
async fn frame_just_under_the_limit_is_accepted() {
    let server = Server::start(&["--max-frame-bytes", "2048"]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    let text = "a".repeat(1900);
    let ack = client.say("general", &text, "near-limit").await;

    assert_eq!(ack["type"], "ack");
}

#[tokio::test]
async fn application_ping_gets_pong() {
    let server = Server::start(&[]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    client.send(json!({"type":"ping"})).await;

    assert_eq!(client.recv().await, json!({"type":"pong"}));
}

#[tokio::test]
async fn server_sends_websocket_pings() {
    let server = Server::start(&["--ping-interval-ms", "200"]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    let event = client.next_event(WAIT).await;

    assert!(matches!(event, Some(Event::Ping)), "got {event:?}");
}

#[tokio::test]
async fn pings_keep_coming_and_their_pongs_keep_an_idle_client_open() {
    // A background tab sends nothing but the pongs its browser answers with.
    let server = Server::start(&["--ping-interval-ms", "150", "--idle-timeout-ms", "400"]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while tokio::time::Instant::now() < deadline {
        match client.next_event(WAIT).await {
            Some(Event::Ping) => pings += 1,
            other => panic!("expected only pings, got {other:?}"),
        }
    }

    assert!(pings >= 5, "{pings} pings in 1.5 s at a 150 ms interval");
    client.assert_usable().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_idle_timeout() {
    let server = Server::start(&["--idle-timeout-ms", "500", "--ping-interval-ms", "60000"]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    let start = std::time::Instant::now();
    let code = client.closed().await;

    assert_eq!(code, Some(1000));
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn activity_keeps_a_connection_open_past_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout-ms", "600", "--ping-interval-ms", "60000"]);
    let (mut client, _) = server.joined("alice", &["general"]).await;

    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.assert_usable().await;
    }
}

#[tokio::test]
async fn no_hello_in_time_closes_with_1008() {
    let server = Server::start(&["--handshake-timeout-ms", "300"]);
    let mut client = server.client().await;

    assert_eq!(client.closed().await, Some(1008));
}

async fn upgrade_with_origin(server: &Server, origin: &str) -> Result<(), u16> {
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403() {
    let server = Server::start(&[]);

    assert_eq!(
        upgrade_with_origin(&server, "https://evil.example").await,
        Err(403)
    );
    assert_eq!(upgrade_with_origin(&server, "null").await, Err(403));
}

#[tokio::test]
async fn same_host_origin_is_accepted() {
    let server = Server::start(&[]);
    let origin = format!("http://{}", server.addr);

    assert_eq!(upgrade_with_origin(&server, &origin).await, Ok(()));
}

#[tokio::test]
async fn allowed_origin_is_accepted() {
    let server = Server::start(&["--allowed-origin", "https://chat.example.org"]);

    assert_eq!(
        upgrade_with_origin(&server, "https://chat.example.org").await,
        Ok(())
    );
    assert_eq!(
        upgrade_with_origin(&server, "https://other.example.org").await,
        Err(403)
    );
}

#[tokio::test]
async fn no_origin_is_accepted_for_non_browser_clients() {
    let server = Server::start(&[]);

    let _client = Client::connect(&server.ws_url()).await;
}

#[tokio::test]
async fn page_and_assets_are_served_from_the_binary() {
    let server = Server::start(&[]);

    let page = reqwest::get(server.http("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains(r#"<script type="module" src="js/main.js">"#)
    );
    for (path, kind) in [
        ("/js/main.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let asset = reqwest::get(server.http(path)).await.unwrap();
        assert_eq!(asset.status(), 200, "{path}");
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        assert_eq!(asset.headers()["cache-control"], "no-cache", "{path}");
    }
}

/// The page is ES modules: every module main.js imports, directly or not, is
/// served as JavaScript (a file missing from `assets/js/` would break the page).
#[tokio::test]
async fn every_module_the_page_imports_is_served() {
    let server = Server::start(&[]);
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec!["main.js".to_string()];

    while let Some(module) = todo.pop() {
        if !seen.insert(module.clone()) {
            continue;
        }
        let response = reqwest::get(server.http(&format!("/js/{module}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{module}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"),
            "{module}"
        );
        todo.extend(relative_imports(&response.text().await.unwrap()));
    }

    assert!(seen.len() > 1, "main.js imports nothing: {seen:?}");
}

/// The `./name.js` of each `import ... from './name.js';` line.
fn relative_imports(source: &str) -> Vec<String> {
    source
        .lines()
        .filter(|line| line.starts_with("import "))
        .filter_map(|line| line.split_once(" from './"))
        .filter_map(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[tokio::test]
async fn unknown_path_is_a_json_404() {
    let server = Server::start(&[]);

    let response = reqwest::get(server.http("/no/such/thing")).await.unwrap();

    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_plain_get_on_the_websocket_path_is_a_json_400() {
    let server = Server::start(&[]);

    let response = reqwest::get(server.http("/ws")).await.unwrap();

    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn an_unsupported_websocket_version_gets_426_naming_version_13() {
    let server = Server::start(&[]);

    let response = raw_upgrade(&server, "8");

    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{response}"
    );
}

#[tokio::test]
async fn a_long_message_arrives_whole_in_frames_of_at_most_2_kib() {
    let server = Server::start(&[]);
    let (mut alice, _) = server.joined("alice", &["general"]).await;
    // 4,000 three-byte characters: 12,000 bytes of text, cut at character
    // boundaries into several frames.
    let text = "€".repeat(4_000);
    alice.say("general", &text, "long-1").await;

    let stream = raw_upgrade_stream(&server);
    let mut frames = FrameSocket::new(stream);
    let mut hello = Frame::message(
        r#"{"type":"hello","nick":"bob","rooms":["general"]}"#
            .as_bytes()
            .to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    hello.header_mut().mask = Some([1, 2, 3, 4]);
    frames.send(hello).unwrap();

    // Reassemble messages by hand, checking each frame on the way.
    let mut pieces = 0;
    let mut message: Vec<u8> = Vec::new();
    let mut long = None;
    for _ in 0..200 {
        let frame = frames.read(None).unwrap().expect("the server closed");
        let header = frame.header().clone();
        let payload = frame.into_payload();
        assert!(
            payload.len() <= MAX_SERVER_FRAME,
            "a {} byte frame",
            payload.len()
        );
        match header.opcode {
            OpCode::Data(Data::Text) => message = payload.to_vec(),
            OpCode::Data(Data::Continue) => message.extend_from_slice(&payload),
            _ => continue,
        }
        pieces += 1;
        if !header.is_final {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&message).expect("whole JSON");
        if value["type"] == "synced" {
            break;
        }
        if value["type"] == "message" {
            long = Some((value, pieces));
        }
        pieces = 0;
    }

    let (value, pieces) = long.expect("the long message was replayed");
    assert_eq!(value["text"], text.as_str());
    assert!(pieces >= 6, "12,000 bytes came in {pieces} frame(s)");
}

/// A hand-made upgrade request over a plain TCP stream: the response head.
fn raw_upgrade(server: &Server, version: &str) -> String {
    let (_, head) = raw_upgrade_with(server, version);
    head
}

/// An upgraded TCP stream, for reading the server's frames one by one.
fn raw_upgrade_stream(server: &Server) -> std::net::TcpStream {
    let (stream, head) = raw_upgrade_with(server, "13");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

fn raw_upgrade_with(server: &Server, version: &str) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let url = server.ws_url();
    let authority = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut stream = std::net::TcpStream::connect(&authority).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
    .unwrap();
    // Byte by byte, so nothing after the head is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed in the head"
        );
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}
