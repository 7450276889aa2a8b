//! The error catalogue: stable codes a client can act on, shared by the WebSocket and HTTP sides.

use std::fmt;

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
