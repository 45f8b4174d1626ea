//! The HTTP side: the listening socket, the accept loop ([`serve`]) and the router of
//! realtime and operator endpoints.

pub mod serve;

use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::admin;
use crate::broadcast::rest;
use crate::config::AllowedOrigins;
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

/// Builds the router over `state`, with the admin dashboard's routes fed by `dashboard`.
pub fn router(state: AppState, dashboard: admin::dashboard::Dashboard) -> Router {
    // A REST body holds at most one frame's worth, or one message of the largest size.
    let max_body = state
        .config
        .max_frame_bytes
        .max(state.config.max_message_bytes);
    Router::new()
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics::metrics))
        .merge(admin::dashboard::routes(dashboard))
        .route("/realtime/v1/websocket", get(upgrade::handler))
        .route("/socket/websocket", get(upgrade::handler))
        .merge(rest::routes(max_body))
        .merge(admin::api::router(&state))
        .layer(cors(&state.config.cors_allowed_origins))
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

/// Request headers a browser page may send: what supabase-js and realtime-js send, and the
/// PostgREST ones supabase-js may add to every request.
const CORS_HEADERS: [&str; 7] = [
    "apikey",
    "authorization",
    "content-type",
    "x-client-info",
    "accept-profile",
    "content-profile",
    "prefer",
];

/// How long a browser may cache a preflight's answer.
const CORS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Browser access (CORS) to every route: preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered here, and every answer to a page of an allowed
/// origin says so (`*`, or the page's origin with `Vary: Origin`). Upgrades are unaffected:
/// browsers do not apply CORS to WebSockets.
fn cors(origins: &AllowedOrigins) -> CorsLayer {
    let allow_origin = match origins {
        AllowedOrigins::Any => AllowOrigin::any(),
        AllowedOrigins::List(list) => AllowOrigin::list(
            list.iter()
                // Checked at start: an origin is a few ASCII characters.
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(CORS_HEADERS.map(HeaderName::from_static))
        .max_age(CORS_MAX_AGE)
}
