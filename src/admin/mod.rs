//! Operator endpoints: liveness, readiness and metrics.

pub mod metrics;

use std::time::Duration;

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
/// the failing part otherwise, and while shutting down.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool),
    )
    .await;
    let database_ok = matches!(database, Ok(Ok(1)));
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
