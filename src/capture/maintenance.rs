//! Outbox maintenance: capture triggers kept in step with the publication, this node's read
//! position recorded (and checked against what was pruned), and old rows pruned.
//!
//! Pruning never drops what someone still needs: a row is deleted only when it is older than
//! `--change-retention`, every live node (one that recorded its position within
//! `--heartbeat-timeout`) has read past it, and its transaction ended before any snapshot now
//! running began — a transaction's age at capture says nothing about when it commits
//! (`realtime.prune_read_changes`, migrations/0007). A node that was not live while rows were
//! pruned (a long outage, a paused process) finds out from the horizon its position report
//! returns, and its subscribers are told ([`Gap`]). The pruner deletes in batches until it has
//! caught up, so it keeps up with sustained writes.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;

use crate::shutdown::Shutdown;

/// How often a node records its read position.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often the pruner looks for rows to delete.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// Rows deleted per statement; a statement stays short, and the pruner repeats it while it
/// finds full batches.
const PRUNE_BATCH: i32 = 50_000;
/// Longest a pruning round may run before it yields until the next tick.
const PRUNE_ROUND: Duration = Duration::from_secs(5);

/// Changes were pruned before this node read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The highest outbox id pruned.
    pub pruned_id: i64,
    /// Where this node was.
    pub read_id: i64,
}

/// Records this node's read position and checks it against the pruning horizon.
#[derive(Debug)]
pub struct Position {
    pool: PgPool,
    node_id: String,
    /// The horizon last reported as a gap, so one pruning is reported once.
    reported: Mutex<Option<(i64, u64)>>,
    /// When the position was last recorded.
    last: Mutex<Option<tokio::time::Instant>>,
}

impl Position {
    /// The position reporter of node `node_id`.
    pub fn new(pool: PgPool, node_id: String) -> Position {
        Position {
            pool,
            node_id,
            reported: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// Whether the position is due to be recorded again ([`REPORT_EVERY`] since the last time).
    pub fn due(&self) -> bool {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.is_none_or(|at| at.elapsed() >= REPORT_EVERY)
    }

    /// Records that this node has read every row up to `max_id` of transactions below `xmin`;
    /// returns a [`Gap`] when rows it had not read were pruned (once per pruning horizon).
    ///
    /// # Errors
    /// When the database cannot be reached (the position is recorded again a second later).
    pub async fn report(&self, max_id: i64, xmin: u64) -> Result<Option<Gap>, sqlx::Error> {
        let (pruned_id, pruned_below): (i64, String) = sqlx::query_as(
            "select pruned_id, pruned_below::text from realtime.report_position($1, $2, $3::text::xid8)",
        )
        .bind(&self.node_id)
        .bind(max_id)
        .bind(xmin.to_string())
        .fetch_one(&self.pool)
        .await?;
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
        let pruned_below: u64 = pruned_below.parse().unwrap_or(0);
        if pruned_id <= max_id && pruned_below <= xmin {
            return Ok(None);
        }
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *reported == Some((pruned_id, pruned_below)) {
            return Ok(None);
        }
        *reported = Some((pruned_id, pruned_below));
        Ok(Some(Gap {
            pruned_id,
            read_id: max_id,
        }))
    }
}

/// The xmin of a snapshot given by its `xmax` and running transactions: the lowest running
/// one, or `xmax` when none runs.
pub fn snapshot_xmin(xmax: &str, xip: &[String]) -> u64 {
    xip.iter()
        .filter_map(|x| x.parse::<u64>().ok())
        .min()
        .or_else(|| xmax.parse().ok())
        .unwrap_or(0)
}

/// Prunes the outbox every second until shutdown: rows older than `retention` that every node
/// live within `stale` has read, in batches, until a batch comes back short. Each tick also
/// deletes the bell's pulls of committed transactions ([`delete_bell_pulls`]).
pub async fn run_pruner(pool: PgPool, retention: Duration, stale: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pulls_warned = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = tokio::time::Instant::now();
        let mut total = 0i64;
        loop {
            let pruned: Result<i64, sqlx::Error> = sqlx::query_scalar(
                "select realtime.prune_read_changes(make_interval(secs => $1), \
                 make_interval(secs => $2), $3)",
            )
            .bind(retention.as_secs_f64())
            .bind(stale.as_secs_f64())
            .bind(PRUNE_BATCH)
            .fetch_one(&pool)
            .await;
            match pruned {
                Ok(n) => {
                    total += n;
                    if n < i64::from(PRUNE_BATCH) || started.elapsed() > PRUNE_ROUND {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune the outbox");
                    break;
                }
            }
        }
        delete_bell_pulls(&pool, &mut pulls_warned).await;
        if total > 0 {
            metrics::counter!("gateway_capture_pruned_total")
                .increment(u64::try_from(total).unwrap_or(0));
            tracing::debug!(rows = total, "outbox pruned");
        }
    }
}

/// Deletes the rows of `realtime.bell_pulls` (migration 0034) that committed transactions left:
/// each pulled the bell once, and its deferred trigger has rung (or found the bell taken) at its
/// commit. Rows of transactions still running are not visible, so they stay; the table is
/// unlogged, so this writes no WAL. Every node does it: concurrent deletes only wait for each
/// other's row locks. A failure is logged as a warning at most once a minute (`warned`).
async fn delete_bell_pulls(pool: &PgPool, warned: &mut Option<tokio::time::Instant>) {
    if let Err(e) = sqlx::query("delete from realtime.bell_pulls")
        .execute(pool)
        .await
    {
        // Not fatal (the table only grows), but said: a gateway role without `DELETE` on it
        // would let it grow for good. At most once a minute.
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *warned = Some(tokio::time::Instant::now());
            tracing::warn!(error = %e, "cannot delete the bell's pulls");
        }
    }
}

/// Capture triggers are reconciled with the publication this often (where the event trigger
/// that does it at once could not be created, for want of superuser rights).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Reconciles the capture triggers with the publication every [`RECONCILE_EVERY`] until
/// shutdown. A task of its own: a reconcile takes milliseconds, and up to its lock timeout when a
/// table is busy, which the listener's reads must not wait out.
pub async fn run_reconciler(pool: PgPool, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut old_bell = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                reconcile(&pool).await;
                if old_bell {
                    old_bell = !drop_old_bell(&pool).await;
                }
            }
        }
    }
}

/// Drops the bell's trigger on the outbox that migration 0034 could not drop within its lock
/// timeout (a long writer transaction held the outbox); returns whether none is left. Bounded
/// like a reconcile ([`begin_bounded`]), and tried again at the next tick.
async fn drop_old_bell(pool: &PgPool) -> bool {
    let result: Result<bool, sqlx::Error> = async {
        let mut tx = begin_bounded(pool).await?;
        // Looked up first: `drop trigger if exists` would lock the outbox even with none left.
        let exists: bool = sqlx::query_scalar(
            "select exists (select from pg_catalog.pg_trigger \
             where tgrelid = 'realtime.changes'::regclass and tgname = 'realtime_bell')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            sqlx::query("drop trigger realtime_bell on realtime.changes")
                .execute(&mut *tx)
                .await?;
            tracing::info!("the outbox's old bell trigger dropped (migration 0034)");
        }
        tx.commit().await?;
        Ok(true)
    }
    .await;
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot drop the outbox's old bell trigger yet; trying again");
        false
    })
}

/// A transaction whose statements wait at most 2 s for a table's lock: the reconcile's and the
/// old bell trigger's DDL, which must not make a busy table's writers queue behind them.
async fn begin_bounded(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("set local lock_timeout = '2s'")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Makes the capture triggers match the `supabase_realtime` publication. Bounded by a lock
/// timeout: a table busy with long transactions is retried on a later tick rather than
/// making its writers queue behind our `CREATE TRIGGER`.
async fn reconcile(pool: &PgPool) {
    let result: Result<serde_json::Value, sqlx::Error> = async {
        let mut tx = begin_bounded(pool).await?;
        let summary = sqlx::query_scalar("select realtime.sync_capture(false)")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(summary)
    }
    .await;
    match result {
        Ok(summary) => {
            let changed = ["created", "dropped", "failed"].iter().any(|k| {
                summary
                    .get(k)
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            });
            if changed {
                tracing::info!(%summary, "capture triggers reconciled with the publication");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot reconcile capture triggers"),
    }
}
