//! The heartbeat reaper: every heartbeat interval it closes sessions whose last client heartbeat
//! is older than the stale timeout (close code 4000, registry rows `reaped`), and hands the
//! registry the interval's heartbeats together with this node's own heartbeat and the cleanup of
//! rows left by lost nodes. When the node had been declared lost and found the cluster at its
//! cap on re-registering, the tick names the connections to close (4004, `cap_reclaimed`).

use std::sync::atomic::Ordering;

use std::sync::Arc;

use crate::session::{now_ms, Services, SessionEnd};

/// Starts the reaper on the shutdown tracker.
pub fn spawn(state: Arc<Services>) -> tokio::task::JoinHandle<()> {
    let shutdown = state.shutdown.clone();
    shutdown.spawn("reaper", run(state))
}

/// Runs until shutdown.
#[tracing::instrument(name = "reaper", skip_all)]
pub async fn run(state: Arc<Services>) {
    let interval = state.config.heartbeat_interval;
    let timeout_ms = u64::try_from(state.config.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick_ms = now_ms();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = now_ms();
        let mut heartbeats = Vec::new();
        let mut reaped = 0u64;
        for session in state.sessions.handles() {
            let last = session.last_heartbeat_ms.load(Ordering::Acquire);
            if now.saturating_sub(last) > timeout_ms {
                if !session.closing.load(Ordering::Acquire) {
                    reaped += 1;
                    session.close(SessionEnd::Reaped);
                    state.registry.audit(
                        "reaped",
                        session.user_id,
                        Some(session.peer),
                        serde_json::json!({
                            "connection_id": session.connection_id,
                            "silent_ms": now.saturating_sub(last),
                        }),
                    );
                }
            } else if last >= last_tick_ms {
                heartbeats.push(session.connection_id);
            }
        }
        if reaped > 0 {
            tracing::info!(reaped, "reaped silent sessions");
            metrics::counter!("gateway_reaper_reaped_total").increment(reaped);
        }
        last_tick_ms = now;
        let reclaimed = state.registry.tick(heartbeats).await;
        if !reclaimed.is_empty() {
            let reclaimed: std::collections::HashSet<uuid::Uuid> = reclaimed.into_iter().collect();
            tracing::warn!(
                connections = reclaimed.len(),
                "closing this node's newest connections: the cluster is at its cap"
            );
            state.sessions.for_each(|session| {
                if reclaimed.contains(&session.connection_id) {
                    session.close(SessionEnd::CapReclaimed);
                }
            });
        }
    }
}
