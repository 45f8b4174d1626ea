//! The WebSocket handshake (RFC 6455 section 4.2) over HTTP/1.1, and the split of the upgraded
//! connection into the [`Reader`] of the client's messages and the writer's [`Outlet`].
//!
//! The checks and refusals are those of axum's `WebSocketUpgrade`, which this replaces so that
//! the gateway owns the write side of the connection.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, FutureExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::decode::Limits;
use super::inbound::{self, Reader};
use super::outlet::{self, Outlet};

/// An upgraded connection: the client's messages, and the outlet for the server's frames.
#[derive(Debug)]
pub struct Socket {
    /// The client's messages.
    pub reader: Reader,
    /// The server's frames.
    pub outlet: Outlet,
}

/// Why a request cannot be upgraded; the response is the same as axum's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a `GET`.
    MethodNotGet,
    /// `Connection` does not include `upgrade`.
    ConnectionHeader,
    /// `Upgrade` is not `websocket`.
    UpgradeHeader,
    /// `Sec-WebSocket-Version` is not 13.
    VersionHeader,
    /// No `Sec-WebSocket-Key`.
    KeyMissing,
    /// The connection cannot be upgraded (not HTTP/1.1, or already upgraded).
    NotUpgradable,
}

impl Rejection {
    fn status_and_text(self) -> (StatusCode, &'static str) {
        match self {
            Rejection::MethodNotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ),
            Rejection::ConnectionHeader => (
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ),
            Rejection::UpgradeHeader => (
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ),
            Rejection::VersionHeader => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ),
            Rejection::KeyMissing => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ),
            Rejection::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        self.status_and_text().into_response()
    }
}

/// A request to upgrade to a WebSocket, checked (the extractor of a handler's argument).
#[derive(Debug)]
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(Rejection::MethodNotGet);
        }
        if !header_contains(&parts.headers, &header::CONNECTION, "upgrade") {
            return Err(Rejection::ConnectionHeader);
        }
        if !header_is(&parts.headers, &header::UPGRADE, "websocket") {
            return Err(Rejection::UpgradeHeader);
        }
        if !header_is(&parts.headers, &header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(Rejection::VersionHeader);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Rejection::KeyMissing)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Rejection::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `session` on the upgraded connection, in a
    /// task of its own; the reader accepts frames and messages up to `limits`.
    pub fn on_upgrade<F, Fut>(self, limits: Limits, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        // The task's memory is the largest of its states, held until the session ends. Its
        // future is the upgrade, then the session, one in place of the other: the session's
        // future is held once, and nothing of the upgrade is kept beside it (an async block
        // would keep what it captured for as long as it runs).
        let task = self.on_upgrade.then(move |upgraded| match upgraded {
            Ok(upgraded) => {
                let (early, read, write) = split(upgraded);
                Either::Left(session(Socket {
                    reader: Reader::new(early, read, limits),
                    outlet: Outlet::new(write),
                }))
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                Either::Right(std::future::ready(()))
            }
        });
        tokio::spawn(task);
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Splits an upgraded connection: a TCP connection into its own halves (no lock between reader
/// and writer), anything else with a lock. Also returns what the HTTP server read past the
/// request.
fn split(upgraded: Upgraded) -> (bytes::Bytes, inbound::Half, outlet::Half) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            // The bytes read past the request are a view into the HTTP server's whole read
            // buffer (8 KiB): keeping the view would keep the buffer for the connection's life.
            let early = if parts.read_buf.is_empty() {
                bytes::Bytes::new()
            } else {
                bytes::Bytes::copy_from_slice(&parts.read_buf)
            };
            (early, inbound::Half::Tcp(read), outlet::Half::Tcp(write))
        }
        Err(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            (
                bytes::Bytes::new(),
                inbound::Half::Other(read),
                outlet::Half::Other(write),
            )
        }
    }
}

fn header_is(headers: &HeaderMap, name: &HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, name: &HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains(value))
    })
}
