//! What one dashboard sample holds, as the page receives it (JSON): connections against the
//! cap and the warning state, the chart point (messages per second, delivery latency,
//! connections), this node's stale sessions, and, while someone watches, the cluster overview.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::overview::{AuditEvent, Channel, Node};

/// Stale sessions listed, the most silent first.
pub(super) const MAX_STALE: usize = 50;

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Counts samples since the node started.
    pub seq: u64,
    /// The node that serves the dashboard.
    pub node_id: String,
    /// Whether the database answered this sample's reads.
    pub database: bool,
    /// Whether this node's change listener is connected (as `/ready` reports it).
    pub listener_connected: bool,
    /// Connections against the cap.
    pub connections: Connections,
    /// This sample's point of the charts.
    pub point: Point,
    /// This node's sessions silent for more than half the heartbeat timeout.
    pub stale: Vec<Stale>,
    /// Silence, in seconds, after which a session is listed as stale.
    pub stale_after_seconds: f64,
    /// Silence, in seconds, after which the reaper closes a session.
    pub reaped_after_seconds: f64,
    /// The cluster overview, read only while a dashboard stream is open.
    pub overview: Option<Overview>,
}

/// Connections against the cap.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Open on this node.
    pub node: usize,
    /// Open across the cluster; `None` when the database did not answer.
    pub cluster: Option<i64>,
    /// The cap across the cluster.
    pub cap: u32,
    /// The warning threshold, percent of the cap.
    pub warn_percent: u8,
    /// The clear threshold, percent of the cap.
    pub clear_percent: u8,
    /// The fewest connections that are a warning.
    pub warn_at: u64,
    /// Whether the cluster is in its warning state.
    pub warning: bool,
    /// Since when it is in its current state, when known.
    pub since: Option<DateTime<Utc>>,
}

/// One point of the charts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Messages (changes, broadcast, presence) delivered per second by this node.
    pub messages_per_second: f64,
    /// Median delivery latency since the previous point, milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of delivery latency since the previous point, milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Open connections across the cluster.
    pub connections: Option<i64>,
}

/// A session of this node that has not heartbeated for a while.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stale {
    /// The connection.
    pub connection_id: Uuid,
    /// The client's address.
    pub remote_addr: String,
    /// The socket token's user, if any.
    pub user_id: Option<Uuid>,
    /// Seconds since its last heartbeat (or its connect).
    pub silent_seconds: f64,
}

/// The cluster, from the database.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The nodes sharing the database.
    pub nodes: Vec<Node>,
    /// The channels with the most connections.
    pub top_channels: Vec<Channel>,
    /// The newest audit records.
    pub audit: Vec<AuditEvent>,
}

/// What the stale list needs to know of a session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heard {
    /// The connection.
    pub connection_id: Uuid,
    /// The client's address.
    pub peer: SocketAddr,
    /// The socket token's user.
    pub user_id: Option<Uuid>,
    /// Milliseconds since the Unix epoch of its last heartbeat.
    pub last_heartbeat_ms: u64,
}

/// The sessions of `heard` silent for more than `after_ms` at `now_ms`, the most silent first,
/// at most [`MAX_STALE`].
pub(super) fn stale(
    heard: impl IntoIterator<Item = Heard>,
    now_ms: u64,
    after_ms: u64,
) -> Vec<Stale> {
    let mut silent: Vec<(u64, Heard)> = heard
        .into_iter()
        .map(|h| (now_ms.saturating_sub(h.last_heartbeat_ms), h))
        .filter(|(silent, _)| *silent > after_ms)
        .collect();
    silent.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(a.1.connection_id.cmp(&b.1.connection_id))
    });
    silent
        .into_iter()
        .take(MAX_STALE)
        .map(|(silent, h)| Stale {
            connection_id: h.connection_id,
            remote_addr: h.peer.to_string(),
            user_id: h.user_id,
            silent_seconds: silent as f64 / 1000.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only sessions silent past the limit are listed, most silent first, and the list is
    /// bounded however many there are.
    #[test]
    fn stale_lists_the_most_silent_sessions_past_the_limit() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let heard = |n: u128, last| Heard {
            connection_id: Uuid::from_u128(n),
            peer,
            user_id: None,
            last_heartbeat_ms: last,
        };
        let now = 100_000;
        let list = stale(
            [
                heard(1, 99_000),
                heard(2, 60_000),
                heard(3, 40_000),
                heard(4, 70_000),
            ],
            now,
            30_000,
        );
        let ids: Vec<u128> = list.iter().map(|s| s.connection_id.as_u128()).collect();
        assert_eq!(ids, [3, 2]);
        assert_eq!(list[0].silent_seconds, 60.0);
        assert_eq!(list[0].remote_addr, "10.0.0.1:5000");
        // A heartbeat stamped after `now` (read between two clock reads) is not silent.
        assert!(stale([heard(5, now + 5)], now, 0).is_empty());
        let many = stale((0..500).map(|n| heard(n, 0)), now, 1);
        assert_eq!(many.len(), MAX_STALE);
    }
}
