//! The handshake: wait for a valid `hello` within the deadline, check the access token.

use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio::time::{Instant, sleep_until};

use super::socket::{CLOSE_POLICY, End, Incoming, Socket, incoming, send_error};
use crate::AppState;
use crate::error::{ClientError, ErrorCode};
use crate::protocol::{self, ClientFrame, Decoded, Hello};

/// Wait for a valid `hello` (section 2). A `hello` with an invalid field is
/// answered with its error and the client may correct it within the same
/// deadline; any other frame before a valid `hello` (a `ping`, a binary
/// frame, text that is not a `hello` object) closes with 1008 at once.
pub async fn handshake(socket: &mut Socket, app: &AppState) -> Result<Hello, End> {
    let deadline = Instant::now() + app.config.handshake_timeout();
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            () = sleep_until(deadline) => return Err(End::Close(CLOSE_POLICY, "no valid hello in time")),
            () = app.shutdown.cancelled() => return Err(End::shutting_down()),
        };
        let text = match incoming(message) {
            Incoming::Text(text) => text,
            Incoming::Binary => return Err(not_hello()),
            Incoming::Control => continue,
            Incoming::End(end) => return Err(end),
        };
        let Decoded {
            reference,
            frame,
            hello,
        } = protocol::decode(&text, &app.limits());
        if !hello {
            return Err(not_hello());
        }
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
            // `decode` says `hello` only of frames it decodes as one.
            Ok(_) => return Err(not_hello()),
            Err(error) => send_error(socket, &error, reference.as_deref()).await?,
        }
    }
}

fn not_hello() -> End {
    End::Close(CLOSE_POLICY, "the first frame must be `hello`")
}

/// No token configured: everyone passes. Otherwise a constant-time comparison,
/// so the time taken does not tell how much of a guess was right.
pub fn token_matches(expected: Option<&str>, given: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(expected) => {
            let given = given.unwrap_or("");
            bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
        }
    }
}
