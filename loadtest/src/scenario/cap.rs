//! `cap`: more clients than the gateway's connection cap, all released at once. Exactly
//! `--cap` must be admitted (and join a channel); every other one must be refused with HTTP 429
//! and `{"error":"Too many connected users"}` (docs/protocol.md 1.2), and each refusal should be in
//! `realtime.audit_log` with `kind = 'cap_refused'`. Run it against an otherwise idle gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{book_connect_error, wait_until, Report, Run};
use crate::client::{self, ConnectError, JoinSpec};

/// The refusal text of docs/protocol.md 1.2 for the cap.
const CAP_TEXT: &str = "Too many connected users";

/// Runs the cap scenario.
pub(super) async fn run(run: &Run) -> anyhow::Result<Report> {
    let plan = &run.plan;
    let clients = plan.clients;
    let audit_before = run.probe.audit_cap_refused().await;
    let registry_before = run.probe.registry_active().await;
    let rss_baseline = run.probe.rss_kib().await;
    run.say(&format!(
        "releasing {clients} clients at once against a cap of {}",
        plan.cap
    ));
    let barrier = Arc::new(Barrier::new(clients));
    let release = CancellationToken::new();
    let attempts_done = Arc::new(AtomicU64::new(0));
    let as_specified = Arc::new(AtomicU64::new(0));
    let url = run.target().websocket_path(&run.token);
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let barrier = Arc::clone(&barrier);
        let release = release.clone();
        let rec = Arc::clone(&run.rec);
        let target = run.target().clone();
        let url = url.clone();
        let done = Arc::clone(&attempts_done);
        let as_specified = Arc::clone(&as_specified);
        let spec = JoinSpec {
            topic: run.topic_for(i),
            changes: false,
            presence_key: None,
            token: Arc::clone(&run.token),
        };
        tasks.spawn(async move {
            barrier.wait().await;
            let c = &rec.counters;
            c.attempted.fetch_add(1, Ordering::Relaxed);
            let result = client::connect(&target, &url, target.source_for(i)).await;
            let mut client = match result {
                Ok(client) => client,
                Err(e) => {
                    if let ConnectError::Refused { status: 429, body } = &e {
                        let error = serde_json::from_str::<serde_json::Value>(body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_owned));
                        if error.as_deref() == Some(CAP_TEXT) {
                            as_specified.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    book_connect_error(&rec, &e);
                    done.fetch_add(1, Ordering::Release);
                    return;
                }
            };
            c.connected.fetch_add(1, Ordering::Relaxed);
            c.open.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client.join(&spec, &rec).await {
                rec.error(&e);
            }
            done.fetch_add(1, Ordering::Release);
            // Hold the slot until every attempt is answered and the hold time has passed.
            let mut tracker = crate::record::Tracker::new(i, 1);
            let holding = client
                .run(Duration::from_secs(25), &release, &rec, &mut tracker, None)
                .await;
            if holding == client::Ended::Stopped {
                client.close(&rec).await;
            }
            c.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Refusals come after the gateway's connect-error delay (2 s by default).
    let answered = wait_until(Duration::from_secs(60), || {
        attempts_done.load(Ordering::Acquire) >= clients as u64
    })
    .await;
    run.say(&format!(
        "every attempt answered: {answered}; holding for {:?}",
        plan.duration
    ));
    tokio::time::sleep(plan.duration).await;
    let registry_held = run.probe.registry_active().await;
    let rss_held = run.probe.rss_kib().await;
    let c = &run.rec.counters;
    let open_held = c.open.load(Ordering::Relaxed);
    release.cancel();
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .is_err()
    {
        run.say("some clients did not close in 30s");
    }
    let connected = c.connected.load(Ordering::Relaxed);
    let refused = c.refused.load(Ordering::Relaxed);
    let errors = c.errors.load(Ordering::Relaxed);
    let specified = as_specified.load(Ordering::Relaxed);
    let expected_refused = clients.saturating_sub(plan.cap) as u64;
    // The audit log is written by the refusing request; give it a moment.
    let audited = match audit_before {
        None => None,
        Some(before) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let now = run.probe.audit_cap_refused().await.map(|a| a - before);
                if now.is_none_or(|n| n >= refused as i64)
                    || tokio::time::Instant::now() >= deadline
                {
                    break now;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    let mut out = Report {
        rss_baseline_kib: rss_baseline,
        rss_loaded_kib: rss_held,
        connections_for_memory: open_held,
        ..Report::default()
    };
    let mut failures = Vec::new();
    if connected != plan.cap as u64 {
        failures.push(format!("{connected} admitted, cap is {}", plan.cap));
    }
    if refused != expected_refused {
        failures.push(format!("{refused} refused, expected {expected_refused}"));
    }
    if specified != refused {
        failures.push(format!(
            "{} refusals were not 429 {{\"error\":\"{CAP_TEXT}\"}}",
            refused - specified
        ));
    }
    if errors > 0 {
        failures.push(format!("{errors} client errors"));
    }
    match audited {
        None => {
            out.gateway_missing
                .push("realtime.audit_log (cap refusals are not audited)".to_owned());
            failures.push("no realtime.audit_log to check refusals against".to_owned());
        }
        Some(n) if n != refused as i64 => {
            failures.push(format!(
                "{n} cap_refused audit entries for {refused} refusals"
            ));
        }
        Some(_) => {}
    }
    match (registry_before, registry_held) {
        (Some(before), Some(held)) if held - before != open_held as i64 => {
            if held == before {
                out.gateway_missing.push(
                    "registry rows (no realtime_subscription_registry rows for joined clients)"
                        .to_owned(),
                );
            }
            failures.push(format!(
                "registry holds {} new active rows for {open_held} joined clients",
                held - before
            ));
        }
        _ => {}
    }
    out.detail = json!({
        "cap": plan.cap,
        "admitted": connected,
        "refused": refused,
        "refused_as_specified": specified,
        "expected_refused": expected_refused,
        "audit_cap_refused_entries": audited,
        "registry_active_before": registry_before,
        "registry_active_held": registry_held,
        "open_while_held": open_held,
    });
    out.targets = vec![(
        "exactly cap admitted, the rest refused as specified".to_owned(),
        json!(format!(
            "{connected} admitted, {specified}/{refused} refused as specified"
        )),
        connected == plan.cap as u64 && refused == expected_refused && specified == refused,
    )];
    out.failures = failures;
    Ok(out)
}
