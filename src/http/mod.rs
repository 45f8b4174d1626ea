//! The HTTP side: the listening socket, the accept loop ([`serve`]) and the router of
//! realtime and operator endpoints.

pub mod serve;

use axum::routing::get;
use axum::Router;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::admin;
use crate::broadcast::rest;
use crate::session::upgrade;
use crate::state::AppState;

/// Backlog of the listening socket: connections whose handshake completed, waiting to be
/// accepted. The operating system's default of the standard library (128) overflows when
/// hundreds of clients reconnect at once, and every overflow costs its client a one-second
/// retransmission; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Opens the listening socket on `addr` with [`LISTEN_BACKLOG`].
///
/// # Errors
/// When the address cannot be bound.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As the standard library's bind does: a restarted gateway can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    // A REST body holds at most one frame's worth, or one message of the largest size.
    let max_body = state
        .config
        .max_frame_bytes
        .max(state.config.max_message_bytes);
    Router::new()
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics::metrics))
        .route("/realtime/v1/websocket", get(upgrade::handler))
        .route("/socket/websocket", get(upgrade::handler))
        .merge(rest::routes(max_body))
        // Handlers log their own failures; a 503 from /ready is an answer, not an error.
        // Spans name the path only: the query holds the socket's token (`apikey`), which is
        // never logged, at any level.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                    )
                })
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .with_state(state)
}
