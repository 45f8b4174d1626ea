//! `idle`: many connections, each with one joined channel (a Postgres Changes subscription),
//! heartbeating and otherwise quiet. Measures how fast they connect and join, and the gateway's
//! (or the baseline server's) resident memory per connection once they are all held.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::stream::setup_patience;
use super::{delivery_failures, Behaviour, Population, Report, Run};

/// Runs the idle scenario.
pub(super) async fn run(run: &Run) -> anyhow::Result<Report> {
    let plan = &run.plan;
    if !run.is_baseline() {
        super::prepare_events_table(run).await?;
    }
    let rss_baseline = run.probe.rss_kib().await;
    run.say(&format!(
        "connecting {} idle clients ({} handshakes in flight)",
        plan.clients, plan.connect_concurrency
    ));
    let started = run.rec.clock.elapsed();
    let population = Population::spawn(
        run,
        plan.clients,
        Behaviour {
            changes: true,
            presence: plan.presence,
            commits: None,
            writers: 1,
        },
    );
    population.settle(run, setup_patience(plan.clients)).await;
    let setup_s = (run.rec.clock.elapsed() - started).as_secs_f64();
    let c = &run.rec.counters;
    let joined = c.subscribed.load(Ordering::Relaxed);
    let rate = joined as f64 / setup_s.max(1e-3);
    run.say(&format!(
        "{joined}/{} joined in {setup_s:.2}s ({rate:.0} connect+join/s); holding for {:?}",
        plan.clients, plan.duration
    ));
    let rss_joined = run.probe.rss_kib().await;
    tokio::time::sleep(plan.duration).await;
    let rss_held = run.probe.rss_kib().await;
    let registry = run.probe.registry_active().await;
    let open = c.open.load(Ordering::Relaxed);
    population.stop(Duration::from_secs(60)).await;

    let mut out = Report {
        rss_baseline_kib: rss_baseline,
        rss_loaded_kib: rss_held,
        connections_for_memory: open,
        ..Report::default()
    };
    let per_conn = match (rss_baseline, rss_held) {
        (Some(b), Some(h)) if open > 0 => Some((h as f64 - b as f64) / open as f64),
        _ => None,
    };
    out.detail = json!({
        "setup_s": (setup_s * 1000.0).round() / 1000.0,
        "connect_join_per_s": rate.round(),
        "rss_joined_kib": rss_joined,
        "open_at_end_of_hold": open,
        "registry_active_rows": registry,
    });
    out.failures = delivery_failures(run, &out, false);
    if joined < plan.clients as u64 {
        out.failures
            .push(format!("{joined} of {} clients joined", plan.clients));
    }
    if open < joined {
        out.failures
            .push(format!("{} connections dropped while idle", joined - open));
    }
    out.targets = vec![
        (
            "<= 10 KiB gateway RSS per connection".to_owned(),
            json!(per_conn.map(|p| (p * 100.0).round() / 100.0)),
            per_conn.is_some_and(|p| p <= 10.0),
        ),
        (
            ">= 5000 connect+join per second".to_owned(),
            json!(rate.round()),
            rate >= 5000.0,
        ),
    ];
    Ok(out)
}
