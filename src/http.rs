//! The HTTP router: realtime endpoints, operator endpoints and their layers.

use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::admin;
use crate::state::AppState;

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
