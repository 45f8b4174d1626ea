//! The crate error of start-up and serving, and its mapping to HTTP statuses.
//!
//! Each layer has its own error type (`config::Error`, `pg::Error`, `auth::Error`, ...); this
//! one collects those of the layers below the stages, and imports no stage. What a client is
//! told lives with the stage that tells it: WebSocket close codes in `session::close`, join
//! refusals in `session::join`, REST broadcast statuses in `broadcast::rest`. Client-facing
//! texts never carry internal details, which are logged.

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
        }
    }

    /// The error and its causes on one line, `outer: cause: cause`.
    pub fn one_line(&self) -> String {
        chain(self)
    }
}

/// An error and its causes on one line, `outer: cause: cause` (a cause whose text the line
/// already ends with is not repeated): what a log line needs, since an error's own text names
/// only its layer (`database error`) and its cause is in `source()`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
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
