//! The result every run reports: one JSON value, the shape of the table plus details.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::{ms, Report, Run};
use crate::probe::ProcStats;

/// The run's result: the shape the issue asks for, plus details.
pub(crate) fn result_json(run: &Run, report: &Report) -> Value {
    let c = &run.rec.counters;
    let d = &c.deliveries;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let latency = run.rec.latency();
    let received = d.received.sum();
    let lost = report.expected.saturating_sub(d.unique.sum());
    let latency_ms = if latency.is_empty() {
        json!({"p50": null, "p95": null, "p99": null, "p999": null, "max": null, "mean": null, "samples": 0})
    } else {
        json!({
            "p50": ms(latency.value_at_quantile(0.5)),
            "p95": ms(latency.value_at_quantile(0.95)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "p999": ms(latency.value_at_quantile(0.999)),
            "max": ms(latency.max()),
            "mean": (latency.mean() / 1e3 * 1000.0).round() / 1000.0,
            "samples": latency.len(),
        })
    };
    let kib_per_connection = match (report.rss_baseline_kib, report.rss_loaded_kib) {
        (Some(base), Some(loaded)) if report.connections_for_memory > 0 => {
            let per = (loaded as f64 - base as f64) / report.connections_for_memory as f64;
            json!((per * 100.0).round() / 100.0)
        }
        _ => Value::Null,
    };
    let gateway = run.probe.process();
    let me = ProcStats::read(None);
    let cpu = run.cpu_used();
    let timeline = run.rec.timeline();
    let peak_rss = timeline.iter().filter_map(|s| s.gateway_rss_kib).max();
    let deliveries_per_s = if report.delivery_window_s > 0.0 {
        json!((received as f64 / report.delivery_window_s).round())
    } else {
        Value::Null
    };
    // Microseconds of CPU per delivery while the deliveries flowed.
    let per_delivery = |cpu_s: Option<f64>| {
        let (_, n) = report.delivery_cpu?;
        let cpu_s = cpu_s?;
        (n > 0).then(|| (cpu_s * 1e7 / n as f64).round() / 10.0)
    };
    let during = report.delivery_cpu.map(|(c, _)| c).unwrap_or_default();
    json!({
        "scenario": run.plan.scenario.name(),
        "server": if run.is_baseline() { "baseline" } else { "gateway" },
        "pass": report.failures.is_empty(),
        "failures": report.failures,
        "clients": {
            "attempted": load(&c.attempted),
            "connected": load(&c.connected),
            "refused": load(&c.refused),
            "errors": load(&c.errors),
            "joins_ok": load(&c.joins_ok),
            "subscribed": load(&c.subscribed),
        },
        "changes_written": report.written,
        "deliveries": {
            "expected": report.expected,
            "received": received,
            "lost": lost,
            "duplicated": d.duplicated.sum(),
            "out_of_order": d.out_of_order.sum(),
            "early": d.early.sum(),
            "foreign": d.foreign.sum(),
            "unstamped": d.unstamped.sum(),
        },
        "latency_ms": latency_ms,
        "deliveries_per_s": deliveries_per_s,
        "cpu_per_delivery_us": {
            "gateway": per_delivery(during.server),
            "loadtest": per_delivery(during.loadtest),
            "postgres": if run.is_baseline() { None } else { per_delivery(during.children) },
        },
        "gateway": {
            "nodes": run.targets.len(),
            "rss_kib": report.rss_loaded_kib.or(gateway.map(|g| g.rss_kib)),
            "rss_baseline_kib": report.rss_baseline_kib,
            "rss_peak_kib": peak_rss,
            "kib_per_connection": kib_per_connection,
            "pg_connections": run.rec.pg_connections_peak(),
            "cpu_s": cpu.server,
            "open_files": gateway.map(|g| g.fds),
            "postgres_cpu_s": if run.is_baseline() { None } else { cpu.children },
            "missing": report.gateway_missing,
        },
        "presence": {
            "enabled": run.plan.presence,
            "tracked": load(&c.presence_ok),
            "refused": load(&c.presence_refused),
            "frames": load(&c.presence_frames),
        },
        "heartbeats": {
            "sent": load(&c.heartbeats),
            "replies": load(&c.heartbeat_replies),
            "missed": load(&c.heartbeats_missed),
        },
        "errors_by_kind": run.rec.error_kinds(),
        "targets": report.targets.iter().map(|(name, value, met)| json!({"name": name, "value": value, "met": met})).collect::<Vec<_>>(),
        "detail": report.detail,
        "loadtest": {
            "cpu_s": cpu.loadtest,
            "rss_kib": me.map(|m| m.rss_kib),
            "elapsed_s": (run.rec.clock.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        },
        "plan": run.plan.describe(),
    })
}

/// Failures every client-bearing scenario shares: lost, duplicated, out of order, client
/// errors and refusals.
pub(crate) fn delivery_failures(
    run: &Run,
    report: &Report,
    refusals_expected: bool,
) -> Vec<String> {
    let c = &run.rec.counters;
    let d = &c.deliveries;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    let lost = report.expected.saturating_sub(d.unique.sum());
    if lost > 0 {
        failures.push(format!("{lost} deliveries lost"));
    }
    if d.duplicated.sum() > 0 {
        failures.push(format!("{} deliveries duplicated", d.duplicated.sum()));
    }
    if d.out_of_order.sum() > 0 {
        failures.push(format!("{} deliveries out of order", d.out_of_order.sum()));
    }
    if load(&c.errors) > 0 {
        failures.push(format!("{} client errors", load(&c.errors)));
    }
    if !refusals_expected && load(&c.refused) > 0 {
        failures.push(format!("{} connections refused", load(&c.refused)));
    }
    failures
}
