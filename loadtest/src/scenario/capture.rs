//! `capture`: what realtime costs the writers. `--writers` connections insert single-row
//! autocommit transactions as fast as they can into a table that is not realtime-enabled and
//! into an identical one that is, with the gateway running, in `--rounds` short rounds of one
//! phase each. The order alternates from round to round (plain first, then realtime first), so
//! both tables see the same machine: whatever else it does drifts over both alike. Each round
//! gives a ratio (realtime rate / plain rate); the result is their median.
//!
//! Each phase also measures the WAL it wrote (`pg_current_wal_lsn()` before and after) per
//! insert, so a change to what capture writes per row can be measured before and after.
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
/// The target: inserts into the realtime table at this fraction of the plain table's rate.
const TARGET_RATIO: f64 = 0.6;

/// One phase's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    inserts: u64,
    failed: u64,
    seconds: f64,
    /// WAL written during the phase, bytes (`None` when the position could not be read).
    wal_bytes: Option<i64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.inserts as f64 / self.seconds.max(1e-3)
    }

    fn wal_per_insert(&self) -> Option<f64> {
        let wal = self.wal_bytes?;
        (self.inserts > 0).then(|| wal as f64 / self.inserts as f64)
    }
}

/// Runs the capture scenario.
pub(super) async fn run(run: &Run) -> anyhow::Result<Report> {
    let plan = &run.plan;
    let db_url = run
        .database_url()
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
    let phase_len = plan.duration / (2 * plan.rounds) as u32;
    let mut rounds = Vec::with_capacity(plan.rounds);
    let mut phases = Vec::new();
    let (mut plain_all, mut realtime_all) = (Phase::default(), Phase::default());
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 {
            [PLAIN_TABLE, REALTIME_TABLE]
        } else {
            [REALTIME_TABLE, PLAIN_TABLE]
        };
        let mut plain = Phase::default();
        let mut realtime = Phase::default();
        for table in order {
            let wal_before = wal_lsn(&mut setup).await;
            let (figures, returned) = phase(run, conns, table, phase_len, plan.payload_bytes).await;
            conns = returned;
            let wal_after = wal_lsn(&mut setup).await;
            let figures = Phase {
                wal_bytes: wal_diff(&mut setup, wal_before, wal_after).await,
                ..figures
            };
            phases.push(json!({
                "round": round + 1,
                "table": table,
                "inserts": figures.inserts,
                "seconds": (figures.seconds * 1000.0).round() / 1000.0,
                "per_s": figures.rate().round(),
                "wal_bytes_per_insert": figures.wal_per_insert().map(|w| w.round()),
            }));
            let (this, all) = if table == PLAIN_TABLE {
                (&mut plain, &mut plain_all)
            } else {
                (&mut realtime, &mut realtime_all)
            };
            *this = figures;
            all.inserts += figures.inserts;
            all.failed += figures.failed;
            all.seconds += figures.seconds;
        }
        let ratio = realtime.rate() / plain.rate().max(1e-3);
        run.say(&format!(
            "round {}/{}: plain {:.0}/s, realtime {:.0}/s, ratio {ratio:.3}",
            round + 1,
            plan.rounds,
            plain.rate(),
            realtime.rate()
        ));
        rounds.push((ratio, plain, realtime));
    }
    let ratios: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let ratio = median(&ratios).unwrap_or(0.0);
    let wal = |pick: fn(&(f64, Phase, Phase)) -> &Phase| {
        let per_insert: Vec<f64> = rounds
            .iter()
            .filter_map(|r| pick(r).wal_per_insert())
            .collect();
        median(&per_insert).map(f64::round)
    };
    let plain_wal = wal(|r| &r.1);
    let realtime_wal = wal(|r| &r.2);
    // Let the gateway catch up with the outbox before the final figures are read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let backlog: Option<i64> =
        sqlx::query_scalar("select count(*) from realtime.changes where relid = $1::regclass")
            .bind(format!("public.{REALTIME_TABLE}"))
            .fetch_one(&mut setup)
            .await
            .ok();

    let failed = plain_all.failed + realtime_all.failed;
    let mut out = Report {
        written: plain_all.inserts + realtime_all.inserts,
        ..Report::default()
    };
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    out.detail = json!({
        "writers": plan.writers,
        "rounds": plan.rounds,
        "phase_s": phase_len.as_secs_f64(),
        "synchronous_commit": synchronous_commit,
        "plain_inserts_per_s": plain_all.rate().round(),
        "realtime_inserts_per_s": realtime_all.rate().round(),
        "ratio": round3(ratio),
        "ratio_of_totals": round3(realtime_all.rate() / plain_all.rate().max(1e-3)),
        "round_ratios": ratios.iter().map(|&r| round3(r)).collect::<Vec<_>>(),
        "wal_bytes_per_insert": {"plain": plain_wal, "realtime": realtime_wal},
        "failed_inserts": failed,
        "phases": phases,
        "outbox_rows_of_realtime_table": backlog,
    });
    if failed > 0 {
        out.failures.push(format!("{failed} inserts failed"));
    }
    out.targets = vec![(
        format!(
            "median interleaved ratio >= {TARGET_RATIO} ({} writers, {} rounds)",
            plan.writers, plan.rounds
        ),
        json!(round3(ratio)),
        ratio >= TARGET_RATIO,
    )];
    Ok(out)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// The server's current WAL position, as text (`pg_lsn`).
async fn wal_lsn(conn: &mut sqlx::PgConnection) -> Option<String> {
    sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(conn)
        .await
        .ok()
}

/// Bytes of WAL between two positions.
async fn wal_diff(
    conn: &mut sqlx::PgConnection,
    before: Option<String>,
    after: Option<String>,
) -> Option<i64> {
    let (before, after) = (before?, after?);
    sqlx::query_scalar("select pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint")
        .bind(after)
        .bind(before)
        .fetch_one(conn)
        .await
        .ok()
}

/// One phase: every connection inserts into `table` until `length` has passed. Returns its
/// figures (without WAL) and the connections.
async fn phase(
    run: &Run,
    conns: Vec<sqlx::PgConnection>,
    table: &'static str,
    length: Duration,
    payload_bytes: usize,
) -> (Phase, Vec<sqlx::PgConnection>) {
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
    let figures = Phase {
        inserts: ok,
        failed,
        seconds: start.elapsed().as_secs_f64(),
        wal_bytes: None,
    };
    (figures, conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.7, 0.2, 0.5]), Some(0.5));
        assert_eq!(median(&[0.4, 0.8, 0.6, 0.2]), Some(0.5));
    }
}
