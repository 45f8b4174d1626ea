//! `seed`, `fanout`, `rls`, `soak` and `baseline`: subscribers of the events table and paced
//! writers.
//!
//! Every client joins and is confirmed subscribed before the first row is written, so each of
//! them must receive every row: expected = rows written × subscribed clients. `soak` also
//! terminates the gateway's listener connection every `--kill-listener-every`; nothing may be
//! lost across those gaps. Served by the baseline server, the same job skips the database:
//! no table, no NOTIFY floor, rows handed to the server instead of inserted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{delivery_failures, wait_until, Behaviour, CpuMark, Population, Report, Run};
use crate::bell;
use crate::cli::Scenario;
use crate::record::CommitLog;
use crate::writer::{self, Sink};

/// Setup patience: a fixed part plus a part per client.
pub(super) fn setup_patience(clients: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(clients as u64 * 5)
}

/// Runs a streaming scenario.
pub(super) async fn run(run: &Run) -> anyhow::Result<Report> {
    let plan = &run.plan;
    let db_url = run.database_url();
    let sink = match (&run.feed, db_url) {
        (Some(feed), _) => Sink::Baseline(feed.clone()),
        (None, Some(url)) => {
            super::prepare_events_table(run).await?;
            Sink::Database {
                url: url.to_owned(),
                synchronous_commit: plan.synchronous_commit.clone(),
            }
        }
        (None, None) => anyhow::bail!("--database-url is required"),
    };
    let rows = u64::from(plan.rate) * plan.duration.as_secs_f64().ceil() as u64;
    let commits = Arc::new(CommitLog::new(rows));
    let rss_baseline = run.probe.rss_kib().await;

    run.say(&format!(
        "connecting {} clients over {} channel(s){}",
        plan.clients,
        plan.channels,
        if plan.presence { " with presence" } else { "" }
    ));
    let started = run.rec.clock.elapsed();
    let population = Population::spawn(
        run,
        plan.clients,
        Behaviour {
            changes: true,
            presence: plan.presence,
            commits: Some(Arc::clone(&commits)),
            writers: plan.writers,
        },
    );
    population.settle(run, setup_patience(plan.clients)).await;
    let setup_s = (run.rec.clock.elapsed() - started).as_secs_f64();
    let c = &run.rec.counters;
    let subscribed = c.subscribed.load(Ordering::Relaxed);
    run.say(&format!(
        "{subscribed}/{} subscribed in {setup_s:.2}s; writing {rows} rows at {}/s",
        plan.clients, plan.rate
    ));
    // Memory with every client connected, before deliveries add their transient buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_loaded = run.probe.rss_kib().await;

    // PostgreSQL's floor: one writer's commits matched to the bells (with several writers a
    // bell cannot be told apart).
    let stop_probe = CancellationToken::new();
    let bell_probe = match db_url {
        Some(url) if plan.writers == 1 => {
            let (ready, done) =
                bell::spawn_thread(url.to_owned(), Arc::clone(&run.rec), stop_probe.clone());
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), ready).await,
                Ok(Ok(()))
            ) {
                run.say("the bell probe is not listening; its figures will be missing");
            }
            Some(done)
        }
        _ => None,
    };
    let stop_writer = CancellationToken::new();
    let killer = (plan.scenario == Scenario::Soak).then(|| spawn_killer(run, stop_writer.clone()));
    let checks_before = RlsChecks::read(run).await;
    let pg_before = match run.probe.db() {
        Some(db) if !run.is_baseline() => Some(crate::pgcost::snapshot(db).await),
        _ => None,
    };
    let cpu_before = CpuMark::take(&run.probe);
    let received_before = c.deliveries.received.sum();
    let write_start = run.rec.clock.elapsed();
    let report = writer::spawn_threads(
        writer::Params {
            sink,
            run_id: run.run_id,
            rate: plan.rate,
            writers: plan.writers,
            payload_bytes: plan.payload_bytes,
            duration: plan.duration,
        },
        Arc::clone(&commits),
        Arc::clone(&run.rec),
        stop_writer.clone(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the writer threads ended without a report"))?;
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            stop_writer.cancel();
            stop_probe.cancel();
            population.stop(Duration::from_secs(30)).await;
            return Err(e.context("writer"));
        }
    };
    // Before the writers end their sessions, so that what those cost is still counted.
    let pg_after = match (run.probe.db(), &pg_before) {
        (Some(db), Some(_)) => Some(crate::pgcost::snapshot(db).await),
        _ => None,
    };
    stop_writer.cancel();
    let kills = match killer {
        Some(task) => task.await.unwrap_or_default(),
        None => KillReport::default(),
    };
    let expected = report.written * subscribed;
    run.say(&format!(
        "wrote {} rows in {:.1}s; waiting up to {:?} for {} deliveries",
        report.written, report.elapsed_s, plan.drain, expected
    ));
    let drained = wait_until(plan.drain, || c.deliveries.unique.sum() >= expected).await;
    let window_s = (run.rec.clock.elapsed() - write_start).as_secs_f64();
    let delivery_cpu = (
        CpuMark::take(&run.probe).since(cpu_before),
        c.deliveries.received.sum() - received_before,
    );
    stop_probe.cancel();
    let bell_latency = match bell_probe {
        Some(done) => match done.await {
            Ok(Ok(bells)) => {
                let (h, early) = bell::latencies(&bells, &commits);
                if h.is_empty() {
                    json!(null)
                } else {
                    json!({
                        "bells": bells.len(),
                        "matched": h.len(),
                        "early": early,
                        "p50": super::ms(h.value_at_quantile(0.5)),
                        "p95": super::ms(h.value_at_quantile(0.95)),
                        "p99": super::ms(h.value_at_quantile(0.99)),
                        "max": super::ms(h.max()),
                    })
                }
            }
            Ok(Err(e)) => json!(format!("{e:#}")),
            Err(_) => json!(null),
        },
        None => json!(null),
    };
    let rss_end = run.probe.rss_kib().await;
    population.stop(Duration::from_secs(30)).await;

    let mut out = Report {
        written: report.written,
        expected,
        delivery_window_s: window_s,
        rss_baseline_kib: rss_baseline,
        rss_loaded_kib: rss_loaded,
        connections_for_memory: c.connected.load(Ordering::Relaxed),
        delivery_cpu: Some(delivery_cpu),
        ..Report::default()
    };
    out.detail = json!({
        "setup_s": (setup_s * 1000.0).round() / 1000.0,
        "connect_join_per_s": (subscribed as f64 / setup_s.max(1e-3)).round(),
        "drained": drained,
        "rss_end_kib": rss_end,
        "writer": {
            "writers": report.writers,
            "written": report.written,
            "failed": report.failed,
            "elapsed_s": (report.elapsed_s * 1000.0).round() / 1000.0,
            "achieved_rate": (report.written as f64 / report.elapsed_s.max(1e-3)).round(),
            "max_behind_ms": (report.max_behind_ms * 10.0).round() / 10.0,
            "insert_p50_ms": report.insert_p50_ms,
            "insert_p99_ms": report.insert_p99_ms,
            "insert_max_ms": report.insert_max_ms,
            "synchronous_commit": if run.is_baseline() { "n/a (baseline)" } else { plan.synchronous_commit.as_str() },
        },
        "bell_latency_ms": bell_latency,
        "listener_kills": kills.kills,
        "listener_kill_errors": kills.errors,
        "rls_check": RlsChecks::between(checks_before, RlsChecks::read(run).await),
        "postgres": match (&pg_before, &pg_after) {
            (Some(b), Some(a)) => crate::pgcost::between(b, a, report.written),
            _ => json!(null),
        },
    });
    out.failures = delivery_failures(run, &out, false);
    if subscribed < plan.clients as u64 {
        out.failures.push(format!(
            "{} of {} clients subscribed",
            subscribed, plan.clients
        ));
    }
    if report.failed > 0 {
        out.failures
            .push(format!("{} inserts failed", report.failed));
    }
    if c.presence_refused.load(Ordering::Relaxed) > 0 {
        out.gateway_missing
            .push("presence (track refused; see errors_by_kind)".to_owned());
    }
    if plan.scenario == Scenario::Soak && kills.kills == 0 {
        out.failures.push(
            "the listener connection was never killed (is it named 'realtime-gateway listener'?)"
                .to_owned(),
        );
    }
    out.targets = targets(run, &out);
    Ok(out)
}

/// The gateway's row-level security checks so far, from its metrics.
#[derive(Debug, Default, Clone, Copy)]
struct RlsChecks {
    /// Check queries (one per page of changes).
    queries: f64,
    /// Seconds spent in them.
    seconds: f64,
    /// Row checks asked for (rows × claim sets).
    row_checks: f64,
}

impl RlsChecks {
    async fn read(run: &Run) -> Option<RlsChecks> {
        let p = &run.probe;
        Some(RlsChecks {
            queries: p.metric("gateway_router_rls_check_seconds_count").await?,
            seconds: p.metric("gateway_router_rls_check_seconds_sum").await?,
            row_checks: p
                .metric("gateway_router_rls_checks_total")
                .await
                .unwrap_or(0.0),
        })
    }

    /// What happened between `before` and `self`: queries, milliseconds per query and
    /// microseconds per row check (null when the gateway reported no checks).
    fn between(before: Option<RlsChecks>, after: Option<RlsChecks>) -> serde_json::Value {
        let (Some(now), before) = (after, before.unwrap_or_default()) else {
            return json!(null);
        };
        let queries = now.queries - before.queries;
        let seconds = now.seconds - before.seconds;
        let rows = now.row_checks - before.row_checks;
        json!({
            "queries": queries,
            "row_checks": rows,
            "ms_per_query": (queries > 0.0).then(|| (seconds * 1e6 / queries).round() / 1e3),
            "us_per_row_check": (rows > 0.0).then(|| (seconds * 1e7 / rows).round() / 10.0),
        })
    }
}

/// Listener kills of a soak run.
#[derive(Debug, Default, Clone, Copy)]
struct KillReport {
    kills: u64,
    errors: u64,
}

/// Terminates the gateway's listener connection every `--kill-listener-every` until `stop`.
fn spawn_killer(run: &Run, stop: CancellationToken) -> tokio::task::JoinHandle<KillReport> {
    let probe = run.probe.clone();
    let every = run.plan.kill_listener_every;
    let rec = Arc::clone(&run.rec);
    let quiet = run.plan.quiet;
    tokio::spawn(async move {
        let mut report = KillReport::default();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match probe.kill_listener().await {
                Ok(n) if n > 0 => report.kills += 1,
                Ok(_) => {
                    report.errors += 1;
                    rec.note("soak: no listener connection to kill");
                }
                Err(e) => {
                    report.errors += 1;
                    rec.note(&format!("soak: kill failed: {e}"));
                }
            }
            if !quiet {
                use std::io::Write;
                let mut err = std::io::stderr().lock();
                let _written = writeln!(
                    err,
                    "[{:>6.1}s] killed the gateway's listener connection ({} so far)",
                    rec.clock.elapsed().as_secs_f64(),
                    report.kills
                );
            }
        }
        report
    })
}

/// The targets for these scenarios, evaluated on this run.
fn targets(run: &Run, out: &Report) -> Vec<(String, serde_json::Value, bool)> {
    let h = run.rec.latency();
    let q = |x: f64| (!h.is_empty()).then(|| super::ms(h.value_at_quantile(x)));
    let c = &run.rec.counters;
    let lost = out.expected.saturating_sub(c.deliveries.unique.sum());
    let mut t = vec![(
        "0 lost".to_owned(),
        json!(lost),
        lost == 0 && out.expected > 0,
    )];
    let le = |v: Option<f64>, limit: f64| v.is_some_and(|v| v <= limit);
    match run.plan.scenario {
        Scenario::Seed => {
            let joined = c.subscribed.load(Ordering::Relaxed);
            t.push((
                "100% joined".to_owned(),
                json!(format!("{joined}/{}", run.plan.clients)),
                joined == run.plan.clients as u64,
            ));
            let errors = c.errors.load(Ordering::Relaxed);
            t.push(("0 errors".to_owned(), json!(errors), errors == 0));
            t.push(("p99 <= 5 ms".to_owned(), json!(q(0.99)), le(q(0.99), 5.0)));
            t.push((
                "p99.9 <= 10 ms".to_owned(),
                json!(q(0.999)),
                le(q(0.999), 10.0),
            ));
        }
        // Its latency target is relative: p99 within 2x the baseline's (see `compare`).
        Scenario::Fanout if run.plan.clients >= 10_000 => {}
        Scenario::Rls => {
            let rate = out.expected as f64 / out.delivery_window_s.max(f64::EPSILON);
            t.push((
                ">= 40000 deliveries/s".to_owned(),
                json!(rate.round()),
                rate >= 40_000.0,
            ));
            t.push((
                "p99 <= 100 ms".to_owned(),
                json!(q(0.99)),
                le(q(0.99), 100.0),
            ));
        }
        Scenario::Fanout => {
            t.push((
                "p99 <= 100 ms".to_owned(),
                json!(q(0.99)),
                le(q(0.99), 100.0),
            ));
        }
        _ => {}
    }
    t
}
