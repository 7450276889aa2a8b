//! One WebSocket connection: the handshake, replay, the live loop, acks, limits and clean close.
//!
//! Each connection is one task that owns its socket and `select!`s over the
//! client's frames, its rooms' live channels, its pending acks, the ping timer,
//! the idle deadline and server shutdown. Nothing here holds a lock across an
//! `.await`; room state is per connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use subtle::ConstantTimeEq;
use tokio::time::{Instant, sleep_until};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::AppState;
use crate::error::{ClientError, ErrorCode};
use crate::hub::RoomEvent;
use crate::protocol::{
    self, ChatMessage, ClientFrame, Decoded, Hello, MAX_ROOMS_PER_CONNECTION, WireLimits,
};
use crate::ratelimit::TokenBucket;
use crate::store::{Appended, NewMessage, StoreError};

/// Close codes (RFC 6455 section 7.4.1).
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_NORMAL: u16 = 1000;

/// Rows read per query while replaying: bounds memory per connection no
/// matter how long the client was away.
const REPLAY_PAGE: i64 = 500;
/// Live events written before one flush: a burst costs one syscall, not one
/// per frame, and one slow socket cannot hog its worker for long.
const MAX_WRITE_BATCH: usize = 64;
/// A client whose socket accepts nothing for this long is gone; its messages
/// wait in the store for its reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

type AckFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// Why the connection ends; decides the close frame, if any.
enum End {
    /// The client closed or the socket failed: nothing more to send.
    Gone,
    Close(u16, &'static str),
}

/// Per-room state of this connection.
struct Joined {
    /// Highest message id of this room written to the socket. Live events at
    /// or below it were already replayed and are skipped.
    last_id: i64,
}

struct Connection {
    socket: WebSocket,
    app: AppState,
    nick: String,
    rooms: HashMap<String, Joined>,
    live: StreamMap<String, BroadcastStream<RoomEvent>>,
    acks: FuturesOrdered<AckFuture>,
    bucket: TokenBucket,
    /// Highest id written on this connection, for `synced.serverOffset`.
    max_delivered: i64,
}

/// Serve one upgraded socket until it closes or the server shuts down.
pub async fn serve(mut socket: WebSocket, app: AppState) {
    let _gauge = crate::metrics::ConnectionGauge::open();
    let hello = match handshake(&mut socket, &app).await {
        Ok(hello) => hello,
        Err(end) => return finish(socket, end).await,
    };
    let Hello {
        nick,
        rooms,
        server_offset,
        ..
    } = hello;
    let mut conn = Connection {
        socket,
        bucket: TokenBucket::new(app.config.sends_per_10s),
        app,
        nick,
        rooms: HashMap::new(),
        live: StreamMap::new(),
        acks: FuturesOrdered::new(),
        max_delivered: 0,
    };
    let end = conn.run(rooms, server_offset).await;
    let Connection {
        socket,
        app,
        rooms,
        live,
        ..
    } = conn;
    drop(live);
    for room in rooms.keys() {
        app.hub.release(room);
    }
    finish(socket, end).await;
}

/// Wait for a valid `hello` within the handshake deadline, answering anything
/// else with an error (the client may correct itself).
async fn handshake(socket: &mut WebSocket, app: &AppState) -> Result<Hello, End> {
    let deadline = Instant::now() + app.config.handshake_timeout();
    loop {
        let message = tokio::select! {
            message = socket.recv() => message,
            () = sleep_until(deadline) => return Err(End::Close(CLOSE_POLICY, "no valid hello in time")),
            () = app.shutdown.cancelled() => return Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
        };
        let text = match incoming(message) {
            Incoming::Text(text) => text,
            Incoming::Binary => {
                send_error(socket, &unsupported_binary(), None).await?;
                continue;
            }
            Incoming::Control => continue,
            Incoming::End(end) => return Err(end),
        };
        let Decoded { reference, frame } = protocol::decode(&text, &app.limits());
        match frame {
            Ok(ClientFrame::Hello(hello)) => {
                if !token_matches(app.config.access_token.as_deref(), hello.token.as_deref()) {
                    let error = ClientError::new(
                        ErrorCode::Unauthorized,
                        "a valid access token is required",
                    );
                    send_error(socket, &error, reference.as_deref()).await?;
                    return Err(End::Close(CLOSE_POLICY, "unauthorized"));
                }
                return Ok(hello);
            }
            Ok(ClientFrame::Ping) => send_text(socket, protocol::pong_frame().into()).await?,
            Ok(_) => {
                let error = ClientError::bad_request("the first frame must be `hello`");
                send_error(socket, &error, reference.as_deref()).await?;
            }
            Err(error) => send_error(socket, &error, reference.as_deref()).await?,
        }
    }
}

pub fn token_matches(expected: Option<&str>, given: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(expected) => {
            let given = given.unwrap_or("");
            bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
        }
    }
}

impl Connection {
    async fn run(&mut self, rooms: Vec<String>, server_offset: Option<i64>) -> End {
        match self.start(rooms, server_offset).await {
            Ok(()) => {}
            Err(end) => return end,
        }
        let config = &self.app.config;
        let mut ping = tokio::time::interval_at(
            Instant::now() + config.ping_interval(),
            config.ping_interval(),
        );
        let idle_timeout = config.idle_timeout();
        let idle = sleep_until(Instant::now() + idle_timeout);
        tokio::pin!(idle);
        let shutdown = self.app.shutdown.clone();
        loop {
            let step = tokio::select! {
                () = shutdown.cancelled() => Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
                message = self.socket.recv() => {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    match incoming(message) {
                        Incoming::Text(text) => self.on_text(&text).await,
                        Incoming::Binary => send_error(&mut self.socket, &unsupported_binary(), None).await,
                        Incoming::Control => Ok(()),
                        Incoming::End(end) => Err(end),
                    }
                }
                Some((room, event)) = self.live.next() => self.on_live(room, event).await,
                Some(frame) = self.acks.next() => send_text(&mut self.socket, frame.into()).await,
                _ = ping.tick() => timed_send(&mut self.socket, Message::Ping(Default::default())).await,
                () = &mut idle => Err(End::Close(CLOSE_NORMAL, "idle timeout")),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// `welcome`, then each room's join sequence, then `synced`.
    async fn start(&mut self, rooms: Vec<String>, server_offset: Option<i64>) -> Result<(), End> {
        let newest = self.app.store.newest_id();
        let config = &self.app.config;
        let limits = WireLimits {
            max_text_chars: config.max_text_chars,
            max_frame_bytes: config.max_frame_bytes,
            sends_per10s: config.sends_per_10s,
        };
        let welcome = protocol::welcome_frame(&session_id(), &self.nick, newest, &limits);
        send_text(&mut self.socket, welcome.into()).await?;
        for room in &rooms {
            self.join(room, server_offset).await?;
        }
        let synced = newest.max(self.max_delivered).max(server_offset.unwrap_or(0));
        send_text(&mut self.socket, protocol::synced_frame(&rooms, synced).into()).await
    }

    /// Subscribe, then replay from the store, then let live events through.
    async fn join(&mut self, room: &str, server_offset: Option<i64>) -> Result<(), End> {
        if !self.rooms.contains_key(room) {
            let receiver = self.app.hub.subscribe(room);
            self.live.insert(room.to_string(), BroadcastStream::new(receiver));
            self.rooms.insert(room.to_string(), Joined { last_id: 0 });
        }
        send_text(&mut self.socket, protocol::joined_frame(room).into()).await?;
        match server_offset {
            Some(offset) => self.replay_after(room, offset).await,
            None => {
                let limit = i64::from(self.app.config.history_on_join);
                if limit == 0 {
                    return Ok(());
                }
                let (messages, _) = self
                    .app
                    .store
                    .messages_before(room, None, limit)
                    .await
                    .map_err(store_failed)?;
                self.write_messages(room, &messages).await?;
                self.socket.flush().await.map_err(|_| End::Gone)
            }
        }
    }

    /// Stream every stored message of `room` above `after`, page by page,
    /// until the store has nothing newer.
    async fn replay_after(&mut self, room: &str, mut after: i64) -> Result<(), End> {
        loop {
            let page = self
                .app
                .store
                .messages_after(room, after, REPLAY_PAGE)
                .await
                .map_err(store_failed)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            self.write_messages(room, &page).await?;
            if (page.len() as i64) < REPLAY_PAGE {
                break;
            }
            if self.app.shutdown.is_cancelled() {
                return Err(End::Close(CLOSE_GOING_AWAY, "server shutting down"));
            }
        }
        self.socket.flush().await.map_err(|_| End::Gone)
    }

    /// Queue messages read from the store (flushing is the caller's).
    async fn write_messages(&mut self, room: &str, messages: &[ChatMessage]) -> Result<(), End> {
        for message in messages {
            let frame = protocol::message_frame(message);
            timed(self.socket.feed(Message::Text(frame.into()))).await?;
            self.note_delivered(room, message.id);
        }
        metrics::counter!(crate::metrics::REPLAYED).increment(messages.len() as u64);
        Ok(())
    }

    fn note_delivered(&mut self, room: &str, id: i64) {
        if let Some(joined) = self.rooms.get_mut(room) {
            joined.last_id = joined.last_id.max(id);
        }
        self.max_delivered = self.max_delivered.max(id);
    }

    /// A live event, plus any others already waiting, written with one flush.
    async fn on_live(
        &mut self,
        room: String,
        event: Result<RoomEvent, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        let mut next = Some((room, event));
        let mut written = 0;
        while let Some((room, event)) = next.take() {
            match event {
                Ok(RoomEvent::Message { id, frame }) => {
                    let last_id = self.rooms.get(&room).map_or(i64::MAX, |j| j.last_id);
                    if id > last_id {
                        timed(self.socket.feed(Message::Text(frame))).await?;
                        self.note_delivered(&room, id);
                        written += 1;
                    }
                }
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    // The channel dropped events this connection had not read:
                    // reload them from the store, where they are committed.
                    tracing::debug!(%room, missed, "receiver lagged; catching up from the store");
                    let after = self.rooms.get(&room).map_or(i64::MAX, |j| j.last_id);
                    self.replay_after(&room, after).await?;
                }
            }
            if written >= MAX_WRITE_BATCH {
                break;
            }
            next = self.live.next().now_or_never().flatten();
        }
        timed(self.socket.flush()).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let Decoded { reference, frame } = protocol::decode(text, &self.app.limits());
        let result = match frame {
            Ok(frame) => self.on_frame(frame, reference.as_deref()).await,
            Err(error) => Err(Reply::Error(error)),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Reply::Error(error)) => {
                send_error(&mut self.socket, &error, reference.as_deref()).await
            }
            Err(Reply::End(end)) => Err(end),
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame, reference: Option<&str>) -> Result<(), Reply> {
        match frame {
            ClientFrame::Send {
                room,
                text,
                client_offset,
            } => self.on_send(room, text, client_offset).await,
            ClientFrame::Join {
                room,
                server_offset,
            } => {
                if !self.rooms.contains_key(&room) && self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
                    return Err(Reply::Error(ClientError::new(
                        ErrorCode::TooManyRooms,
                        format!("at most {MAX_ROOMS_PER_CONNECTION} rooms per connection"),
                    )));
                }
                self.join(&room, server_offset).await?;
                let rooms = [room];
                let synced = self
                    .app
                    .store
                    .newest_id()
                    .max(self.max_delivered)
                    .max(server_offset.unwrap_or(0));
                Ok(send_text(&mut self.socket, protocol::synced_frame(&rooms, synced).into()).await?)
            }
            ClientFrame::Leave { room } => {
                if self.rooms.remove(&room).is_none() {
                    return Err(not_joined(&room));
                }
                self.live.remove(&room);
                self.app.hub.release(&room);
                Ok(send_text(&mut self.socket, protocol::left_frame(&room).into()).await?)
            }
            ClientFrame::History {
                room,
                before,
                limit,
                reference: history_ref,
            } => {
                let (messages, has_more) = self
                    .app
                    .store
                    .messages_before(&room, before, limit)
                    .await
                    .map_err(|e| Reply::Error(internal(e)))?;
                let frame = protocol::history_frame(
                    &room,
                    history_ref.as_deref().or(reference),
                    &messages,
                    has_more,
                );
                Ok(send_text(&mut self.socket, frame.into()).await?)
            }
            ClientFrame::Ping => Ok(send_text(&mut self.socket, protocol::pong_frame().into()).await?),
            ClientFrame::Hello(_) => Err(Reply::Error(ClientError::bad_request(
                "already said hello; reconnect to change nick",
            ))),
        }
    }

    /// Validate and queue a send; its ack (or error) goes out when the writer
    /// has committed it, in the order of this connection's sends.
    async fn on_send(
        &mut self,
        room: String,
        text: String,
        client_offset: Option<String>,
    ) -> Result<(), Reply> {
        if !self.rooms.contains_key(&room) {
            return Err(not_joined(&room));
        }
        if !self.bucket.try_take() {
            let per = self.app.config.sends_per_10s;
            return Err(Reply::Error(ClientError::new(
                ErrorCode::RateLimited,
                format!("at most {per} messages per 10 s"),
            )));
        }
        let message = NewMessage {
            room,
            nick: self.nick.clone(),
            text,
            client_offset: client_offset.clone(),
        };
        let receiver = self
            .app
            .store
            .append(message)
            .await
            .map_err(|e| Reply::Error(internal(e)))?;
        self.acks.push_back(Box::pin(async move {
            let outcome = match receiver.await {
                Ok(outcome) => outcome,
                Err(_) => Err(StoreError::Closed),
            };
            ack_or_error(client_offset.as_deref(), outcome)
        }));
        Ok(())
    }
}

fn ack_or_error(client_offset: Option<&str>, outcome: Result<Appended, StoreError>) -> String {
    match outcome {
        Ok(Appended { id, ts, duplicate }) => {
            protocol::ack_frame(client_offset, id, ts, duplicate)
        }
        Err(e) => protocol::error_frame(&internal(e), client_offset),
    }
}

/// What a request handler can produce besides success.
enum Reply {
    Error(ClientError),
    End(End),
}

impl From<End> for Reply {
    fn from(end: End) -> Self {
        Reply::End(end)
    }
}

fn not_joined(room: &str) -> Reply {
    Reply::Error(ClientError::new(
        ErrorCode::NotJoined,
        format!("join `{room}` first"),
    ))
}

fn internal(e: StoreError) -> ClientError {
    tracing::error!(error = %e, "store request failed");
    ClientError::internal()
}

/// A replay that cannot read the store leaves the client with a gap, so the
/// connection is closed: the client reconnects with its offset and retries.
fn store_failed(e: StoreError) -> End {
    tracing::error!(error = %e, "replay failed; closing the connection");
    End::Close(1011, "store unavailable, reconnect")
}

fn unsupported_binary() -> ClientError {
    ClientError::new(
        ErrorCode::Unsupported,
        "binary frames are not supported; send JSON text frames",
    )
}

enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// Ping, pong: liveness only (tungstenite answers pings itself).
    Control,
    End(End),
}

fn incoming(message: Option<Result<Message, axum::Error>>) -> Incoming {
    match message {
        Some(Ok(Message::Text(text))) => Incoming::Text(text),
        Some(Ok(Message::Binary(_))) => Incoming::Binary,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Control,
        Some(Ok(Message::Close(_))) | None => Incoming::End(End::Gone),
        Some(Err(e)) => {
            if is_too_big(&e) {
                Incoming::End(End::Close(CLOSE_TOO_BIG, "frame too large"))
            } else {
                tracing::debug!(error = %e, "websocket read failed");
                Incoming::End(End::Gone)
            }
        }
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(tungstenite::Error::Capacity(_)) = error.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

async fn send_text(socket: &mut WebSocket, text: Utf8Bytes) -> Result<(), End> {
    timed_send(socket, Message::Text(text)).await
}

async fn send_error(
    socket: &mut WebSocket,
    error: &ClientError,
    reference: Option<&str>,
) -> Result<(), End> {
    send_text(socket, protocol::error_frame(error, reference).into()).await
}

async fn timed_send(socket: &mut WebSocket, message: Message) -> Result<(), End> {
    timed(socket.send(message)).await
}

/// A write that cannot complete within `WRITE_TIMEOUT` means the client stopped
/// reading; the connection is dropped and the client recovers by offset.
async fn timed<F: Future<Output = Result<(), axum::Error>>>(write: F) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Gone),
    }
}

async fn finish(mut socket: WebSocket, end: End) {
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

fn session_id() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
