//! The writer: creates and enables the events table, then inserts rows at a steady rate from
//! one connection, recording the instant each INSERT's commit returned on the run's clock.
//!
//! Rows carry the run id and a sequence `n` and nothing clock-dependent; clients look the
//! commit instant up by `n`. One sequential connection means commit order is `n` order, so a
//! client seeing `n` go backwards has seen an out-of-order delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;

use crate::client::EVENTS_TABLE;
use crate::record::{CommitLog, Recorder};

/// What the writer did.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriterReport {
    /// Rows inserted.
    pub(crate) written: u64,
    /// Inserts that failed.
    pub(crate) failed: u64,
    /// Seconds from the first insert to the last commit.
    pub(crate) elapsed_s: f64,
    /// Largest delay behind the schedule, ms.
    pub(crate) max_behind_ms: f64,
    /// INSERT round trip (send to commit return), p50 and max, ms.
    pub(crate) insert_p50_ms: f64,
    /// See `insert_p50_ms`.
    pub(crate) insert_p99_ms: f64,
    /// See `insert_p50_ms`.
    pub(crate) insert_max_ms: f64,
}

/// Opens a connection tagged `application_name = loadtest <role>`.
pub(crate) async fn connect(url: &str, role: &str) -> anyhow::Result<PgConnection> {
    let options: PgConnectOptions = url.parse().context("database url")?;
    options
        .application_name(&format!("loadtest {role}"))
        .disable_statement_logging()
        .connect()
        .await
        .context("connect to the database")
}

/// Creates `public.<table>` (id identity, run, n, payload) if missing and makes sure it is, or
/// is not, in the `supabase_realtime` publication; empties it.
pub(crate) async fn prepare_table(
    conn: &mut PgConnection,
    table: &str,
    realtime: bool,
) -> anyhow::Result<()> {
    // `table` is one of this tool's constant names, never user input.
    sqlx::query(&format!(
        "create table if not exists public.{table} (\
            id bigint generated always as identity primary key, \
            run bigint not null, n bigint not null, payload text)"
    ))
    .execute(&mut *conn)
    .await
    .with_context(|| format!("create table public.{table}"))?;
    // The load tester's clients use `anon` tokens: the table must be theirs to read.
    sqlx::query(&format!(
        "grant select on public.{table} to anon, authenticated"
    ))
    .execute(&mut *conn)
    .await
    .with_context(|| format!("grant select on public.{table} to anon"))?;
    let published: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_publication_tables \
         where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = $1)",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .context("read the supabase_realtime publication (is the gateway's migration applied?)")?;
    if realtime && !published {
        sqlx::query(&format!(
            "alter publication supabase_realtime add table public.{table}"
        ))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("enable realtime on public.{table}"))?;
    } else if !realtime && published {
        sqlx::query(&format!(
            "alter publication supabase_realtime drop table public.{table}"
        ))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("disable realtime on public.{table}"))?;
    }
    sqlx::query(&format!("truncate public.{table}"))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("truncate public.{table}"))?;
    Ok(())
}

/// What the writer thread is given.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Database URL.
    pub(crate) url: String,
    /// `synchronous_commit` of the writer's session.
    pub(crate) synchronous_commit: String,
    /// Run id written into every row.
    pub(crate) run_id: i64,
    /// Rows per second.
    pub(crate) rate: u32,
    /// Filler bytes per row.
    pub(crate) payload_bytes: usize,
    /// Writing stops at this deadline even when behind schedule (the run stays bounded).
    pub(crate) duration: Duration,
}

/// Starts the writer on a thread of its own with its own single-threaded runtime, so the
/// instant a commit returns is taken as soon as the reply arrives, not when a runtime busy
/// with thousands of clients gets round to the writer's task.
pub(crate) fn spawn_thread(
    params: Params,
    log: Arc<CommitLog>,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<WriterReport>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("writer".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("writer runtime")
                .and_then(|rt| rt.block_on(run(params, log, rec, stop)));
            // The receiver is gone only if the run was abandoned; nothing to tell then.
            let _sent = tx.send(result);
        });
    if let Err(e) = spawned {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _sent = tx.send(Err(anyhow::anyhow!("cannot start the writer thread: {e}")));
        return rx;
    }
    rx
}

/// Inserts rows `0..log.capacity()` at `rate` per second into the events table, recording
/// commit instants in `log`, until done, `stop`, or `duration` has passed.
async fn run(
    params: Params,
    log: Arc<CommitLog>,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> anyhow::Result<WriterReport> {
    let mut conn = connect(&params.url, "writer").await?;
    sqlx::query(&format!(
        "set synchronous_commit to {}",
        params.synchronous_commit
    ))
    .execute(&mut conn)
    .await?;
    let payload = "x".repeat(params.payload_bytes);
    let sql = format!("insert into public.{EVENTS_TABLE} (run, n, payload) values ($1, $2, $3)");
    let mut report = WriterReport::default();
    let mut round_trips = crate::record::histogram();
    let interval = Duration::from_secs_f64(1.0 / f64::from(params.rate.max(1)));
    let start = tokio::time::Instant::now();
    for n in 0..log.capacity() {
        let due = start + interval.mul_f64(n as f64);
        let now = tokio::time::Instant::now();
        if due > now {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(due) => {}
            }
        } else {
            report.max_behind_ms = report.max_behind_ms.max((now - due).as_secs_f64() * 1e3);
            if stop.is_cancelled() || now - start >= params.duration {
                break;
            }
        }
        let sent = rec.clock.now_ns();
        log.sent(n, sent);
        let result = sqlx::query(&sql)
            .bind(params.run_id)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(&payload)
            .execute(&mut conn)
            .await;
        let returned = rec.clock.now_ns();
        match result {
            Ok(_) => {
                log.committed(n, returned);
                rec.written.fetch_add(1, Ordering::Relaxed);
                report.written += 1;
                round_trips.saturating_record((returned - sent) / 1000);
            }
            Err(e) => {
                report.failed += 1;
                rec.error(&format!(
                    "writer insert failed: {}",
                    first_line(&e.to_string())
                ));
            }
        }
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.insert_p50_ms = round_trips.value_at_quantile(0.5) as f64 / 1e3;
    report.insert_p99_ms = round_trips.value_at_quantile(0.99) as f64 / 1e3;
    report.insert_max_ms = round_trips.max() as f64 / 1e3;
    let _closed = conn.close().await;
    Ok(report)
}

/// The first line of a message.
pub(crate) fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
