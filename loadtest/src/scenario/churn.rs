//! `churn`: connect, join, leave, disconnect, at `--connect-rate` cycles per second for
//! `--duration`. A third of the cycles leave then close, a third close without leaving, a
//! third drop the TCP connection without a close frame. Afterwards the gateway must be back at
//! its baseline (±10%): active registry rows, open client connections (its sockets on the
//! listen port), resident memory.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{book_connect_error, Report, Run};
use crate::client::{self, JoinSpec};
use crate::probe::server_sockets;

/// Allowed drift from the baseline.
const TOLERANCE: f64 = 0.10;

/// The gateway's state at one moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    registry_active: Option<i64>,
    sockets_open: u64,
    sockets_closing: u64,
    rss_kib: Option<u64>,
    sessions_metric: Option<f64>,
}

async fn snapshot(run: &Run) -> Snapshot {
    let (open, closing) = server_sockets(run.target().addr.port());
    Snapshot {
        registry_active: run.probe.registry_active().await,
        sockets_open: open,
        sockets_closing: closing,
        rss_kib: run.probe.rss_kib().await,
        sessions_metric: run.probe.metric("gateway_sessions").await,
    }
}

/// Whether `now` is within the tolerance of `base` (an absolute slack of `floor` for small
/// baselines).
fn near(base: f64, now: f64, floor: f64) -> bool {
    (now - base).abs() <= (base * TOLERANCE).max(floor)
}

/// Whether the gateway is back at `base`.
fn at_baseline(base: &Snapshot, now: &Snapshot) -> bool {
    let registry = match (base.registry_active, now.registry_active) {
        (Some(b), Some(n)) => near(b as f64, n as f64, 0.0),
        _ => true,
    };
    let memory = match (base.rss_kib, now.rss_kib) {
        (Some(b), Some(n)) => near(b as f64, n as f64, 0.0),
        _ => true,
    };
    registry
        && memory
        && near(base.sockets_open as f64, now.sockets_open as f64, 0.0)
        && now.sockets_closing == 0
}

/// Runs the churn scenario.
pub(super) async fn run(run: &Run) -> anyhow::Result<Report> {
    let plan = &run.plan;
    let rate = plan.connect_rate.max(1);
    super::prepare_events_table(run).await?;
    let base = snapshot(run).await;
    run.say(&format!(
        "baseline: registry {} active rows, {} open sockets, rss {} KiB; churning at {rate}/s for {:?}",
        opt(base.registry_active),
        base.sockets_open,
        opt(base.rss_kib),
        plan.duration
    ));
    let registry_peak = Arc::new(AtomicI64::new(-1));
    let rss_peak = Arc::new(AtomicI64::new(-1));
    let watcher = {
        let probe = run.probe.clone();
        let registry_peak = Arc::clone(&registry_peak);
        let rss_peak = Arc::clone(&rss_peak);
        tokio::spawn(async move {
            loop {
                if let Some(n) = probe.registry_active().await {
                    registry_peak.fetch_max(n, Ordering::Relaxed);
                }
                if let Some(r) = probe.rss_kib().await {
                    rss_peak.fetch_max(i64::try_from(r).unwrap_or(i64::MAX), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let total = (f64::from(rate) * plan.duration.as_secs_f64()) as usize;
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency));
    let url = run.target().websocket_path(&run.token);
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now();
    let mut max_behind = Duration::ZERO;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(due).await;
        // The semaphore is never closed, so acquiring only waits.
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        max_behind = max_behind.max(tokio::time::Instant::now().saturating_duration_since(due));
        let rec = Arc::clone(&run.rec);
        let target = run.target().clone();
        let url = url.clone();
        let spec = JoinSpec {
            topic: run.topic_for(i),
            changes: true,
            presence_key: None,
            token: Arc::clone(&run.token),
        };
        tasks.spawn(async move {
            let c = &rec.counters;
            c.attempted.fetch_add(1, Ordering::Relaxed);
            let mut client = match client::connect(&target, &url, None).await {
                Ok(client) => client,
                Err(e) => {
                    book_connect_error(&rec, &e);
                    return;
                }
            };
            c.connected.fetch_add(1, Ordering::Relaxed);
            c.open.fetch_add(1, Ordering::Relaxed);
            match client.join(&spec, &rec).await {
                Err(e) => {
                    rec.error(&e);
                    client.close(&rec).await;
                }
                Ok(()) => {
                    match i % 3 {
                        0 => {
                            match client.leave(&rec).await {
                                Ok(()) => {
                                    c.leaves_ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => rec.error(&e),
                            }
                            client.close(&rec).await;
                        }
                        1 => client.close(&rec).await,
                        _ => client.abandon(&rec),
                    }
                    c.cycles.fetch_add(1, Ordering::Relaxed);
                }
            }
            c.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        // Reap finished cycles as we go so the set stays small.
        while let Some(done) = tasks.try_join_next() {
            drop(done);
        }
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .is_err()
    {
        run.say("some cycles did not finish within 30s of the end");
    }
    let churn_s = start.elapsed().as_secs_f64();
    let c = &run.rec.counters;
    let cycles = c.cycles.load(Ordering::Relaxed);
    run.say(&format!(
        "{cycles} cycles in {churn_s:.1}s; waiting up to {:?} for the baseline",
        plan.settle
    ));
    let settle_start = tokio::time::Instant::now();
    let mut after = snapshot(run).await;
    while !at_baseline(&base, &after) && settle_start.elapsed() < plan.settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = snapshot(run).await;
    }
    let settled_s = settle_start.elapsed().as_secs_f64();
    watcher.abort();
    let registry_peak = registry_peak.load(Ordering::Relaxed);
    let rss_peak = rss_peak.load(Ordering::Relaxed);

    let mut out = Report {
        rss_baseline_kib: base.rss_kib,
        rss_loaded_kib: after.rss_kib,
        ..Report::default()
    };
    let mut failures = Vec::new();
    let errors = c.errors.load(Ordering::Relaxed);
    if errors > 0 {
        failures.push(format!("{errors} client errors"));
    }
    let refused = c.refused.load(Ordering::Relaxed);
    if refused > 0 {
        failures.push(format!("{refused} connections refused"));
    }
    if cycles < total as u64 {
        failures.push(format!("{cycles} of {total} cycles completed"));
    }
    let registry_ok = match (base.registry_active, after.registry_active) {
        (Some(b), Some(a)) => near(b as f64, a as f64, 0.0),
        _ => false,
    };
    match base.registry_active {
        None => {
            out.gateway_missing
                .push("public.realtime_subscription_registry table".to_owned());
            failures.push("no registry table to check".to_owned());
        }
        Some(b) if registry_peak <= b => {
            out.gateway_missing.push(
                "registry rows (no realtime_subscription_registry rows written for joins)"
                    .to_owned(),
            );
            failures.push("the registry never held the churned joins".to_owned());
        }
        Some(_) if !registry_ok => failures.push(format!(
            "registry active rows {} after, {} before",
            opt(after.registry_active),
            opt(base.registry_active)
        )),
        Some(_) => {}
    }
    if !near(base.sockets_open as f64, after.sockets_open as f64, 0.0) || after.sockets_closing > 0
    {
        failures.push(format!(
            "gateway sockets: {} open and {} closing after, {} open before",
            after.sockets_open, after.sockets_closing, base.sockets_open
        ));
    }
    let memory_ok = match (base.rss_kib, after.rss_kib) {
        (Some(b), Some(a)) => near(b as f64, a as f64, 0.0),
        _ => false,
    };
    if !memory_ok {
        failures.push(format!(
            "gateway rss {} KiB after, {} KiB before (more than 10% apart, or unknown without --gateway-pid)",
            opt(after.rss_kib),
            opt(base.rss_kib)
        ));
    }
    let achieved = cycles as f64 / churn_s.max(1e-3);
    out.detail = json!({
        "cycles_planned": total,
        "cycles_completed": cycles,
        "leaves_ok": c.leaves_ok.load(Ordering::Relaxed),
        "achieved_cycles_per_s": achieved.round(),
        "max_behind_schedule_ms": max_behind.as_millis() as u64,
        "settled_after_s": (settled_s * 10.0).round() / 10.0,
        "baseline": snapshot_json(&base),
        "after": snapshot_json(&after),
        "registry_active_peak": (registry_peak >= 0).then_some(registry_peak),
        "rss_peak_kib": (rss_peak >= 0).then_some(rss_peak),
    });
    out.targets = vec![
        (
            format!("{rate} connects/s sustained"),
            json!(achieved.round()),
            achieved >= f64::from(rate) * 0.95,
        ),
        (
            "registry back to baseline (±10%)".to_owned(),
            json!(format!(
                "{} -> {}",
                opt(base.registry_active),
                opt(after.registry_active)
            )),
            registry_ok && registry_peak > base.registry_active.unwrap_or(0),
        ),
        (
            "connections back to baseline (±10%)".to_owned(),
            json!(format!(
                "{} -> {} (+{} closing)",
                base.sockets_open, after.sockets_open, after.sockets_closing
            )),
            near(base.sockets_open as f64, after.sockets_open as f64, 0.0)
                && after.sockets_closing == 0,
        ),
        (
            "memory back to baseline (±10%)".to_owned(),
            json!(format!(
                "{} -> {} KiB",
                opt(base.rss_kib),
                opt(after.rss_kib)
            )),
            memory_ok,
        ),
    ];
    out.failures = failures;
    Ok(out)
}

/// A figure, or `n/a` when it could not be read.
fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "registry_active": s.registry_active,
        "sockets_open": s.sockets_open,
        "sockets_closing": s.sockets_closing,
        "rss_kib": s.rss_kib,
        "sessions_metric": s.sessions_metric,
    })
}
