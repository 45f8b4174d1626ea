//! `POST /admin/api/connections/{id}/disconnect`: an operator closes a connection.
//!
//! A connection of the node that answers is closed at once: close code 4002 `closed by
//! operator` ([`SessionEnd::Kicked`]), its registry rows end with `close_reason = 'kicked'`, and
//! the close is audited (`kicked`). A connection held by another live node is asked for in
//! `realtime.disconnect_requests`; every node takes the requests addressed to it every
//! [`POLL_INTERVAL`] ([`run_requests`]) and closes those connections the same way.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::connections::ConnectionPath;
use super::{client_addr, database, ApiPath, Error, ErrorBody};
use crate::session::{SessionEnd, Sessions};
use crate::state::AppState;

/// How often a node takes the disconnect requests addressed to it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest `reason` an operator may give, bytes.
const MAX_REASON_BYTES: usize = 256;

/// The optional body of a disconnect.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    /// Why, for the audit log (at most 256 bytes).
    pub reason: Option<String>,
}

/// What became of a disconnect.
#[derive(Debug, Serialize, ToSchema)]
pub struct Disconnected {
    /// The connection.
    pub connection_id: Uuid,
    /// The node that holds it.
    pub node_id: String,
    /// `closing`: this node is closing it now; `requested`: it is on another node, which
    /// closes it within about a second.
    #[schema(example = "closing")]
    pub status: &'static str,
    /// The close code and reason the client gets.
    pub close_code: u16,
    /// The close frame's reason text.
    pub close_reason: &'static str,
    /// What happens next, for a person.
    pub message: String,
}

/// Closes a connection, on whichever node holds it.
#[utoipa::path(
    post,
    path = "/admin/api/connections/{id}/disconnect",
    operation_id = "disconnect_connection",
    tag = "connections",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The connection id")),
    request_body(content = Option<DisconnectBody>, description = "Optional: why, for the audit log", content_type = "application/json"),
    responses(
        (status = 200, description = "The connection is on this node and is being closed", body = Disconnected),
        (status = 202, description = "The connection is on another node, which was asked to close it", body = Disconnected),
        (status = 400, description = "An id that is not a UUID, or a body that cannot be read", body = ErrorBody),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 404, description = "No node holds the connection", body = ErrorBody),
        (status = 409, description = "The node holding it is not live (its slot is freed when it is declared lost)", body = ErrorBody),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub async fn disconnect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<ConnectionPath>,
    body: Bytes,
) -> Result<(StatusCode, Json<Disconnected>), Error> {
    let id = path.id;
    let body = read_body(&body)?;
    let operator = client_addr(&state, peer, &headers);
    let (close_code, close_reason) = SessionEnd::Kicked
        .close_frame()
        .unwrap_or((4002, "closed by operator"));
    let node = state.config.node_id.clone();
    let request = Request {
        requested_on: node.clone(),
        operator_addr: Some(operator.to_string()),
        reason: body.reason,
    };
    if kick(
        &state.session.sessions,
        &state.session.registry,
        &node,
        id,
        &request,
    ) {
        return Ok((
            StatusCode::OK,
            Json(Disconnected {
                connection_id: id,
                node_id: node,
                status: "closing",
                close_code,
                close_reason,
                message: format!("this node is closing the connection with {close_code}"),
            }),
        ));
    }
    let timeout_ms = i64::try_from(state.config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
    let holder = sqlx::query(
        "select s.node_id, \
                coalesce(n.heartbeat_at > now() - make_interval(secs => $2::float8 / 1000), false) \
                    as live \
           from realtime.connection_slots s left join realtime.nodes n using (node_id) \
          where s.connection_id = $1 and s.node_id is not null",
    )
    .bind(id)
    .bind(timeout_ms)
    .fetch_optional(&state.pool);
    let Some(holder) = database(holder).await? else {
        return Err(Error::NotFound(format!("no node holds connection {id}")));
    };
    let holder_node: String = holder.try_get("node_id").map_err(Error::database)?;
    let live: bool = holder.try_get("live").map_err(Error::database)?;
    if holder_node == node {
        return Err(Error::NotFound(format!(
            "connection {id} is no longer open on this node"
        )));
    }
    if !live {
        return Err(Error::Conflict(format!(
            "connection {id} is on node {holder_node}, which is not live: its slot is freed \
             when the node is declared lost"
        )));
    }
    let insert = sqlx::query(
        "insert into realtime.disconnect_requests \
             (node_id, connection_id, requested_on, operator_addr, reason) \
         values ($1, $2, $3, $4, $5)",
    )
    .bind(&holder_node)
    .bind(id)
    .bind(&request.requested_on)
    .bind(&request.operator_addr)
    .bind(&request.reason)
    .execute(&state.pool);
    database(insert).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Disconnected {
            connection_id: id,
            node_id: holder_node.clone(),
            status: "requested",
            close_code,
            close_reason,
            message: format!(
                "the connection is on node {holder_node}, which was asked to close it with \
                 {close_code} (within about a second)"
            ),
        }),
    ))
}

/// The optional JSON body; empty means none.
fn read_body(body: &[u8]) -> Result<DisconnectBody, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DisconnectBody::default());
    }
    let body: DisconnectBody = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("invalid body: {e}")))?;
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_BYTES)
    {
        return Err(Error::BadRequest(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(body)
}

/// Who asked for a disconnect, for the audit record.
#[derive(Debug, Clone)]
struct Request {
    requested_on: String,
    operator_addr: Option<String>,
    reason: Option<String>,
}

/// Closes connection `id` if it is open on this node, and audits it (`kicked`); whether it
/// was.
fn kick(
    sessions: &Sessions,
    registry: &crate::registry::Registry,
    node: &str,
    id: Uuid,
    request: &Request,
) -> bool {
    let Some(session) = sessions.by_connection_id(id) else {
        return false;
    };
    session.close(SessionEnd::Kicked);
    tracing::info!(connection_id = %id, requested_on = %request.requested_on, "connection closed by an operator");
    metrics::counter!("gateway_admin_disconnects_total").increment(1);
    registry.audit(
        "kicked",
        session.user_id,
        Some(session.peer),
        json!({"connection_id": id, "node_id": node, "requested_on": request.requested_on,
               "operator_addr": request.operator_addr, "reason": request.reason}),
    );
    true
}

/// Takes the disconnect requests addressed to this node every [`POLL_INTERVAL`] and closes
/// their connections, until shutdown; removes requests no node took within a minute.
pub async fn run_requests(state: AppState) {
    let node = state.config.node_id.clone();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let taken = sqlx::query(
            "delete from realtime.disconnect_requests \
              where node_id = $1 or requested_at < now() - interval '1 minute' \
          returning node_id, connection_id, requested_on, operator_addr, reason",
        )
        .bind(&node)
        .fetch_all(&state.pool)
        .await;
        let rows = match taken {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read disconnect requests");
                continue;
            }
        };
        for row in rows {
            let (Ok(target), Ok(id)) = (
                row.try_get::<String, _>("node_id"),
                row.try_get::<Uuid, _>("connection_id"),
            ) else {
                continue;
            };
            if target != node {
                tracing::debug!(connection_id = %id, node_id = %target, "disconnect request expired");
                continue;
            }
            let request = Request {
                requested_on: row.try_get("requested_on").unwrap_or_default(),
                operator_addr: row.try_get("operator_addr").unwrap_or_default(),
                reason: row.try_get("reason").unwrap_or_default(),
            };
            if !kick(
                &state.session.sessions,
                &state.session.registry,
                &node,
                id,
                &request,
            ) {
                tracing::debug!(connection_id = %id, "disconnect request for a connection already closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_optional_and_checked() {
        assert!(read_body(b"").unwrap().reason.is_none());
        assert!(read_body(b"  \n").unwrap().reason.is_none());
        assert_eq!(
            read_body(br#"{"reason":"abuse"}"#)
                .unwrap()
                .reason
                .as_deref(),
            Some("abuse")
        );
        let unknown = read_body(br#"{"why":"x"}"#).unwrap_err().to_string();
        assert!(unknown.contains("unknown field"), "{unknown}");
        assert!(read_body(b"{").is_err());
        let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(300));
        assert!(read_body(long.as_bytes()).is_err());
    }
}
