//! Operator endpoints: liveness, readiness and metrics, the admin JSON API ([`api`]), the live
//! dashboard at `/admin` ([`dashboard`], with the connection-cap watcher), and the credential
//! that guards the ones that are not open ([`credential`]).

pub mod api;
pub mod catalog;
pub mod credential;
pub mod dashboard;
pub mod metrics;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::state::AppState;

/// `GET /health`: the process is up and serving HTTP.
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 when the database answers and the change listener is connected; 503 with
/// the failing part otherwise, and while shutting down. The database is asked at most once a
/// second however often this is polled ([`crate::pg::Probe`]).
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database_ok = state.database.reachable().await;
    let listener_ok = state
        .listener
        .connected
        .load(std::sync::atomic::Ordering::Acquire)
        && state
            .listener
            .started
            .load(std::sync::atomic::Ordering::Acquire);
    let shutting_down = state.shutdown.is_triggered();
    let ready = database_ok && listener_ok && !shutting_down;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": if database_ok { "ok" } else { "unreachable" },
        "listener": if listener_ok { "connected" } else { "disconnected" },
        "shutting_down": shutting_down,
        "node_id": state.config.node_id,
    });
    (status, Json(body))
}
