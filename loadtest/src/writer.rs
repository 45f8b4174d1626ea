//! The writers: create and enable the events table, then insert rows at a steady rate, each
//! from its own connection on its own thread, recording the instant each INSERT's commit
//! returned on the run's clock. Against the baseline server, a writer hands `(run, n)` to the
//! server instead ([`crate::baseline::Feed`]) and records the instant that returned.
//!
//! Rows carry the run id and a sequence `n` and nothing clock-dependent; clients look the
//! commit instant up by `n`. Writer `k` of `W` writes the rows `n ≡ k (mod W)`, sequentially,
//! so commit order is `n` order within each writer: a client seeing one writer's `n` go
//! backwards has seen an out-of-order delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;

use crate::baseline::Feed;
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
    /// Writers whose reports were merged into this one.
    pub(crate) writers: usize,
}

impl WriterReport {
    /// The report of all writers together: counts summed, the longest time and delay, the
    /// round trips of every insert.
    fn merge(reports: Vec<(WriterReport, hdrhistogram::Histogram<u64>)>) -> WriterReport {
        let mut all = WriterReport::default();
        let mut round_trips = crate::record::histogram();
        for (r, h) in reports {
            all.written += r.written;
            all.failed += r.failed;
            all.elapsed_s = all.elapsed_s.max(r.elapsed_s);
            all.max_behind_ms = all.max_behind_ms.max(r.max_behind_ms);
            all.writers += 1;
            // Both histograms have the same bounds, so adding cannot fail.
            let _added = round_trips.add(&h);
        }
        all.insert_p50_ms = round_trips.value_at_quantile(0.5) as f64 / 1e3;
        all.insert_p99_ms = round_trips.value_at_quantile(0.99) as f64 / 1e3;
        all.insert_max_ms = round_trips.max() as f64 / 1e3;
        all
    }
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

/// Where the writers' rows go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// Inserted into the events table.
    Database {
        /// Database URL.
        url: String,
        /// `synchronous_commit` of the writers' sessions.
        synchronous_commit: String,
    },
    /// Handed to the baseline server.
    Baseline(Feed),
}

/// What the writer threads are given.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Where the rows go.
    pub(crate) sink: Sink,
    /// Run id written into every row.
    pub(crate) run_id: i64,
    /// Rows per second, all writers together.
    pub(crate) rate: u32,
    /// Writers sharing the rate.
    pub(crate) writers: usize,
    /// Filler bytes per row.
    pub(crate) payload_bytes: usize,
    /// Writing stops at this deadline even when behind schedule (the run stays bounded).
    pub(crate) duration: Duration,
}

/// What one writer thread reports: its figures and its round trips.
type LaneReport = anyhow::Result<(WriterReport, hdrhistogram::Histogram<u64>)>;

/// Starts the writers, each on a thread of its own with its own single-threaded runtime, so
/// the instant a commit returns is taken as soon as the reply arrives, not when a runtime busy
/// with thousands of clients gets round to the writer's task. The receiver gives their merged
/// report once all have written their rows; they keep their database sessions open until
/// `stop` is cancelled, so what those sessions cost PostgreSQL can still be read.
pub(crate) fn spawn_threads(
    params: Params,
    log: Arc<CommitLog>,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<WriterReport>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let writers = params.writers.max(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<LaneReport>();
    for lane in 0..writers {
        let (params, log, rec, token, done) = (
            params.clone(),
            Arc::clone(&log),
            Arc::clone(&rec),
            stop.clone(),
            done_tx.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("writer-{lane}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("writer runtime");
                match runtime {
                    Ok(rt) => rt.block_on(run(params, lane, log, rec, token, done)),
                    // The joiner is gone only if the run was abandoned; nothing to tell then.
                    Err(e) => drop(done.send(Err(e))),
                }
            });
        if let Err(e) = spawned {
            stop.cancel();
            let _sent = tx.send(Err(anyhow::anyhow!("cannot start a writer thread: {e}")));
            return rx;
        }
    }
    drop(done_tx);
    // Waiting for the writers blocks: a thread of its own collects their reports.
    let joiner = std::thread::Builder::new()
        .name("writers".to_owned())
        .spawn(move || {
            let mut reports = Vec::with_capacity(writers);
            let mut failure = None;
            for _ in 0..writers {
                match done_rx.recv() {
                    Ok(Ok(report)) => reports.push(report),
                    Ok(Err(e)) => failure = Some(e),
                    Err(_) => {
                        failure = Some(anyhow::anyhow!("a writer thread ended without a report"));
                        break;
                    }
                }
            }
            let result = match failure {
                Some(e) => Err(e),
                None => Ok(WriterReport::merge(reports)),
            };
            // The receiver is gone only if the run was abandoned; nothing to tell then.
            let _sent = tx.send(result);
        });
    if let Err(e) = joiner {
        stop.cancel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _sent = tx.send(Err(anyhow::anyhow!(
            "cannot start the writers' thread: {e}"
        )));
        return rx;
    }
    rx
}

/// Writer `lane`'s way of writing one row.
enum Out {
    Database(PgConnection, String, String),
    Baseline(Feed),
}

/// Writes rows `lane, lane + W, lane + 2W, ...` below `log.capacity()`, row `n` due at
/// `n / rate` seconds, recording commit instants in `log`, until done, `stop`, or `duration`
/// has passed; reports on `done`, then holds its session until `stop`.
async fn run(
    params: Params,
    lane: usize,
    log: Arc<CommitLog>,
    rec: Arc<Recorder>,
    stop: CancellationToken,
    done: std::sync::mpsc::Sender<LaneReport>,
) {
    let out = match &params.sink {
        Sink::Database {
            url,
            synchronous_commit,
        } => {
            let session = async {
                let mut conn = connect(url, "writer").await?;
                sqlx::query(&format!("set synchronous_commit to {synchronous_commit}"))
                    .execute(&mut conn)
                    .await?;
                anyhow::Ok(conn)
            };
            match session.await {
                Ok(conn) => {
                    let sql = format!(
                        "insert into public.{EVENTS_TABLE} (run, n, payload) values ($1, $2, $3)"
                    );
                    Out::Database(conn, sql, "x".repeat(params.payload_bytes))
                }
                Err(e) => {
                    // The joiner is gone only if the run was abandoned; nothing to tell then.
                    let _sent = done.send(Err(e));
                    return;
                }
            }
        }
        Sink::Baseline(feed) => Out::Baseline(feed.clone()),
    };
    let (report, round_trips, out) = write(&params, lane, &log, &rec, &stop, out).await;
    let _sent = done.send(Ok((report, round_trips)));
    stop.cancelled().await;
    if let Out::Database(conn, _, _) = out {
        let _closed = conn.close().await;
    }
}

/// The writing part of [`run`].
async fn write(
    params: &Params,
    lane: usize,
    log: &CommitLog,
    rec: &Recorder,
    stop: &CancellationToken,
    mut out: Out,
) -> (WriterReport, hdrhistogram::Histogram<u64>, Out) {
    let mut report = WriterReport::default();
    let mut round_trips = crate::record::histogram();
    let interval = Duration::from_secs_f64(1.0 / f64::from(params.rate.max(1)));
    let start = tokio::time::Instant::now();
    let step = params.writers.max(1) as u64;
    for n in (lane as u64..log.capacity()).step_by(step as usize) {
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
        let result = match &mut out {
            Out::Database(conn, sql, payload) => sqlx::query(sql)
                .bind(params.run_id)
                .bind(i64::try_from(n).unwrap_or(i64::MAX))
                .bind(&*payload)
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(|e| first_line(&e.to_string()).to_owned()),
            Out::Baseline(feed) => feed.send(params.run_id, n).map_err(|e| e.to_string()),
        };
        // The baseline's latency runs from the hand-over: the server may deliver before the
        // write to its pipe has even returned.
        let returned = match out {
            Out::Database(..) => rec.clock.now_ns(),
            Out::Baseline(_) => sent,
        };
        match result {
            Ok(()) => {
                log.committed(n, returned);
                rec.written.fetch_add(1, Ordering::Relaxed);
                report.written += 1;
                round_trips.saturating_record((returned - sent) / 1000);
            }
            Err(e) => {
                report.failed += 1;
                rec.error(&format!("writer insert failed: {e}"));
            }
        }
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    (report, round_trips, out)
}

/// The first line of a message.
pub(crate) fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
