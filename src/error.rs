//! The crate error, and the one mapping from errors to HTTP statuses.
//!
//! Each layer has its own error type (`config::Error`, `pg::Error`, `auth::Error`, ...); this
//! one collects them. The mapping to WebSocket close codes and join-reply reasons joins it as
//! the session layer arrives; client-facing texts never carry internal details, which are logged.

use axum::http::StatusCode;

/// Any failure of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings were invalid.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// The database or the embedded cluster failed.
    #[error(transparent)]
    Pg(#[from] crate::pg::Error),
    /// A token was refused.
    #[error("token refused")]
    Auth(#[from] crate::auth::Error),
    /// Binding or serving the listening socket failed.
    #[error("cannot serve on the listening socket")]
    Serve(#[source] std::io::Error),
    /// Local-mode setup failed (data folder, secret file).
    #[error("local setup failed")]
    Local(#[source] std::io::Error),
    /// A broadcast or presence request was refused.
    #[error(transparent)]
    Broadcast(#[from] crate::broadcast::Error),
}

/// Why a session ended; each has its close code, close reason text and registry reason.
///
/// Close codes: 1000 and 1001 are normal ends and 4000–4099 are ends the client should recover
/// from by reconnecting (with back-off); the gateway sends no terminal codes today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client closed the socket (or it broke).
    SocketClosed,
    /// The gateway is shutting down.
    Shutdown,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// No heartbeat within the stale timeout.
    Reaped,
    /// An operator closed it.
    Kicked,
}

impl SessionEnd {
    /// The close frame the gateway sends, if any (none when the client closed first).
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            SessionEnd::SocketClosed => None,
            SessionEnd::Shutdown => Some((1001, "server shutting down")),
            SessionEnd::SlowConsumer => Some((4001, "slow consumer")),
            SessionEnd::Reaped => Some((4000, "heartbeat timeout")),
            SessionEnd::Kicked => Some((4002, "closed by operator")),
        }
    }

    /// The registry's `close_reason` for rows this end closes.
    pub fn registry_reason(self) -> &'static str {
        match self {
            SessionEnd::SocketClosed => "socket_closed",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::SlowConsumer => "slow_consumer",
            SessionEnd::Reaped => "reaped",
            SessionEnd::Kicked => "kicked",
        }
    }
}

impl Error {
    /// The HTTP status an HTTP handler answers with for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::Auth(_) => StatusCode::UNAUTHORIZED,
            Error::Pg(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Config(_) | Error::Serve(_) | Error::Local(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Broadcast(e) => match e {
                crate::broadcast::Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                crate::broadcast::Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                crate::broadcast::Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
        }
    }

    /// The error and its causes on one line, `outer: cause: cause`.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        line
    }
}
