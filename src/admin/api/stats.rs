//! `GET /admin/api/stats`: what this node serves, from its memory, and what the cluster serves,
//! from the tables every node keeps current (`realtime.connection_slots`, `realtime.nodes`,
//! `public.realtime_subscription_registry`).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::{database, Error, ErrorBody};
use crate::state::AppState;

/// The answer of `GET /admin/api/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// When the answer was made.
    pub at: DateTime<Utc>,
    /// This node.
    pub node: NodeStats,
    /// Every node sharing the database.
    pub cluster: ClusterStats,
}

/// What this node serves, from its memory.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStats {
    /// This node's id (`--node-id`).
    pub node_id: String,
    /// Open WebSockets on this node.
    pub connections: usize,
    /// Connection slots this node holds (an upgrade holds one before its session starts).
    pub slots_held: usize,
    /// Channels joined on this node, by kind.
    pub channels: ChannelCounts,
    /// Postgres Changes subscriptions (entries of `postgres_changes`) of this node's channels.
    pub subscriptions: usize,
    /// Frames queued for this node's clients, not yet written.
    pub queued_frames: usize,
    /// Registry and audit writes reported and not yet written.
    pub registry_pending: usize,
    /// The change listener.
    pub listener: ListenerStats,
    /// What the change router did since the node started.
    pub changes: FlowStats,
    /// What the broadcast hub did since the node started.
    pub broadcasts: FlowStats,
}

/// Channels joined on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelCounts {
    /// Channels with Postgres Changes subscriptions.
    pub postgres_changes: usize,
    /// Memberships that receive broadcasts.
    pub broadcast: usize,
    /// Memberships that receive presence.
    pub presence: usize,
    /// Distinct channels with members or presence on this node.
    pub topics: usize,
}

/// The change listener's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenerStats {
    /// Whether its connection is up.
    pub connected: bool,
    /// The highest outbox id read.
    pub last_change_id: u64,
}

/// Counts of a fan-out since the node started.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowStats {
    /// Changes routed, or messages sent.
    pub messages: u64,
    /// Frames queued to clients.
    pub delivered: u64,
    /// Frames refused by full or closed queues (slow consumers).
    pub dropped: u64,
}

/// What every node sharing the database serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStats {
    /// Open WebSockets on every node (connection slots held).
    pub connections: i64,
    /// The cap on them (`--max-connections`).
    pub connections_max: u32,
    /// Distinct channel names joined (active registry rows).
    pub channels: i64,
    /// Channels joined (active registry rows: one per join).
    pub subscriptions: i64,
    /// Distinct users (the channel tokens' `sub`) with a channel joined.
    pub users: i64,
    /// The nodes, live and lost.
    pub nodes: Vec<ClusterNode>,
}

/// One node of the cluster, from `realtime.nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterNode {
    /// Its id.
    pub node_id: String,
    /// The address it serves.
    pub listen_addr: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Whether it heartbeat within `--heartbeat-timeout` (else it is being declared lost).
    pub live: bool,
    /// Connection slots it holds.
    pub connections: i64,
    /// Its active registry rows.
    pub subscriptions: i64,
}

/// Statistics of this node and of the cluster.
#[utoipa::path(
    get,
    path = "/admin/api/stats",
    operation_id = "get_stats",
    tag = "cluster",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This node's and the cluster's numbers", body = Stats),
        (status = 401, description = "No credential, or one that is not accepted", body = ErrorBody),
        (status = 403, description = "A valid token whose role is not service_role", body = ErrorBody),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub async fn get(State(state): State<AppState>) -> Result<Json<Stats>, Error> {
    let cluster = cluster(&state).await?;
    Ok(Json(Stats {
        at: Utc::now(),
        node: node(&state),
        cluster,
    }))
}

fn node(state: &AppState) -> NodeStats {
    let services = &state.session;
    let (broadcast, presence) = services.hub.reader_counts();
    let mut queued_frames = 0usize;
    services
        .sessions
        .for_each(|s| queued_frames += s.outbound.queued_frames());
    let router = &services.router.stats;
    let hub = services.hub.stats();
    NodeStats {
        node_id: state.config.node_id.clone(),
        connections: services.sessions.len(),
        slots_held: services.limits.connections_in_use(),
        channels: ChannelCounts {
            postgres_changes: services.router.channel_count(),
            broadcast,
            presence,
            topics: services.hub.topic_count(),
        },
        subscriptions: services.router.subscription_count(),
        queued_frames,
        registry_pending: services.registry.pending(),
        listener: ListenerStats {
            connected: state.listener.connected.load(Ordering::Acquire),
            last_change_id: state.listener.last_id.load(Ordering::Relaxed),
        },
        changes: FlowStats {
            messages: router.changes.load(Ordering::Relaxed),
            delivered: router.delivered.load(Ordering::Relaxed),
            dropped: router.dropped.load(Ordering::Relaxed),
        },
        broadcasts: FlowStats {
            messages: hub.messages.load(Ordering::Relaxed),
            delivered: hub.delivered.load(Ordering::Relaxed),
            dropped: hub.dropped.load(Ordering::Relaxed),
        },
    }
}

async fn cluster(state: &AppState) -> Result<ClusterStats, Error> {
    let totals = sqlx::query(
        "select (select count(*) from realtime.connection_slots where node_id is not null) \
                    as connections, \
                count(distinct r.channel_name) as channels, \
                count(*) as subscriptions, \
                count(distinct r.claimed_user_id) as users \
           from public.realtime_subscription_registry r where r.is_active",
    )
    .fetch_one(&state.pool);
    let totals = database(totals).await?;
    let timeout_ms = i64::try_from(state.config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX);
    let nodes = sqlx::query(
        "select n.node_id, n.listen_addr, n.started_at, n.heartbeat_at, \
                n.heartbeat_at > now() - make_interval(secs => $1::float8 / 1000) as live, \
                (select count(*) from realtime.connection_slots s where s.node_id = n.node_id) \
                    as connections, \
                (select count(*) from public.realtime_subscription_registry r \
                  where r.is_active and r.node_id = n.node_id) as subscriptions \
           from realtime.nodes n order by n.node_id",
    )
    .bind(timeout_ms)
    .fetch_all(&state.pool);
    let nodes = database(nodes).await?;
    let read = |e: sqlx::Error| Error::database(e);
    let nodes = nodes
        .iter()
        .map(|row| {
            Ok(ClusterNode {
                node_id: row.try_get("node_id")?,
                listen_addr: row.try_get("listen_addr")?,
                started_at: row.try_get("started_at")?,
                heartbeat_at: row.try_get("heartbeat_at")?,
                live: row.try_get("live")?,
                connections: row.try_get("connections")?,
                subscriptions: row.try_get("subscriptions")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(read)?;
    Ok(ClusterStats {
        connections: totals.try_get("connections").map_err(read)?,
        connections_max: state.config.max_connections,
        channels: totals.try_get("channels").map_err(read)?,
        subscriptions: totals.try_get("subscriptions").map_err(read)?,
        users: totals.try_get("users").map_err(read)?,
        nodes,
    })
}
