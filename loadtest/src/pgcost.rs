//! What a phase of a run costs PostgreSQL, from two snapshots: the CPU of its processes, the
//! reads of the outbox (`realtime.changes`), the database's transactions and tuples, and the
//! connections by application name.
//!
//! The server's processes are found from a backend of the probe's own pool: its parent is the
//! postmaster, whose live descendants and reaped children are the server (the database is on
//! this machine, as the command line requires). Backends of the load tester's own sessions
//! (writers, probe, bell) are counted apart, so what the gateway nodes cost shows without them;
//! the writers keep their sessions open until the second snapshot is taken. PostgreSQL publishes a
//! backend's statistics counters when its transaction ends, and an idle backend's within about
//! ten seconds: in a steady phase the delay is the same at both ends and cancels out.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};
use sqlx::{PgPool, Row};

use crate::probe::{descendants_cpu_s, parent_and_cpu_s};

/// Cumulative counters of the outbox table (`pg_stat_user_tables`).
#[derive(Debug, Clone, Copy, Default)]
struct Outbox {
    seq_scan: i64,
    seq_tup_read: i64,
    idx_scan: i64,
    idx_tup_fetch: i64,
    n_tup_ins: i64,
    n_tup_del: i64,
}

/// Cumulative counters of the database (`pg_stat_database`).
#[derive(Debug, Clone, Copy, Default)]
struct Database {
    xact_commit: i64,
    xact_rollback: i64,
    tup_returned: i64,
    tup_fetched: i64,
    blks_hit: i64,
    blks_read: i64,
}

/// PostgreSQL's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    at: Instant,
    /// CPU seconds of the postmaster and its live descendants.
    cpu_s: Option<f64>,
    /// CPU seconds of the backends serving the load tester's own sessions.
    loadtest_cpu_s: Option<f64>,
    outbox: Option<Outbox>,
    database: Option<Database>,
    /// Client connections by `application_name`.
    connections: BTreeMap<String, i64>,
}

/// Takes a snapshot; figures that cannot be read are left out.
pub(crate) async fn snapshot(db: &PgPool) -> Snapshot {
    let at = Instant::now();
    let backend: Option<i32> = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(db)
        .await
        .ok();
    let cpu_s = backend
        .and_then(|b| u32::try_from(b).ok())
        .and_then(parent_and_cpu_s)
        .and_then(|(postmaster, _, _)| {
            // Backends that ended are in the postmaster's children's time once it reaped them.
            let (_, own, exited) = parent_and_cpu_s(postmaster)?;
            Some(own + exited + descendants_cpu_s(postmaster)?)
        });
    let loadtest_pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where application_name like 'loadtest%'",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    let loadtest_cpu_s = Some(
        loadtest_pids
            .iter()
            .filter_map(|&p| u32::try_from(p).ok())
            .filter_map(parent_and_cpu_s)
            .map(|(_, cpu, _)| cpu)
            .sum(),
    );
    let outbox = sqlx::query(
        "select seq_scan, seq_tup_read, coalesce(idx_scan, 0) as idx_scan, \
         coalesce(idx_tup_fetch, 0) as idx_tup_fetch, n_tup_ins, n_tup_del \
         from pg_stat_user_tables where schemaname = 'realtime' and relname = 'changes'",
    )
    .fetch_optional(db)
    .await
    .ok()
    .flatten()
    .map(|r| Outbox {
        seq_scan: r.try_get("seq_scan").unwrap_or(0),
        seq_tup_read: r.try_get("seq_tup_read").unwrap_or(0),
        idx_scan: r.try_get("idx_scan").unwrap_or(0),
        idx_tup_fetch: r.try_get("idx_tup_fetch").unwrap_or(0),
        n_tup_ins: r.try_get("n_tup_ins").unwrap_or(0),
        n_tup_del: r.try_get("n_tup_del").unwrap_or(0),
    });
    let database = sqlx::query(
        "select xact_commit, xact_rollback, tup_returned, tup_fetched, blks_hit, blks_read \
         from pg_stat_database where datname = current_database()",
    )
    .fetch_optional(db)
    .await
    .ok()
    .flatten()
    .map(|r| Database {
        xact_commit: r.try_get("xact_commit").unwrap_or(0),
        xact_rollback: r.try_get("xact_rollback").unwrap_or(0),
        tup_returned: r.try_get("tup_returned").unwrap_or(0),
        tup_fetched: r.try_get("tup_fetched").unwrap_or(0),
        blks_hit: r.try_get("blks_hit").unwrap_or(0),
        blks_read: r.try_get("blks_read").unwrap_or(0),
    });
    let connections = sqlx::query(
        "select coalesce(nullif(application_name, ''), '(none)') as name, count(*) as n \
         from pg_stat_activity where backend_type = 'client backend' group by 1",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default()
    .iter()
    .filter_map(|r| Some((r.try_get("name").ok()?, r.try_get("n").ok()?)))
    .collect();
    Snapshot {
        at,
        cpu_s,
        loadtest_cpu_s,
        outbox,
        database,
        connections,
    }
}

/// What happened between two snapshots, per second and per change (`changes` written).
pub(crate) fn between(before: &Snapshot, after: &Snapshot, changes: u64) -> Value {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let per_s = |v: f64| (v / seconds * 10.0).round() / 10.0;
    let per_change = |v: f64| (changes > 0).then(|| (v / changes as f64 * 1000.0).round() / 1000.0);
    let cpu = before.cpu_s.zip(after.cpu_s).map(|(b, a)| a - b);
    let loadtest_cpu = before
        .loadtest_cpu_s
        .zip(after.loadtest_cpu_s)
        .map(|(b, a)| (a - b).max(0.0));
    let others = cpu.zip(loadtest_cpu).map(|(c, l)| c - l);
    let outbox = before.outbox.zip(after.outbox).map(|(b, a)| {
        let scans = (a.seq_scan - b.seq_scan + a.idx_scan - b.idx_scan) as f64;
        json!({
            "seq_scan": a.seq_scan - b.seq_scan,
            "seq_tup_read": a.seq_tup_read - b.seq_tup_read,
            "idx_scan": a.idx_scan - b.idx_scan,
            "idx_tup_fetch": a.idx_tup_fetch - b.idx_tup_fetch,
            "n_tup_ins": a.n_tup_ins - b.n_tup_ins,
            "n_tup_del": a.n_tup_del - b.n_tup_del,
            "scans_per_s": per_s(scans),
            "scans_per_change": per_change(scans),
            "tuples_read_per_change": per_change(
                (a.seq_tup_read - b.seq_tup_read + a.idx_tup_fetch - b.idx_tup_fetch) as f64
            ),
        })
    });
    let database = before.database.zip(after.database).map(|(b, a)| {
        json!({
            "xact_commit": a.xact_commit - b.xact_commit,
            "xact_rollback": a.xact_rollback - b.xact_rollback,
            "tup_returned": a.tup_returned - b.tup_returned,
            "tup_fetched": a.tup_fetched - b.tup_fetched,
            "blks_hit": a.blks_hit - b.blks_hit,
            "blks_read": a.blks_read - b.blks_read,
            "xact_per_s": per_s((a.xact_commit - b.xact_commit) as f64),
            "tuples_per_change": per_change(
                (a.tup_returned - b.tup_returned + a.tup_fetched - b.tup_fetched) as f64
            ),
        })
    });
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let gateway_connections: i64 = after
        .connections
        .iter()
        .filter(|(name, _)| name.starts_with("realtime-gateway"))
        .map(|(_, n)| n)
        .sum();
    json!({
        "seconds": round2(seconds),
        "cpu_s": cpu.map(round2),
        "cpu_pct_of_core": cpu.map(|c| round2(c / seconds * 100.0)),
        "loadtest_sessions_cpu_s": loadtest_cpu.map(round2),
        "cpu_pct_of_core_without_loadtest_sessions": others.map(|c| round2(c / seconds * 100.0)),
        "outbox": outbox,
        "database": database,
        "connections": after.connections,
        "gateway_connections": gateway_connections,
    })
}
