//! Every metric the gateway records, with its help text: registered when the gateway starts, so
//! the first scrape already lists each one (`# HELP`, `# TYPE`, and zero for a counter or gauge
//! without labels), and a dashboard or an alert built on a name finds it before its first event.
//!
//! A metric recorded anywhere in the code must be listed here; `tests/metrics.rs` checks the
//! source for names that are not.

/// What kind of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (rendered as a summary, or as a histogram when [`BUCKETS`] lists it).
    Histogram,
}

/// One metric: kind, name, help, and whether it carries labels (then no zero series is made
/// up front: its label values are not known before its first event).
pub type Entry = (Kind, &'static str, &'static str, bool);

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// The catalog.
pub const METRICS: &[Entry] = &[
    // connections and sessions
    (G, "gateway_connections", "Open WebSocket connections: scope=\"node\" on this node, scope=\"cluster\" on every node sharing the database.", true),
    (G, "gateway_connections_max", "The connection cap, across the cluster.", false),
    (G, "gateway_sessions", "Sessions (open WebSocket connections) on this node.", false),
    (G, "gateway_session_connected", "Sessions running on this node, counted as they start and end.", false),
    (G, "gateway_limits_connections_in_use", "Connection slots this node holds.", false),
    (G, "gateway_limits_max_connections", "The connection cap, across the cluster.", false),
    (C, "gateway_limits_refused_total", "Upgrades refused because the cluster was at its connection cap.", false),
    (C, "gateway_limits_unavailable_total", "Upgrades refused because the connection cap could not be checked.", false),
    (C, "gateway_limits_reclaimed_total", "Connections closed because their slot was reclaimed.", false),
    (C, "gateway_limits_rate_limited_total", "Requests refused by a rate or per-client limit, by kind.", true),
    (H, "gateway_limits_slot_batch_size", "Upgrades whose slots were taken in one statement.", false),
    (H, "gateway_limits_auth_check_batch_size", "Upgrades whose addresses were checked for failed authentications in one statement.", false),
    (C, "gateway_limits_auth_check_unavailable_total", "Upgrades admitted without their failed-authentication check (the database did not answer in time).", false),
    (C, "gateway_limits_unknown_slots_freed_total", "Connection slots a tick freed because this node held them for none of its connections (their statement committed after its answer was lost).", false),
    (C, "gateway_session_auth_failures_total", "Joins refused for their token.", false),
    (C, "gateway_session_bounds_refused_total", "Joins or pushes refused for exceeding a bound.", false),
    (C, "gateway_session_channelless_closed_total", "Connections closed for joining no channel in time.", false),
    (C, "gateway_session_identity_changes_total", "Channel tokens replaced by a token of another user or role.", false),
    (C, "gateway_session_join_errors_total", "Joins answered with an error.", false),
    (C, "gateway_session_malformed_frames_total", "Client frames that could not be read.", false),
    (C, "gateway_session_protocol_errors_total", "Connections failed for breaking the WebSocket protocol (close codes 1002, 1007, 1009).", false),
    (C, "gateway_session_replication_timeouts_total", "Channels closed because the change stream was not ready in time for their replication_ready join.", false),
    (C, "gateway_session_private_refused_total", "Private-channel joins, sends and tracks refused, by kind and cause.", true),
    (C, "gateway_session_slow_consumers_total", "Connections closed because their queue was full.", false),
    (C, "gateway_session_tokens_expired_total", "Channels ended because their token expired.", false),
    (C, "gateway_auth_refused_total", "Tokens and credentials refused, by stage and reason.", true),
    (C, "gateway_auth_jwks_failures_total", "JWKS reads that failed.", false),
    (C, "gateway_http_accept_errors_total", "TCP accepts that failed.", false),
    (C, "gateway_http_pending_refused_total", "Connections refused while too many were in their HTTP phase.", false),
    // channels, subscriptions and deliveries, by kind (what an operator alerts on)
    (G, "gateway_channels", "Channels joined on this node (one per connection and topic), by kind: postgres_changes (with subscriptions), broadcast (receiving broadcasts), presence (receiving presence).", true),
    (G, "gateway_subscriptions", "Subscriptions on this node's channels, by kind (postgres_changes).", true),
    (C, "gateway_messages_delivered_total", "Messages written to sockets, by kind: changes, broadcast, presence, system, reply.", true),
    (H, "gateway_delivery_latency_seconds", "Delivery latency by kind (changes: from capture in the writer's transaction; broadcast and presence: from arrival at this gateway) to the end of the socket write; one observation per written batch and kind, its oldest frame.", true),
    // capture
    (G, "gateway_listener_connected", "1 while the change listener's connection is up.", false),
    (G, "gateway_listener_last_change_id", "Outbox id of the last change read.", false),
    (C, "gateway_listener_reads_total", "Outbox reads.", false),
    (C, "gateway_listener_changes_total", "Changes read from the outbox.", false),
    (C, "gateway_listener_read_errors_total", "Outbox reads that failed.", false),
    (C, "gateway_listener_reconnects_total", "Reconnections of the change listener.", false),
    (G, "gateway_listener_bell_resting", "1 while this node rests the capture bell (reading at its sustained pace).", false),
    (G, "gateway_outbox_backlog_rows", "Outbox rows above the last id this node read (sampled at scrape).", false),
    (G, "gateway_outbox_backlog_age_seconds", "Age of the oldest outbox row above the last id this node read; 0 without backlog.", false),
    (C, "gateway_capture_gaps_total", "Changes found missed (pruned before this node read them).", false),
    // resuming sessions after a reconnect
    (C, "gateway_resume_stored_total", "Sockets with a session id that ended and stored their channels' positions.", false),
    (C, "gateway_resume_unknown_total", "Sockets with a session id that ended without a known position (they cannot be resumed).", false),
    (C, "gateway_resume_refused_total", "Channels joined with a session id that could not resume, by reason.", true),
    (C, "gateway_resume_changes_total", "Missed changes delivered to resumed channels before live ones.", false),
    (C, "gateway_resume_failed_total", "Resumed channels whose catch-up failed (live from the join on).", false),
    (C, "gateway_capture_pruned_total", "Outbox rows pruned.", false),
    (C, "gateway_capture_rows_failed_total", "Outbox rows that could not be delivered.", false),
    (C, "gateway_decode_errors_total", "Outbox rows that could not be decoded.", false),
    (C, "gateway_catalog_reads_total", "Table descriptions read from the catalog.", false),
    // fan-out
    (G, "gateway_router_channels", "Channels with Postgres Changes subscriptions on this node.", false),
    (C, "gateway_router_deliveries_total", "Postgres Changes frames queued to connections.", false),
    (C, "gateway_router_dropped_total", "Postgres Changes frames refused by a full or closed queue.", false),
    (C, "gateway_router_rls_checks_total", "Row-level security row checks asked for (changes x claim sets).", false),
    (C, "gateway_router_rls_hidden_total", "Deliveries withheld by row-level security.", false),
    (C, "gateway_router_rls_errors_total", "Error entries sent because a claim set's check raised.", false),
    (C, "gateway_router_rls_failures_total", "Row-level security checks that could not run at all.", false),
    (H, "gateway_router_rls_check_seconds", "Duration of one row-level security check query (one page of changes).", false),
    // broadcast and presence
    (C, "gateway_broadcast_deliveries_total", "Broadcast and presence frames queued to connections.", false),
    (C, "gateway_broadcast_dropped_total", "Broadcast and presence frames refused by a full or closed queue.", false),
    (C, "gateway_broadcast_rest_messages_total", "Messages received through the REST broadcast API.", false),
    (C, "gateway_broadcast_too_large_total", "Broadcasts refused for their size (database messages included).", false),
    (C, "gateway_broadcast_replayed_total", "Stored database messages replayed to joining private channels.", false),
    (C, "gateway_broadcast_replay_duplicates_total", "Live database messages not delivered to a channel because it had them replayed.", false),
    (C, "gateway_broadcast_messages_pruned_total", "Stored database messages deleted after MESSAGE_RETENTION.", false),
    (C, "gateway_broadcast_private_refused_total", "REST messages to private topics refused, by cause.", true),
    (C, "gateway_presence_refused_total", "Presence tracks refused.", false),
    (G, "gateway_bus_pending", "Cluster-bus messages waiting to be published.", false),
    (C, "gateway_bus_published_total", "Cluster-bus messages published.", false),
    (C, "gateway_bus_publish_failures_total", "Cluster-bus publishes that failed.", false),
    (C, "gateway_bus_received_total", "Cluster-bus messages received.", false),
    (C, "gateway_bus_malformed_total", "Cluster-bus messages that could not be read.", false),
    (C, "gateway_bus_dropped_total", "Cluster-bus messages dropped (bound reached).", false),
    (C, "gateway_bus_refused_total", "Cluster-bus messages refused.", false),
    (C, "gateway_bus_spilled_total", "Cluster-bus messages carried through the database table.", false),
    (C, "gateway_bus_gaps_total", "Times the cluster bus may have missed messages.", false),
    // queues and sockets
    (G, "gateway_outbound_queued_frames", "Frames waiting in connection queues on this node.", false),
    (C, "gateway_writer_flushes_total", "Socket flushes.", false),
    (C, "gateway_writer_frames_total", "Frames written to sockets.", false),
    // registry, audit, reaper
    (G, "gateway_registry_pending", "Registry and audit writes waiting: reported and not yet written.", false),
    (C, "gateway_registry_rows_failed_total", "Registry or audit rows the database refused, by write.", true),
    (C, "gateway_registry_write_failures_total", "Registry write batches that failed.", false),
    (C, "gateway_registry_rows_dropped_total", "Registry writes dropped because the pending bound was reached.", false),
    (C, "gateway_registry_audit_dropped_total", "Audit records dropped because the pending bound was reached.", false),
    (C, "gateway_registry_audit_truncated_total", "Audit records whose detail was truncated.", false),
    (C, "gateway_registry_reregistrations_total", "Times this node re-registered its live rows.", false),
    (C, "gateway_reaper_reaped_total", "Stale sessions closed by the reaper.", false),
    (C, "gateway_admin_disconnects_total", "Connections closed by an operator (admin API disconnect).", false),
    (C, "gateway_admin_cap_crossings_total", "Times the cluster's open connections crossed the warning share of the cap (ADMIN_WARN_PERCENT), counted by the node that recorded the crossing.", false),
    // database and process
    (G, "gateway_db_pool_connections", "Connections of the gateway's database pool, by state: in_use, idle.", true),
    (G, "gateway_process_resident_memory_bytes", "Resident memory of the gateway process.", false),
];

/// Label values known in advance: these series are zero from the first scrape too.
pub const SERIES: &[(&str, &str, &[&str])] = &[
    (
        "gateway_channels",
        "kind",
        &["postgres_changes", "broadcast", "presence"],
    ),
    ("gateway_subscriptions", "kind", &["postgres_changes"]),
    (
        "gateway_messages_delivered_total",
        "kind",
        &["changes", "broadcast", "presence", "system", "reply"],
    ),
    ("gateway_db_pool_connections", "state", &["in_use", "idle"]),
];

/// Bucket bounds (seconds) of the histograms rendered as Prometheus histograms.
pub const BUCKETS: &[(&str, &[f64])] = &[(
    "gateway_delivery_latency_seconds",
    &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ],
)];

/// Registers every metric of [`METRICS`] with the process's recorder.
pub fn register() {
    for &(kind, name, help, labelled) in METRICS {
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                if !labelled {
                    metrics::counter!(name).increment(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                if !labelled {
                    metrics::gauge!(name).increment(0.0);
                }
            }
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    for &(name, label, values) in SERIES {
        for &value in values {
            let labels = [(label, value)];
            match METRICS.iter().find(|m| m.1 == name).map(|m| m.0) {
                Some(Kind::Counter) => metrics::counter!(name, &labels).increment(0),
                Some(Kind::Gauge) => metrics::gauge!(name, &labels).increment(0.0),
                Some(Kind::Histogram) | None => {}
            }
        }
    }
}
