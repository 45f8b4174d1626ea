//! What the dashboard reads from the database while someone watches it: the nodes sharing the
//! database (`realtime.nodes`, with the connection slots and registry rows each holds), the
//! channels with the most connections, and the latest audit records. Each read is one indexed
//! or bounded statement; the sampler runs them only while a dashboard stream is open.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// Channels listed, most connections first.
pub(super) const TOP_CHANNELS: i64 = 10;
/// Audit records listed, newest first.
pub(super) const RECENT_AUDIT: i64 = 20;

/// One gateway node of the cluster.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Node {
    /// Its `--node-id`.
    pub node_id: String,
    /// The address it serves.
    pub listen_addr: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Seconds since its last heartbeat (a node silent past the heartbeat timeout is lost).
    pub silent_seconds: f64,
    /// Connection slots it holds: its open connections.
    pub connections: i64,
    /// Its active registry rows: channels joined on it.
    pub channels: i64,
}

/// A channel and how many joined it, across the cluster.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Channel {
    /// The channel name (at most its first 1,024 bytes, as the registry keeps it).
    pub channel_name: String,
    /// Connections that joined it.
    pub connections: i64,
    /// Users among them (tokens with a `sub`).
    pub users: i64,
}

/// One audit-log record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEvent {
    /// Its id, increasing.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened (`cap_refused`, `reaped`, `auth_refused`, ...).
    pub kind: String,
    /// The node that recorded it.
    pub node_id: Option<String>,
    /// The client address, if any.
    pub remote_addr: Option<String>,
    /// Details.
    pub detail: Value,
}

/// The cluster's nodes, by id.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn nodes(pool: &PgPool) -> Result<Vec<Node>, sqlx::Error> {
    sqlx::query_as(
        "select n.node_id, n.listen_addr, n.started_at, \
                extract(epoch from now() - n.heartbeat_at)::float8 as silent_seconds, \
                (select count(*) from realtime.connection_slots s \
                  where s.node_id = n.node_id) as connections, \
                (select count(*) from public.realtime_subscription_registry r \
                  where r.is_active and r.node_id = n.node_id) as channels \
         from realtime.nodes n order by n.node_id",
    )
    .fetch_all(pool)
    .await
}

/// The [`TOP_CHANNELS`] channels with the most connections.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn top_channels(pool: &PgPool) -> Result<Vec<Channel>, sqlx::Error> {
    sqlx::query_as(
        "select channel_name, count(distinct connection_id) as connections, \
                count(distinct user_id) as users \
         from public.realtime_subscription_registry where is_active \
         group by channel_name order by connections desc, channel_name limit $1",
    )
    .bind(TOP_CHANNELS)
    .fetch_all(pool)
    .await
}

/// The [`RECENT_AUDIT`] newest audit records.
///
/// # Errors
/// When the database cannot be reached.
pub(super) async fn recent_audit(pool: &PgPool) -> Result<Vec<AuditEvent>, sqlx::Error> {
    sqlx::query_as(
        "select id, at, kind, node_id, remote_addr, detail from realtime.audit_log \
         order by id desc limit $1",
    )
    .bind(RECENT_AUDIT)
    .fetch_all(pool)
    .await
}
