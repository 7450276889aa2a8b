//! One WebSocket connection: handshake, the live loop, requests (send, join, leave, history, typing, draft) and clean close.
//!
//! # Layout
//! - `upgrade`: the HTTP upgrade and the socket behind it.
//! - `handshake`: waiting for a valid `hello`, the token check.
//! - `delivery`: what this connection has been given, per room, and the
//!   paged replay: the one place that decides "exactly once, in id order".
//! - `rooms`: join (subscribe, replay, presence, draft), leave, writing
//!   replays and live events.
//! - `socket`: reads, timed writes, fragmenting long messages, close codes.
//! - this file: the connection task and its requests.
//!
//! Each connection is one task that owns its socket and `select!`s over the
//! client's frames, its inbox (every live event of its rooms, from the hub),
//! its pending acks, one keepalive timer (pings and the idle deadline) and
//! server shutdown. Whatever woke it, it then writes
//! everything else that is ready and flushes once. Nothing here holds a lock
//! across an `.await`.
//!
//! # Memory
//! Every open connection pays for this task's idle state, so it is kept
//! small on purpose: the state lives in one box, and every long or rare path
//! (the handshake, a join's replay, a frame's handling) is boxed where it is
//! awaited rather than laid out inside the task. `docs/BENCHMARKS.md` has the
//! measured cost per connection.

mod delivery;
mod handshake;
mod rooms;
mod socket;
mod upgrade;

use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::{Instant, sleep_until};
use tungstenite::Message;

pub use handshake::token_matches;
pub use upgrade::Upgrade;

use self::delivery::Delivery;
use self::rooms::{JoinPhase, RoomState};
use self::socket::{
    CLOSE_NORMAL, End, Incoming, Socket, feed, finish, incoming, send_error, send_text, timed,
    unsupported_binary,
};
use crate::AppState;
use crate::error::{ClientError, ErrorCode};
use crate::http::admission::Permit;
use crate::hub::Handle;
use crate::protocol::{self, ClientFrame, Decoded, Hello, MAX_ROOMS_PER_CONNECTION, WireLimits};
use crate::ratelimit::TokenBucket;
use crate::store::{Appended, StoreError, now_ms};

/// A client sends `typing` about every 2 s while typing; relaying more often
/// than this adds nothing for the others, so faster repeats are dropped.
const TYPING_RELAY_INTERVAL: Duration = Duration::from_secs(1);

/// Rounds of `write_ready` before a flush and a return to the loop.
const WRITE_READY_ROUNDS: usize = 8;

type AckFuture = Pin<Box<dyn Future<Output = String> + Send>>;

struct Connection {
    socket: Socket,
    app: AppState,
    nick: String,
    /// The protocol version the client said in `hello`: which frames it gets.
    version: u8,
    handle: Handle,
    delivery: Delivery<RoomState>,
    acks: FuturesOrdered<AckFuture>,
    bucket: TokenBucket,
    _permit: Permit,
}

/// Serve one upgraded socket until it closes or the server shuts down.
///
/// The connection's state goes into one box before the first `.await`, so
/// the task holds a pointer to it instead of moved-from copies of the socket.
/// `permit` is the connection's place under the admission limits, given back
/// when the connection is dropped.
pub fn serve(socket: Socket, app: AppState, permit: Permit) -> impl Future<Output = ()> + Send {
    let handle = app.hub.connect();
    let conn = Box::new(Connection {
        socket,
        bucket: TokenBucket::new(app.config.sends_per_10s),
        app,
        nick: String::new(),
        version: 1,
        handle,
        delivery: Delivery::default(),
        acks: FuturesOrdered::new(),
        _permit: permit,
    });
    conn.serve()
}

impl Connection {
    async fn serve(mut self: Box<Self>) {
        let _gauge = crate::metrics::ConnectionGauge::open();
        let end = match Box::pin(handshake::handshake(&mut self.socket, &self.app)).await {
            Ok(Hello {
                nick,
                rooms,
                server_offset,
                version,
                ..
            }) => {
                self.nick = nick;
                self.version = version;
                self.run(rooms, server_offset).await
            }
            Err(end) => end,
        };
        for room in self.delivery.rooms() {
            self.leave(&room);
        }
        Box::pin(finish(self.socket, end)).await;
    }
}

impl Connection {
    async fn run(&mut self, rooms: Vec<String>, server_offset: Option<i64>) -> End {
        // Boxed, like every long and rare path below: a task's future is as
        // large as its largest state, and it is the idle loop's size that
        // every open connection pays for.
        if let Err(end) = Box::pin(self.start(rooms, server_offset)).await {
            return end;
        }
        let ping_interval = self.app.config.ping_interval();
        let idle_timeout = self.app.config.idle_timeout();
        let now = Instant::now();
        let mut next_ping = now + ping_interval;
        let mut idle_deadline = now + idle_timeout;
        // One timer for both pings and the idle deadline: a frame from the
        // client only moves `idle_deadline`, which costs nothing, instead of
        // re-arming a timer on every frame.
        let keepalive = sleep_until(next_ping.min(idle_deadline));
        tokio::pin!(keepalive);
        // Made once: a fresh `cancelled()` each turn would enter and leave
        // the token's waiter list (a mutex) for every frame.
        let shutdown = self.app.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            // Only picks what woke the task; the work is done in `step`,
            // boxed, so the idle connection's future stays small.
            let wake = tokio::select! {
                () = &mut shutdown => return End::shutting_down(),
                message = self.socket.next() => {
                    idle_deadline = Instant::now() + idle_timeout;
                    Wake::Incoming(message)
                }
                Some(frame) = self.acks.next() => Wake::Ack(frame),
                () = self.handle.inbox.pushed() => Wake::Inbox,
                () = &mut keepalive => {
                    let now = Instant::now();
                    if now >= idle_deadline {
                        return End::Close(CLOSE_NORMAL, "idle timeout");
                    }
                    let ping = now >= next_ping;
                    if ping {
                        next_ping = now + ping_interval;
                    }
                    keepalive.as_mut().reset(next_ping.min(idle_deadline));
                    if !ping {
                        continue; // the deadline moved since the timer was set
                    }
                    Wake::Ping
                }
            };
            if let Err(end) = Box::pin(self.step(wake)).await {
                return end;
            }
        }
    }

    /// Handle what woke the loop, then write everything else that is ready.
    async fn step(&mut self, wake: Wake) -> Result<(), End> {
        match wake {
            Wake::Incoming(message) => match incoming(message) {
                Incoming::Text(text) => Box::pin(self.on_text(&text)).await?,
                Incoming::Binary => {
                    send_error(&mut self.socket, &unsupported_binary(), None).await?;
                }
                Incoming::Control => {}
                Incoming::End(end) => return Err(end),
            },
            Wake::Ack(frame) => feed(&mut self.socket, Message::Text(frame.into())).await?,
            Wake::Inbox => {}
            Wake::Ping => feed(&mut self.socket, Message::Ping(Default::default())).await?,
        }
        self.write_ready().await
    }

    /// Queue every ack and live event that is ready now, without waiting for
    /// anything, then flush: one write to the kernel carries them all,
    /// instead of one per frame.
    async fn write_ready(&mut self) -> Result<(), End> {
        // Bounded, so a room that never stops talking cannot keep this task
        // from yielding; what is left wakes the loop again at once.
        for _ in 0..WRITE_READY_ROUNDS {
            let mut wrote = false;
            while let Some(Some(frame)) = self.acks.next().now_or_never() {
                feed(&mut self.socket, Message::Text(frame.into())).await?;
                wrote = true;
            }
            if let Some(taken) = self.handle.inbox.take() {
                self.deliver(taken).await?;
                wrote = true;
            }
            if !wrote {
                break;
            }
        }
        timed(self.socket.flush()).await
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
        let welcome = protocol::welcome_frame(
            &session_id(),
            &self.nick,
            newest,
            self.app.store.store_id(),
            &limits,
        );
        send_text(&mut self.socket, welcome.into()).await?;
        for room in &rooms {
            self.join(room, server_offset, JoinPhase::Handshake).await?;
        }
        // The rooms were replayed one after another: an earlier one may have
        // had messages committed since its replay, older than the last
        // room's newest. Bring every room up to one point before `synced`,
        // so the offset the client stores there covers all of them.
        let upto = self.app.store.newest_id();
        self.replay(self.delivery.catch_up(upto)).await?;
        self.send_synced(&rooms, newest, server_offset).await
    }

    /// `synced`, with the offset the client should store (see `Delivery::synced_offset`).
    async fn send_synced(
        &mut self,
        rooms: &[String],
        newest: i64,
        server_offset: Option<i64>,
    ) -> Result<(), End> {
        let offset = self.delivery.synced_offset(newest, server_offset);
        send_text(
            &mut self.socket,
            protocol::synced_frame(rooms, offset).into(),
        )
        .await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let Decoded {
            reference, frame, ..
        } = protocol::decode(text, &self.app.limits());
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
            } => Box::pin(self.on_send(room, text, client_offset)).await,
            ClientFrame::Join {
                room,
                server_offset,
            } => {
                if !self.delivery.contains(&room) && self.delivery.len() >= MAX_ROOMS_PER_CONNECTION
                {
                    return Err(Reply::Error(ClientError::new(
                        ErrorCode::TooManyRooms,
                        format!("at most {MAX_ROOMS_PER_CONNECTION} rooms per connection"),
                    )));
                }
                let newest = self.app.store.newest_id();
                Box::pin(self.join(&room, server_offset, JoinPhase::Live)).await?;
                Ok(self.send_synced(&[room], newest, server_offset).await?)
            }
            ClientFrame::Leave { room } => {
                if !self.leave(&room) {
                    return Err(not_joined(&room));
                }
                Ok(send_text(&mut self.socket, protocol::left_frame(&room).into()).await?)
            }
            ClientFrame::History {
                room,
                before,
                limit,
                reference: history_ref,
            } => {
                let (messages, has_more) =
                    Box::pin(self.app.store.messages_before(&room, before, limit))
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
            ClientFrame::Typing { room, active } => self.on_typing(&room, active),
            ClientFrame::Draft { room, text } => self.on_draft(&room, &text),
            ClientFrame::Ping => {
                Ok(send_text(&mut self.socket, protocol::pong_frame().into()).await?)
            }
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
        if !self.delivery.contains(&room) {
            return Err(not_joined(&room));
        }
        if !self.bucket.try_take() {
            let per = self.app.config.sends_per_10s;
            return Err(Reply::Error(ClientError::new(
                ErrorCode::RateLimited,
                format!("at most {per} messages per 10 s"),
            )));
        }
        let receiver = crate::messages::submit(
            &self.app,
            room,
            self.nick.clone(),
            text,
            client_offset.clone(),
            Some(self.handle.id),
        )
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

    /// Relay a typing state to the room's other nicks; nothing is stored.
    fn on_typing(&mut self, room: &str, active: bool) -> Result<(), Reply> {
        let Some(state) = self.delivery.state_mut(room) else {
            return Err(not_joined(room));
        };
        let now = std::time::Instant::now();
        let repeat = matches!(state.typing, Some((was, at)) if was == active && now.duration_since(at) < TYPING_RELAY_INTERVAL);
        if !repeat {
            state.typing = Some((active, now));
            self.app.hub.typing(room, &self.nick, active);
        }
        Ok(())
    }

    /// Keep the newest draft in memory (written within a second) and show it
    /// in the nick's other tabs in this room.
    fn on_draft(&mut self, room: &str, text: &str) -> Result<(), Reply> {
        if !self.delivery.contains(room) {
            return Err(not_joined(room));
        }
        let now = now_ms();
        self.app.drafts.set(&self.nick, room, text, now);
        let frame = protocol::draft_frame(room, text, now);
        self.app
            .hub
            .to_other_tabs(room, &self.nick, self.handle.id, frame.into());
        Ok(())
    }
}

fn ack_or_error(client_offset: Option<&str>, outcome: Result<Appended, StoreError>) -> String {
    match outcome {
        Ok(Appended { id, ts, duplicate }) => protocol::ack_frame(client_offset, id, ts, duplicate),
        Err(e) => protocol::error_frame(&internal(e), client_offset),
    }
}

/// What woke a connection's loop.
enum Wake {
    Incoming(Option<Result<Message, tungstenite::Error>>),
    Ack(String),
    /// The hub queued live events (taken by `write_ready`).
    Inbox,
    Ping,
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

fn session_id() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
