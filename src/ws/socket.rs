//! Socket plumbing for a connection: reading frames, timed writes, close codes and the goodbye.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt};

use crate::error::{ClientError, ErrorCode};
use crate::protocol;

/// Close codes (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_INTERNAL: u16 = 1011;

/// A client whose socket accepts nothing for this long is gone; its messages
/// wait in the store for its reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the connection ends; decides the close frame, if any.
pub enum End {
    /// The client closed or the socket failed: nothing more to send.
    Gone,
    Close(u16, &'static str),
}

impl End {
    pub fn shutting_down() -> End {
        End::Close(CLOSE_GOING_AWAY, "server shutting down")
    }
}

/// One read from the socket, classified.
pub enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// Ping, pong: liveness only (tungstenite answers pings itself).
    Control,
    End(End),
}

pub fn incoming(message: Option<Result<Message, axum::Error>>) -> Incoming {
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

/// tungstenite reports a frame over `max_frame_size` as a capacity error
/// while reading its header, before the payload is buffered.
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

pub fn unsupported_binary() -> ClientError {
    ClientError::new(
        ErrorCode::Unsupported,
        "binary frames are not supported; send JSON text frames",
    )
}

pub async fn send_text(socket: &mut WebSocket, text: Utf8Bytes) -> Result<(), End> {
    timed(socket.send(Message::Text(text))).await
}

/// Queue a frame behind the others; it goes out with the caller's flush.
pub async fn feed(socket: &mut WebSocket, message: Message) -> Result<(), End> {
    timed(socket.feed(message)).await
}

pub async fn send_error(
    socket: &mut WebSocket,
    error: &ClientError,
    reference: Option<&str>,
) -> Result<(), End> {
    send_text(socket, protocol::error_frame(error, reference).into()).await
}

/// A write that cannot complete within `WRITE_TIMEOUT` means the client stopped
/// reading; the connection is dropped and the client recovers by offset.
///
/// Almost every write completes at once (it only fills tungstenite's buffer,
/// or the kernel's): the timer is armed only for one that has to wait, which
/// keeps a timer-wheel insertion and a clock read off every delivered frame.
pub async fn timed<F: Future<Output = Result<(), axum::Error>>>(write: F) -> Result<(), End> {
    let mut write = std::pin::pin!(write);
    let outcome = match write.as_mut().now_or_never() {
        Some(result) => Ok(result),
        // Boxed: the timer only exists on this slow path, so it should not
        // take room in every future that writes.
        None => Box::pin(tokio::time::timeout(WRITE_TIMEOUT, write)).await,
    };
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Gone),
    }
}

/// Say goodbye with a close frame where there is a reason to give.
pub async fn finish(mut socket: WebSocket, end: End) {
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
