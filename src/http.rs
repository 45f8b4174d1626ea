//! The HTTP router: realtime endpoints, operator endpoints and their layers.

use axum::routing::get;
use axum::Router;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::admin;
use crate::session::upgrade;
use crate::state::AppState;

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/realtime/v1/websocket", get(upgrade::handler))
        .route("/socket/websocket", get(upgrade::handler))
        // Handlers log their own failures; a 503 from /ready is an answer, not an error.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(state)
}
