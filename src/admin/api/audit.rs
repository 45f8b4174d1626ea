//! `GET /admin/api/audit`: the newest records of `realtime.audit_log` (every node's), filtered
//! by kind, user, node and time, newest first; `before` pages further back.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{database, ApiQuery, Error, ErrorBody};
use crate::state::AppState;

/// Default number of records.
const DEFAULT_LIMIT: i64 = 100;
/// Most records one answer holds.
const MAX_LIMIT: i64 = 1000;

/// Filters of `GET /admin/api/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records of this kind (`kicked`, `auth_refused`, `slow_consumer`, `reaped`,
    /// `cap_refused`, `rate_limited`, ...).
    pub kind: Option<String>,
    /// Only records about this user.
    pub user: Option<Uuid>,
    /// Only records written by this node.
    pub node: Option<String>,
    /// Only records at or after this time (RFC 3339, e.g. `2026-01-31T12:00:00Z`).
    pub since: Option<DateTime<Utc>>,
    /// Only records older than this record id (the last `id` of a previous answer).
    pub before: Option<i64>,
    /// How many, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// Audit records, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The records.
    pub events: Vec<AuditEvent>,
}

/// One record of `realtime.audit_log`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Its id (increasing).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: String,
    /// The node that wrote it.
    pub node_id: Option<String>,
    /// The user concerned, if known.
    pub user_id: Option<Uuid>,
    /// The client address, if any.
    pub remote_addr: Option<String>,
    /// Details, by kind.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Recent audit records.
#[utoipa::path(
    get,
    path = "/admin/api/audit",
    operation_id = "list_audit_events",
    tag = "audit",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit records, newest first", body = AuditPage),
        (status = 400, description = "A filter that cannot be used", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, Error> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let request = sqlx::query_scalar::<_, SqlJson<Vec<AuditEvent>>>(
        "select coalesce(json_agg(json_build_object('id', a.id, 'at', a.at, 'kind', a.kind, \
                    'node_id', a.node_id, 'user_id', a.user_id, 'remote_addr', a.remote_addr, \
                    'detail', a.detail) order by a.id desc), '[]'::json) \
           from (select * from realtime.audit_log \
                  where ($1::text is null or kind = $1) \
                    and ($2::uuid is null or user_id = $2) \
                    and ($3::text is null or node_id = $3) \
                    and ($4::timestamptz is null or at >= $4) \
                    and ($5::bigint is null or id < $5) \
                  order by id desc limit $6) a",
    )
    .bind(query.kind.as_deref())
    .bind(query.user)
    .bind(query.node.as_deref())
    .bind(query.since)
    .bind(query.before)
    .bind(limit)
    .fetch_one(&state.pool);
    let SqlJson(events) = database(request).await?;
    Ok(Json(AuditPage { events }))
}
