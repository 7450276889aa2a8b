//! The error catalogue: every code a client can see, WebSocket and HTTP alike, with its HTTP status.
//!
//! Handlers never type a code as a string: they build a `ClientError` from
//! an `ErrorCode`, and the WebSocket side sends it as an `error` frame
//! (section 8) while the HTTP side answers `{"error":{"code","message"}}`
//! with `ErrorCode::status` (section 9).

use std::fmt;

use axum::http::StatusCode;

/// One error a client can receive. The code is part of the protocol (section 8);
/// the message is for humans and never carries an internal error's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    InvalidNick,
    InvalidRoom,
    TooLong,
    Empty,
    NotJoined,
    TooManyRooms,
    RateLimited,
    Unauthorized,
    Unsupported,
    Internal,
    /// HTTP only: no such path, room or resource.
    NotFound,
    /// HTTP only: the server is at its connection limit.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidNick => "invalid_nick",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Empty => "empty",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The HTTP status that goes with the code (section 9).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidNick
            | ErrorCode::InvalidRoom
            | ErrorCode::Empty
            | ErrorCode::NotJoined
            | ErrorCode::TooManyRooms
            | ErrorCode::Unsupported => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::TooLong => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The store failed; the details go to the log, the client learns only
    /// that it may retry (with the same `clientOffset`, for a send).
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "the server could not complete the request; retry later",
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ClientError {}
