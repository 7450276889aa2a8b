//! HTTP routes: the page and its assets (compiled in), the WebSocket upgrade with its Origin check and admission, health, metrics, 404s, and the JSON error shape.
//!
//! # Layout
//! - `page`: the compiled-in page and its assets.
//! - `api`: the HTTP API under `/api`.
//! - `admission`: the client's address, connection limits.
//! - this file: the router and the routes that are neither.

pub(crate) mod admission;
pub(crate) mod api;
pub(crate) mod page;

use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;

use self::admission::{Refusal, client_ip};
use crate::AppState;
use crate::error::{ClientError, ErrorCode};

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(page::router())
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .with_state(state)
}

async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: crate::ws::Upgrade,
) -> Response {
    if let Err(reason) = check_origin(&headers, &app.config.allowed_origins) {
        tracing::info!(reason, "refused a WebSocket upgrade");
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    let ip = client_ip(peer, &headers, &app.config.trusted_proxies);
    let permit = match app.admission.try_admit(ip) {
        Ok(permit) => permit,
        Err(Refusal::ServerFull) => {
            tracing::warn!(
                limit = app.config.max_connections,
                "connection refused: server full"
            );
            return ClientError::new(
                ErrorCode::Unavailable,
                "the server has as many connections as it allows; try again later",
            )
            .into_response();
        }
        Err(Refusal::TooManyFromAddress) => {
            tracing::info!(%ip, "connection refused: too many from this address");
            return ClientError::new(
                ErrorCode::RateLimited,
                "too many open connections from your address",
            )
            .into_response();
        }
    };
    let max_frame_bytes = app.config.max_frame_bytes;
    let tracker = app.tracker.clone();
    upgrade.answer(move |handover| {
        tracker.track_future(async move {
            if let Some(socket) = handover.socket(max_frame_bytes).await {
                crate::ws::serve(socket, app, permit).await;
            }
        })
    })
}

/// Cross-site WebSocket hijacking defence: a browser always sends Origin, so
/// a page from another site is refused unless it is explicitly allowed.
/// Clients without Origin (bots, CLI tools) are not browsers and pass.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), &'static str> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let Ok(origin) = origin.to_str() else {
        return Err("origin not allowed");
    };
    if allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
        return Ok(());
    }
    // "null" (sandboxed frames, file://) has no host and never matches.
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err("origin not allowed"),
    }
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if !bearer_matches(&headers, app.config.access_token.as_deref()) {
        return bearer_required().into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// With an access token configured, the request must carry it as a Bearer
/// token; compared in constant time.
pub fn bearer_matches(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme name is case-insensitive (RFC 9110 section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    crate::ws::token_matches(Some(token), Some(given))
}

/// What a request without the access token gets.
pub fn bearer_required() -> ClientError {
    ClientError::new(
        ErrorCode::Unauthorized,
        "a valid access token is required (Authorization: Bearer TOKEN)",
    )
}

/// The JSON error shape of the HTTP side, `{"error":{"code":...,"message":...}}`,
/// with the status that goes with the code.
impl IntoResponse for ClientError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        (self.code.status(), axum::Json(body)).into_response()
    }
}

/// An error answered with another status than its code's own (405, 426).
pub fn error_with_status(status: StatusCode, error: ClientError) -> Response {
    let mut response = error.into_response();
    *response.status_mut() = status;
    response
}

async fn method_not_allowed() -> Response {
    error_with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        ClientError::bad_request("this method is not allowed on this path"),
    )
}

async fn not_found() -> Response {
    ClientError::new(ErrorCode::NotFound, "no such path").into_response()
}
