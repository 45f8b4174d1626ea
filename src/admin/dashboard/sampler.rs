//! The sampler task: every `--admin-sample-interval` it runs the cap watcher (always, whether
//! or not anyone watches), reads this process's delivery counters, lists this node's stale
//! sessions, reads the cluster overview while a dashboard stream is open, and publishes the
//! [`Sample`] to the streams and the charts' history.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::overview;
use super::rates::Totals;
use super::sample::{self, Connections, Heard, Overview, Point, Sample};
use super::watcher::{self, Thresholds};
use super::Shared;
use crate::session::now_ms;
use crate::state::AppState;

/// The longest the database may take to answer one sample's reads (the watcher's statement,
/// then the overview), at least: a slower database delays the next sample rather than piling
/// reads up.
const MIN_DB_PATIENCE: Duration = Duration::from_secs(1);

/// The warning state last read from the database, kept when a read fails.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    warning: bool,
    since: Option<DateTime<Utc>>,
}

/// Runs until shutdown.
#[tracing::instrument(name = "admin_sampler", skip_all)]
pub(super) async fn run(state: AppState, shared: Arc<Shared>) {
    let config = Arc::clone(&state.config);
    let settings = &config.dashboard;
    let thresholds = Thresholds {
        cap: config.max_connections,
        warn_percent: settings.admin_warn_percent,
        clear_percent: settings.admin_clear_percent,
    };
    let patience = settings.admin_sample_interval.max(MIN_DB_PATIENCE);
    if let Err(e) = watcher::prepare(&state.pool).await {
        tracing::debug!(error = %e, "cannot prepare the cap alert row; checks will create no row");
    }
    let stale_after_ms =
        u64::try_from(config.heartbeat_timeout.as_millis() / 2).unwrap_or(u64::MAX);
    let mut ticker = tokio::time::interval(settings.admin_sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut totals = Totals::read(&crate::admin::metrics::handle().render());
    let mut totals_at = Instant::now();
    let mut known = Known::default();
    let mut seq = 0u64;
    let mut unreachable_logged = false;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let checked = tokio::time::timeout(
            patience,
            watcher::check(&state.pool, &config.node_id, thresholds),
        )
        .await;
        let cluster = match checked {
            Ok(Ok(check)) => {
                watcher::report(&check, thresholds);
                known = Known {
                    warning: check.warning,
                    since: Some(check.since),
                };
                unreachable_logged = false;
                Some(check.in_use)
            }
            failed => {
                if !unreachable_logged {
                    match failed {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot check the connection count against the cap")
                        }
                        _ => tracing::warn!(
                            "cannot check the connection count against the cap: no answer in time"
                        ),
                    }
                    unreachable_logged = true;
                }
                None
            }
        };
        let now_totals = Totals::read(&crate::admin::metrics::handle().render());
        let now = Instant::now();
        let rates = now_totals.since(&totals, now.duration_since(totals_at).as_secs_f64());
        totals = now_totals;
        totals_at = now;
        let overview = if shared.viewers.load(Ordering::Acquire) > 0 && cluster.is_some() {
            tokio::time::timeout(patience, read_overview(&state.pool))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let heard = state.session.sessions.handles().into_iter().map(|s| Heard {
            connection_id: s.connection_id,
            peer: s.peer,
            user_id: s.user_id,
            last_heartbeat_ms: s.last_heartbeat_ms.load(Ordering::Acquire),
        });
        seq += 1;
        let point = Point {
            at_ms: Utc::now().timestamp_millis(),
            messages_per_second: rates.messages_per_second,
            latency_p50_ms: rates.latency_p50_ms,
            latency_p99_ms: rates.latency_p99_ms,
            connections: cluster,
        };
        let sample = Sample {
            seq,
            node_id: config.node_id.clone(),
            database: cluster.is_some(),
            listener_connected: state.listener.connected.load(Ordering::Acquire),
            connections: Connections {
                node: state.session.limits.connections_in_use(),
                cluster,
                cap: thresholds.cap,
                warn_percent: thresholds.warn_percent,
                clear_percent: thresholds.clear_percent,
                warn_at: thresholds.warn_at(),
                warning: known.warning,
                since: known.since,
            },
            point,
            stale: sample::stale(heard, now_ms(), stale_after_ms),
            stale_after_seconds: stale_after_ms as f64 / 1000.0,
            reaped_after_seconds: config.heartbeat_timeout.as_secs_f64(),
            overview,
        };
        shared.publish(sample);
    }
}

/// The cluster overview, or `None` when a read fails (logged at debug: the watcher's own read
/// reports an unreachable database).
async fn read_overview(pool: &sqlx::PgPool) -> Option<Overview> {
    let read = async {
        Ok::<_, sqlx::Error>(Overview {
            nodes: overview::nodes(pool).await?,
            top_channels: overview::top_channels(pool).await?,
            audit: overview::recent_audit(pool).await?,
        })
    };
    match read.await {
        Ok(overview) => Some(overview),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the dashboard overview");
            None
        }
    }
}
