//! `GET /metrics`: Prometheus text exposition of the gateway's counters and gauges.
//!
//! Counters are recorded where things happen (`gateway_<stage>_<thing>_total`); gauges that are
//! cheaper to read than to maintain (connections, channels and subscriptions, the pool, the
//! registry queue, memory, and the outbox backlog with one bounded query) are sampled at scrape
//! time.
//! The `metrics` facade has one recorder per process; it is installed on first use and shared by
//! every gateway in the process (tests run several).

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for &(name, buckets) in super::catalog::BUCKETS {
            // Only an empty bucket list is refused, and none is.
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows gauges only");
        }
        super::catalog::register();
        handle
    })
}

/// Connection slots held on every node, or `None` when the database does not answer within a
/// second (the scrape then shows the last value).
async fn cluster_connections(pool: &sqlx::PgPool) -> Option<i64> {
    let query = sqlx::query_scalar::<_, i64>(
        "select count(*) from realtime.connection_slots where node_id is not null",
    )
    .fetch_one(pool);
    tokio::time::timeout(std::time::Duration::from_secs(1), query)
        .await
        .ok()?
        .ok()
}

/// The outbox backlog above `last_id` (the highest id this node read): its rows and the age of
/// its oldest row in seconds (0 without backlog), from one statement over the `id` index, or
/// `None` when the database does not answer within a second (the scrape then shows the last
/// value). Rows of transactions still open are not visible yet, so not counted.
async fn outbox_backlog(pool: &sqlx::PgPool, last_id: i64) -> Option<(i64, f64)> {
    let query = sqlx::query_as::<_, (i64, f64)>(
        "select count(*), coalesce(extract(epoch from clock_timestamp() - min(captured_at)), 0)::float8 \
           from realtime.changes where id > $1",
    )
    .bind(last_id)
    .fetch_one(pool);
    tokio::time::timeout(std::time::Duration::from_secs(1), query)
        .await
        .ok()?
        .ok()
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    Some(pages * page_size)
}

/// `GET /metrics`; with `--metrics-auth`, only for a [`credential`](super::credential); a
/// refusal is audited (`auth_refused`, stage `admin`).
pub async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if state.config.metrics_auth {
        let gate = super::credential::Gate {
            verifier: &state.session.verifier,
            admin_token: state.config.admin_token.as_deref(),
        };
        if let Err(denied) = gate.check(&headers) {
            let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
            let peer = state.session.limits.clients.client_addr(peer, forwarded);
            let detail = serde_json::json!({"endpoint": "/metrics", "message": denied.message()});
            state
                .session
                .registry
                .auth_refused("admin", denied.reason(), None, Some(peer), detail);
            return denied.into_response();
        }
    }
    let handle = handle();
    let sessions = state.session.sessions.len();
    metrics::gauge!("gateway_sessions").set(sessions as f64);
    let in_use = state.session.limits.connections_in_use() as f64;
    let cap = f64::from(state.session.limits.max_connections());
    metrics::gauge!("gateway_limits_connections_in_use").set(in_use);
    metrics::gauge!("gateway_limits_max_connections").set(cap);
    metrics::gauge!("gateway_connections", "scope" => "node").set(in_use);
    metrics::gauge!("gateway_connections_max").set(cap);
    if let Some(cluster) = cluster_connections(&state.pool).await {
        metrics::gauge!("gateway_connections", "scope" => "cluster").set(cluster as f64);
    }
    let router = &state.session.router;
    let pg_channels = router.channel_count() as f64;
    metrics::gauge!("gateway_router_channels").set(pg_channels);
    metrics::gauge!("gateway_channels", "kind" => "postgres_changes").set(pg_channels);
    let (broadcast, presence) = state.session.hub.reader_counts();
    metrics::gauge!("gateway_channels", "kind" => "broadcast").set(broadcast as f64);
    metrics::gauge!("gateway_channels", "kind" => "presence").set(presence as f64);
    metrics::gauge!("gateway_subscriptions", "kind" => "postgres_changes")
        .set(router.subscription_count() as f64);
    let pool_size = state.pool.size() as usize;
    let idle = state.pool.num_idle();
    metrics::gauge!("gateway_db_pool_connections", "state" => "in_use")
        .set(pool_size.saturating_sub(idle) as f64);
    metrics::gauge!("gateway_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("gateway_registry_pending").set(state.session.registry.pending() as f64);
    if state.listener.started.load(Ordering::Acquire) {
        let last_id = state.listener.last_id.load(Ordering::Relaxed);
        let last_id = i64::try_from(last_id).unwrap_or(i64::MAX);
        if let Some((rows, age)) = outbox_backlog(&state.pool, last_id).await {
            metrics::gauge!("gateway_outbox_backlog_rows").set(rows as f64);
            metrics::gauge!("gateway_outbox_backlog_age_seconds").set(age.max(0.0));
        }
    }
    let listener_up = state.listener.connected.load(Ordering::Acquire);
    metrics::gauge!("gateway_listener_connected").set(if listener_up { 1.0 } else { 0.0 });
    metrics::gauge!("gateway_listener_last_change_id")
        .set(state.listener.last_id.load(Ordering::Relaxed) as f64);
    metrics::counter!("gateway_listener_reads_total")
        .absolute(state.listener.reads.load(Ordering::Relaxed));
    let mut queued = 0usize;
    state
        .session
        .sessions
        .for_each(|s| queued += s.outbound.queued_frames());
    metrics::gauge!("gateway_outbound_queued_frames").set(queued as f64);
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("gateway_process_resident_memory_bytes").set(rss as f64);
    }
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
