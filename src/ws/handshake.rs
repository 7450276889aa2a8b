//! The handshake: wait for a valid `hello` within the deadline, check the access token.

use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio::time::{Instant, sleep_until};

use super::socket::{
    CLOSE_POLICY, End, Incoming, Socket, incoming, send_error, send_text, unsupported_binary,
};
use crate::AppState;
use crate::error::{ClientError, ErrorCode};
use crate::protocol::{self, ClientFrame, Decoded, Hello};

/// Wait for a valid `hello`, answering anything else with an error (the
/// client may correct itself within the same deadline).
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
