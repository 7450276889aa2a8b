//! A WebSocket client speaking natter's JSON frames, for tests: connect,
//! `hello`, the next frame (of a type) within a bounded wait, send and await
//! the ack. Every method panics on a timeout or an unexpected close: that is
//! how a test fails.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::WAIT;

/// A WebSocket client speaking JSON frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while looking for something else (an ack), returned first by `recv`.
    stash: std::collections::VecDeque<Value>,
}

/// What `next_event` saw.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Ping,
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client {
            ws,
            stash: Default::default(),
        }
    }

    /// Connect, say hello as `nick` in `rooms`, and read up to `synced`.
    /// Returns the client and every frame before `synced`, plus `synced`.
    pub async fn join(url: &str, nick: &str, rooms: &[&str]) -> (Client, Vec<Value>) {
        let mut client = Client::connect(url).await;
        client.hello(nick, rooms, None).await;
        let frames = client.until("synced").await;
        (client, frames)
    }

    /// Wrap a stream opened by hand (custom headers).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            stash: Default::default(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next JSON frame, skipping pings; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.stash.pop_front() {
            return frame;
        }
        match self.next_event(WAIT).await {
            Some(Event::Frame(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next event within `within`, or `None` if nothing came.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("server sent JSON");
                    return Some(Event::Frame(value));
                }
                Some(Ok(Message::Ping(_))) => return Some(Event::Ping),
                Some(Ok(Message::Close(frame))) => {
                    return Some(Event::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Event::Closed(None)),
            }
        }
    }

    /// A frame if one arrives within `within` (skipping pings).
    pub async fn maybe_recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(frame) = self.stash.pop_front() {
            return Some(frame);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(v)) => return Some(v),
                Some(Event::Ping) => continue,
                _ => return None,
            }
        }
    }

    /// Frames up to and including the first of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["type"] == kind;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.until(kind).await.pop().expect("frame")
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_event(WAIT).await {
                Some(Event::Closed(code)) => return code,
                Some(_) => continue,
                None => panic!("connection was not closed in time"),
            }
        }
    }

    pub async fn hello(&mut self, nick: &str, rooms: &[&str], offset: Option<i64>) {
        let mut hello = json!({"type":"hello","nick":nick,"rooms":rooms});
        if let Some(offset) = offset {
            hello["serverOffset"] = json!(offset);
        }
        self.send(hello).await;
    }

    /// Send a message and wait for its ack; other frames stay for `recv`.
    pub async fn say(&mut self, room: &str, text: &str, client_offset: &str) -> Value {
        self.send(json!({"type":"send","room":room,"text":text,"clientOffset":client_offset}))
            .await;
        let mut skipped = Vec::new();
        loop {
            let frame = match self.next_event(WAIT).await {
                Some(Event::Frame(frame)) => frame,
                Some(Event::Ping) => continue,
                other => panic!("no ack for {client_offset}: {other:?}"),
            };
            if frame["type"] == "ack" && frame["clientOffset"] == client_offset {
                self.stash.extend(skipped);
                return frame;
            }
            assert_ne!(frame["type"], "error", "send failed: {frame}");
            skipped.push(frame);
        }
    }

    /// Is the connection still usable? An application ping must get a pong.
    pub async fn assert_usable(&mut self) {
        self.send(json!({"type":"ping"})).await;
        let frame = self.recv().await;
        assert_eq!(frame["type"], "pong", "connection not usable: {frame}");
    }
}
