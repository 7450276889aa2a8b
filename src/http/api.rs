//! The HTTP API under `/api`: room list, history by id range, and posting a message the same way a WebSocket `send` does.
//!
//! Errors use the JSON shape `{"error":{"code","message"}}` with the codes of
//! `error.rs`. With an access token configured every route here needs
//! `Authorization: Bearer TOKEN`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{bearer_matches, bearer_required};
use crate::AppState;
use crate::error::{ClientError, ErrorCode};
use crate::protocol::{self, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MessageFrame};
use crate::ratelimit::TokenBucket;

/// Largest request body: a 4,000-character message of 4-byte characters plus
/// JSON fits many times over.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Client addresses remembered for the post rate limit before idle ones are
/// forgotten.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Post rate limits per client address (`sendsPer10s`, like a connection).
#[derive(Default)]
pub struct PostLimits {
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl PostLimits {
    fn allow(&self, address: IpAddr, per_10s: u32) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            // A full bucket carries no state worth keeping.
            buckets.retain(|_, bucket| !bucket.is_full_at(now));
        }
        buckets
            .entry(address)
            .or_insert_with(|| TokenBucket::new(per_10s))
            .try_take_at(now)
    }
}

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/{room}/messages", get(history).post(post))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if bearer_matches(request.headers(), app.config.access_token.as_deref()) {
        next.run(request).await
    } else {
        bearer_required().into_response()
    }
}

/// A store failure: logged, and answered 500 `internal` without its details.
fn internal(e: crate::store::StoreError) -> ClientError {
    tracing::error!(error = %e, "API store request failed");
    ClientError::internal()
}

/// `GET /api/rooms`: rooms with messages or viewers, by name.
async fn rooms(State(app): State<AppState>) -> Result<Response, ClientError> {
    let stats = app.store.room_stats().await.map_err(internal)?;
    let mut viewers = app.hub.viewer_counts();
    let mut rooms: Vec<Value> = stats
        .into_iter()
        .map(
            |crate::store::RoomStats {
                 room,
                 messages,
                 last_id,
             }| {
                let viewing = viewers.remove(&room).unwrap_or(0);
                json!({"room": room, "messages": messages, "lastId": last_id, "viewers": viewing})
            },
        )
        .collect();
    // Rooms people are in that have no messages yet.
    rooms.extend(viewers.into_iter().map(
        |(room, viewing)| json!({"room": room, "messages": 0, "lastId": null, "viewers": viewing}),
    ));
    rooms.sort_by(|a, b| a["room"].as_str().cmp(&b["room"].as_str()));
    Ok(axum::Json(json!({ "rooms": rooms })).into_response())
}

/// `GET /api/rooms/{room}/messages?after=&before=&limit=`.
async fn history(
    State(app): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ClientError> {
    protocol::validate_room(&room)?;
    let after = id_param(&query, "after")?;
    let before = id_param(&query, "before")?;
    let limit = match query.get("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ClientError::bad_request(format!(
                    "`limit` must be an integer from 1 to {MAX_HISTORY_LIMIT}"
                )));
            }
        },
    };
    let (messages, has_more) = match after {
        Some(after) => {
            app.store
                .messages_between(&room, after, before, limit)
                .await
        }
        None => app.store.messages_before(&room, before, limit).await,
    }
    .map_err(internal)?;
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Page<'a> {
        messages: Vec<MessageFrame<'a>>,
        has_more: bool,
    }
    let page = Page {
        messages: messages.iter().map(MessageFrame::from).collect(),
        has_more,
    };
    Ok(axum::Json(page).into_response())
}

fn id_param(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ClientError> {
    match query.get(name) {
        None => Ok(None),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ClientError::bad_request(format!(
                "`{name}` must be a non-negative integer"
            ))),
        },
    }
}

/// `POST /api/rooms/{room}/messages` with `{"nick","text","clientOffset"?}`:
/// stored and broadcast exactly like a WebSocket `send`; idempotent by
/// `clientOffset`.
async fn post(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ClientError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ClientError::new(
                ErrorCode::TooLong,
                format!("the request body is over {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ClientError::bad_request("could not read the request body")
        }
    })?;
    protocol::validate_room(&room)?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|_| ClientError::bad_request("the body must be a JSON object"))?;
    let Value::Object(mut fields) = request else {
        return Err(ClientError::bad_request("the body must be a JSON object"));
    };
    // The same field rules as a WebSocket `send`.
    let nick = protocol::validate_nick(&protocol::required_string(fields.remove("nick"), "nick")?)?;
    let text = protocol::required_string(fields.remove("text"), "text")?;
    protocol::validate_text(&text, app.config.max_text_chars)?;
    let client_offset = protocol::client_offset_field(fields.remove("clientOffset"))?;
    let per_10s = app.config.sends_per_10s;
    let ip = super::admission::client_ip(peer, &headers, &app.config.trusted_proxies);
    if !app.post_limits.allow(ip, per_10s) {
        return Err(ClientError::new(
            ErrorCode::RateLimited,
            format!("at most {per_10s} messages per 10 s"),
        ));
    }
    let pending = crate::messages::submit(&app, room, nick, text, client_offset, None)
        .await
        .map_err(internal)?;
    let appended = pending
        .await
        .unwrap_or(Err(crate::store::StoreError::Closed))
        .map_err(internal)?;
    let response = if appended.duplicate {
        (
            StatusCode::OK,
            axum::Json(json!({"id": appended.id, "ts": appended.ts, "duplicate": true})),
        )
    } else {
        (
            StatusCode::CREATED,
            axum::Json(json!({"id": appended.id, "ts": appended.ts})),
        )
    };
    Ok(response.into_response())
}
