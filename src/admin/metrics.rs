//! `GET /metrics`: Prometheus text exposition of the gateway's counters and gauges.
//!
//! Counters are recorded where things happen (`gateway_<stage>_<thing>_total`); gauges that are
//! cheaper to read than to maintain (connections, channels, memory) are sampled at scrape time.
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
    metrics::gauge!("gateway_router_channels").set(state.session.router.channel_count() as f64);
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
