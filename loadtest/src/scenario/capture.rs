//! `capture`: what realtime costs the writers. `--writers` connections insert single-row
//! autocommit transactions as fast as they can into a table that is not realtime-enabled and
//! into an identical one that is, in alternating phases (plain, realtime, plain, realtime), with
//! the gateway running. The result is the ratio of the two insert rates.
//!
//! The writers use the server's own `synchronous_commit` setting, so commits pay whatever
//! durability the database is configured for.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::{Report, Run};
use crate::writer;

/// The table without realtime.
const PLAIN_TABLE: &str = "loadtest_capture_plain";
/// The same table, in the `supabase_realtime` publication.
const REALTIME_TABLE: &str = "loadtest_capture_realtime";
/// Phases: each table gets two, alternating, to even out drift (autovacuum, cache warmth).
const PHASES: [&str; 4] = [PLAIN_TABLE, REALTIME_TABLE, PLAIN_TABLE, REALTIME_TABLE];

/// Runs the capture scenario.
pub(super) async fn run(run: &Run) -> anyhow::Result<Report> {
    let plan = &run.plan;
    let db_url = plan
        .database_url
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--database-url is required"))?;
    let mut setup = writer::connect(db_url, "capture setup").await?;
    writer::prepare_table(&mut setup, PLAIN_TABLE, false).await?;
    writer::prepare_table(&mut setup, REALTIME_TABLE, true).await?;
    let synchronous_commit: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&mut setup)
        .await?;
    let mut conns = Vec::with_capacity(plan.writers);
    for i in 0..plan.writers {
        conns.push(writer::connect(db_url, &format!("capture writer {i}")).await?);
    }
    let phase_len = plan.duration / PHASES.len() as u32;
    let mut plain = (0u64, 0.0f64);
    let mut realtime = (0u64, 0.0f64);
    let mut failed = 0u64;
    let mut phases = Vec::new();
    for (round, table) in PHASES.iter().enumerate() {
        run.say(&format!(
            "phase {}: {} writers into {table} for {phase_len:?}",
            round + 1,
            plan.writers
        ));
        let (inserted, errors, elapsed, returned) =
            phase(run, conns, table, phase_len, plan.payload_bytes).await;
        conns = returned;
        failed += errors;
        let rate = inserted as f64 / elapsed.max(1e-3);
        run.say(&format!("  {inserted} inserts, {rate:.0}/s"));
        phases.push(
            json!({"table": table, "inserts": inserted, "seconds": elapsed, "per_s": rate.round()}),
        );
        let slot = if *table == PLAIN_TABLE {
            &mut plain
        } else {
            &mut realtime
        };
        slot.0 += inserted;
        slot.1 += elapsed;
    }
    let plain_rate = plain.0 as f64 / plain.1.max(1e-3);
    let realtime_rate = realtime.0 as f64 / realtime.1.max(1e-3);
    let ratio = realtime_rate / plain_rate.max(1e-3);
    // Let the gateway catch up with the outbox before the final figures are read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let backlog: Option<i64> =
        sqlx::query_scalar("select count(*) from realtime.changes where table_name = $1")
            .bind(REALTIME_TABLE)
            .fetch_one(&mut setup)
            .await
            .ok();

    let mut out = Report {
        written: plain.0 + realtime.0,
        ..Report::default()
    };
    out.detail = json!({
        "writers": plan.writers,
        "synchronous_commit": synchronous_commit,
        "plain_inserts_per_s": plain_rate.round(),
        "realtime_inserts_per_s": realtime_rate.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "failed_inserts": failed,
        "phases": phases,
        "outbox_rows_of_realtime_table": backlog,
    });
    if failed > 0 {
        out.failures.push(format!("{failed} inserts failed"));
    }
    out.targets = vec![(
        format!(
            "insert throughput with realtime >= 0.5x without ({} writers)",
            plan.writers
        ),
        json!((ratio * 1000.0).round() / 1000.0),
        ratio >= 0.5,
    )];
    Ok(out)
}

/// One phase: every connection inserts into `table` until `length` has passed. Returns
/// (inserted, failed, seconds, the connections).
async fn phase(
    run: &Run,
    conns: Vec<sqlx::PgConnection>,
    table: &'static str,
    length: Duration,
    payload_bytes: usize,
) -> (u64, u64, f64, Vec<sqlx::PgConnection>) {
    let payload = Arc::<str>::from("x".repeat(payload_bytes));
    let start = tokio::time::Instant::now();
    let deadline = start + length;
    let mut tasks = JoinSet::new();
    let run_id = run.run_id;
    for mut conn in conns {
        let payload = Arc::clone(&payload);
        tasks.spawn(async move {
            let sql = format!("insert into public.{table} (run, n, payload) values ($1, $2, $3)");
            let (mut ok, mut failed) = (0u64, 0u64);
            while tokio::time::Instant::now() < deadline {
                let n = i64::try_from(ok + failed).unwrap_or(i64::MAX);
                match sqlx::query(&sql)
                    .bind(run_id)
                    .bind(n)
                    .bind(&*payload)
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, conn)
        });
    }
    let (mut ok, mut failed, mut conns) = (0, 0, Vec::new());
    while let Some(done) = tasks.join_next().await {
        if let Ok((o, f, conn)) = done {
            ok += o;
            failed += f;
            conns.push(conn);
        }
    }
    (ok, failed, start.elapsed().as_secs_f64(), conns)
}
