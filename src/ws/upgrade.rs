//! The HTTP/1.1 upgrade to a WebSocket (RFC 6455 section 4.2): checking the request, the 101 answer, and the socket behind it.
//!
//! natter does this itself rather than through axum's `WebSocketUpgrade`
//! because it needs the tokio-tungstenite stream underneath: only that can
//! send a long message as several frames (see `socket::FRAGMENT`), which is
//! what keeps an idle connection's write buffer small.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::socket::{self, Socket};
use crate::error::ClientError;
use crate::http::error_with_status;

/// A valid upgrade request, not yet answered.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(
                ClientError::bad_request("this path only accepts WebSocket upgrades")
                    .into_response(),
            );
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
            // RFC 6455 section 4.4: name the version the server speaks.
            let mut response = error_with_status(
                StatusCode::UPGRADE_REQUIRED,
                ClientError::bad_request("only WebSocket version 13 is supported"),
            );
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(response);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(ClientError::bad_request("missing Sec-WebSocket-Key").into_response());
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| internal_error())?;
        // hyper puts this in every HTTP/1.1 request whose connection can be
        // taken over; without it (HTTP/2) there is nothing to upgrade.
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            ClientError::bad_request("this connection cannot be upgraded; use HTTP/1.1")
                .into_response()
        })?;
        Ok(Upgrade { on_upgrade, accept })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` answer. The future `serve` makes of the
    /// connection runs as a task of its own, and gets the socket once hyper
    /// has sent the answer.
    pub fn answer<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Handover) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(serve(Handover(self.on_upgrade)));
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, self.accept),
            ],
        )
            .into_response()
    }
}

/// The connection, once hyper lets go of it.
pub struct Handover(OnUpgrade);

impl Handover {
    /// The WebSocket over the upgraded connection, or `None` if the client
    /// went away before the upgrade completed.
    pub async fn socket(self, max_frame_bytes: usize) -> Option<Socket> {
        match self.0.await {
            Ok(upgraded) => {
                let config = socket::config(max_frame_bytes);
                let stream = TokioIo::new(upgraded);
                Some(WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await)
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade did not complete");
                None
            }
        }
    }
}

/// Whether a comma-separated header holds `token`, in any case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn internal_error() -> Response {
    tracing::error!("cannot build the Sec-WebSocket-Accept header");
    ClientError::internal().into_response()
}
