//! The load clients' side of the wire: where to connect, WebSockets from a
//! chosen loopback source, the frames the scenarios read, and `hello`.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::{Bench, Res};

pub type Ws = WebSocketStream<TcpStream>;

/// Longest a single connect + `hello` + `synced` may take.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);
/// Client read buffer per connection: frames are small, and `idle` holds many.
const CLIENT_READ_BUFFER: usize = 8 * 1024;

/// The fields of a server frame the scenarios look at; the rest is skipped.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default, borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, rename = "clientOffset", borrow)]
    pub client_offset: Option<Cow<'a, str>>,
    #[serde(default, rename = "serverOffset")]
    pub server_offset: Option<i64>,
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(default, rename = "ref", borrow)]
    pub reference: Option<Cow<'a, str>>,
}

pub fn parse(text: &str) -> Res<Frame<'_>> {
    serde_json::from_str(text).map_err(|e| {
        let start: String = text.chars().take(120).collect();
        format!("unexpected frame from the server ({e}): {start}").into()
    })
}

/// The send frame. Rooms, texts and offsets made here are plain ASCII without
/// quotes or backslashes, so no escaping is needed.
pub fn send_frame(room: &str, text: &str, client_offset: &str) -> String {
    format!(r#"{{"type":"send","room":"{room}","text":"{text}","clientOffset":"{client_offset}"}}"#)
}

/// `head` padded with `x` to `bytes` (never shorter than `head`).
pub fn padded(head: String, bytes: usize) -> String {
    let mut text = head;
    if text.len() < bytes {
        text.push(' ');
        while text.len() < bytes {
            text.push('x');
        }
    }
    text
}

/// Where to connect, and what is known about the server behind it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub ws_url: String,
    pub metrics_url: String,
    /// The server's process, when it runs on this machine and is known.
    pub pid: Option<u32>,
}

impl Target {
    pub fn local(addr: SocketAddr, pid: u32) -> Target {
        Target {
            addr,
            ws_url: format!("ws://{addr}/ws"),
            metrics_url: format!("http://{addr}/metrics"),
            pid: Some(pid),
        }
    }

    /// `ws://HOST:PORT[/ws]`, which must resolve to a loopback address.
    pub async fn external(url: &str, pid: Option<u32>) -> Res<Target> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or("--url must look like ws://127.0.0.1:3000")?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let addr = tokio::net::lookup_host(host_port)
            .await
            .map_err(|e| format!("--url {url}: {e}"))?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| format!("--url {url}: the load generator only targets loopback"))?;
        Ok(Target {
            addr,
            ws_url: format!("ws://{host_port}/ws"),
            metrics_url: format!("http://{host_port}/metrics"),
            pid,
        })
    }
}

/// Open a WebSocket to the target, from `source` when given.
pub async fn open_ws(target: &Target, source: Option<Ipv4Addr>) -> Res<Ws> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (Some(ip), true) = (source, target.addr.is_ipv4()) {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(target.ws_url.as_str(), stream, Some(config))
            .await?;
    Ok(ws)
}

/// The next text frame; `None` once the connection is closed. Cancel-safe.
pub async fn recv_text(ws: &mut Ws) -> Res<Option<tokio_tungstenite::tungstenite::Utf8Bytes>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Some(text)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: String) -> Res<()> {
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// Say `hello` and read until `synced`, handing every frame before it to
/// `seen`. Returns `synced.serverOffset`. The caller bounds the time.
pub async fn hello(
    ws: &mut Ws,
    nick: &str,
    rooms: &[&str],
    server_offset: Option<i64>,
    mut seen: impl FnMut(&Frame<'_>),
) -> Res<i64> {
    let mut frame = json!({"type": "hello", "nick": nick, "rooms": rooms});
    if let Some(offset) = server_offset {
        frame["serverOffset"] = offset.into();
    }
    send_text(ws, frame.to_string()).await?;
    loop {
        let text = recv_text(ws)
            .await?
            .ok_or("the server closed the connection during the handshake")?;
        let frame = parse(&text)?;
        match &*frame.kind {
            "synced" => return Ok(frame.server_offset.unwrap_or(0)),
            "error" => {
                let code = frame.code.as_deref().unwrap_or("?");
                return Err(format!("hello refused: {code}").into());
            }
            _ => seen(&frame),
        }
    }
}

/// Connect and say `hello`, within `HANDSHAKE_WAIT`.
pub async fn join(
    target: &Target,
    source: Option<Ipv4Addr>,
    nick: &str,
    rooms: &[&str],
    server_offset: Option<i64>,
) -> Res<Ws> {
    timeout(HANDSHAKE_WAIT, async {
        let mut ws = open_ws(target, source).await?;
        hello(&mut ws, nick, rooms, server_offset, |_| {}).await?;
        Ok(ws)
    })
    .await
    .map_err(|_| "connect + hello took longer than 30 s")?
}

/// Connect `count` clients with at most `parallel` handshakes at once.
pub async fn join_many(
    bench: &Bench,
    target: &Target,
    count: usize,
    parallel: usize,
    first_index: usize,
    who: impl Fn(usize) -> (String, String),
) -> Res<Vec<Ws>> {
    let results: Vec<Res<Ws>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (nick, room) = who(i);
            let source = bench.source_for(first_index + i);
            async move { join(target, source, &nick, &[room.as_str()], None).await }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Read and drop frames until `stop` or the connection ends (pings get their pongs).
pub async fn listen_until(mut ws: Ws, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            got = recv_text(&mut ws) => if !matches!(got, Ok(Some(_))) { break },
        }
    }
}
