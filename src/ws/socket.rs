//! Socket plumbing for a connection: reading frames, timed writes, close codes and the goodbye.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::error::{ClientError, ErrorCode};
use crate::protocol;

/// A client's WebSocket, over the connection hyper upgraded.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Longest frame natter writes; a longer message goes out as a text frame
/// and continuation frames of at most this size (RFC 6455 section 5.4),
/// which every client reassembles. Why: tungstenite keeps its write buffer
/// at the largest size it ever had to hold, for as long as the connection is
/// open, so one `presence` of a room with a thousand members would otherwise
/// cost that connection some 36 KiB until it closes.
pub const FRAGMENT: usize = 2 * 1024;

/// WebSocket buffers per connection, kept small because every open connection
/// holds them (idle ones too). Reads: chat frames are small JSON, and a larger
/// frame grows the buffer as needed; tungstenite's default of 128 KiB would
/// dominate an idle connection. Writes: frames are written out in chunks of at
/// least this much, which still batches a burst of deliveries into few
/// syscalls; tungstenite keeps the buffer's capacity at the largest chunk it
/// held, so a bigger target costs every connection that much memory.
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 1024;

/// How every connection's WebSocket is set up: small buffers, and frames
/// (and messages) from the client limited to `max_frame_bytes`.
pub fn config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_frame_size(Some(max_frame_bytes))
        .max_message_size(Some(max_frame_bytes))
}

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

pub fn incoming(message: Option<Result<Message, tungstenite::Error>>) -> Incoming {
    match message {
        Some(Ok(Message::Text(text))) => Incoming::Text(text),
        Some(Ok(Message::Binary(_))) => Incoming::Binary,
        // tungstenite never returns a raw frame from a read.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Control,
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
fn is_too_big(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Capacity(_))
}

pub fn unsupported_binary() -> ClientError {
    ClientError::new(
        ErrorCode::Unsupported,
        "binary frames are not supported; send JSON text frames",
    )
}

/// Write a text frame now (with anything queued before it).
pub async fn send_text(socket: &mut Socket, text: Utf8Bytes) -> Result<(), End> {
    feed(socket, Message::Text(text)).await?;
    timed(socket.flush()).await
}

/// Queue a message behind the others; it goes out with the caller's flush.
pub async fn feed(socket: &mut Socket, message: Message) -> Result<(), End> {
    match message {
        Message::Text(text) if text.len() > FRAGMENT => {
            Box::pin(feed_fragments(socket, text)).await
        }
        message => timed(socket.feed(message)).await,
    }
}

/// A long text message as frames of at most `FRAGMENT` bytes, each cut at a
/// character boundary so every frame is valid UTF-8 on its own too.
async fn feed_fragments(socket: &mut Socket, text: Utf8Bytes) -> Result<(), End> {
    let cuts = fragment_ends(text.as_str());
    let bytes = Bytes::from(text);
    let mut start = 0;
    for end in cuts {
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let frame = Frame::message(
            bytes.slice(start..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        timed(socket.feed(Message::Frame(frame))).await?;
        start = end;
    }
    Ok(())
}

/// Where each fragment of `text` ends.
fn fragment_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::with_capacity(text.len() / FRAGMENT + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + FRAGMENT).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ends.push(end);
        start = end;
    }
    ends
}

pub async fn send_error(
    socket: &mut Socket,
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
pub async fn timed<F: Future<Output = Result<(), tungstenite::Error>>>(
    write: F,
) -> Result<(), End> {
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
pub async fn finish(mut socket: Socket, end: End) {
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_the_text_and_cut_only_at_character_boundaries() {
        // 3-byte characters, so a plain FRAGMENT-byte cut would split one.
        let text = "€".repeat(FRAGMENT);
        let ends = fragment_ends(&text);

        assert_eq!(ends.last(), Some(&text.len()));
        let mut start = 0;
        for end in ends {
            assert!(end > start && end - start <= FRAGMENT);
            assert!(text.is_char_boundary(end));
            start = end;
        }
    }
}
