//! The registry writer: one task that applies what sessions report, in batches, off the message
//! path.
//!
//! Each flush writes, in this order and each in statements of its own: slot releases (so a
//! connection slot never waits on anything else), registry rows, row ends, audit records. Rows
//! the database refuses are split out ([`super::batch`]), audited and counted; what could not be
//! written because the database is unreachable stays pending and is retried with back-off.
//!
//! The writer also keeps what this node really serves ([`Live`]); when a tick finds that the
//! node was declared lost (its node row gone, or fewer slots held than it has open
//! connections), it re-registers ([`reregister`]) at that tick and, until that succeeds, at the
//! following ones. A tick that finds more slots held than open connections frees those held
//! for none of them, once they are over a minute old (a slot statement that committed after
//! its answer was given up).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::batch::{self, chain, write_split, Write};
use super::live::Live;
use super::reregister::reregister;
use super::{store, AuditRecord, Event, JoinRow, RowClose, RowEnd, Settings};
use crate::pg::Error;

/// Writes are flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How old a slot this node holds for no connection must be, beyond the time its tick waited,
/// before the tick frees it: long past the moment its taking is reported (right after the
/// statement that took it answers, at most 5 s after that statement started).
const UNKNOWN_SLOT_MARGIN: Duration = Duration::from_secs(60);
/// Most rows written in one statement.
const MAX_STATEMENT_ROWS: usize = 2_000;
/// The foreign key of `user_id` to `auth.users`.
const USER_FKEY: &str = "realtime_subscription_registry_user_id_fkey";

/// Writes not yet applied.
#[derive(Debug, Default)]
struct Pending {
    /// Rows to insert, with their end if it came before the insert.
    inserts: HashMap<Uuid, (JoinRow, RowEnd)>,
    /// Ends of rows already inserted.
    closes: HashMap<Uuid, RowClose>,
    /// New users of rows already inserted (the last one reported wins).
    users: HashMap<Uuid, Option<Uuid>>,
    /// Slots to free.
    releases: Vec<(i32, Uuid)>,
    /// Audit records to append, oldest first.
    audit: VecDeque<AuditRecord>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.closes.is_empty()
            && self.users.is_empty()
            && self.releases.is_empty()
            && self.audit.is_empty()
    }

    /// Everything held: rows, ends, user changes, slot releases and audit records.
    fn len(&self) -> usize {
        self.rows() + self.releases.len() + self.audit.len()
    }

    fn rows(&self) -> usize {
        self.inserts.len() + self.closes.len() + self.users.len()
    }
}

/// Records dropped past a bound since the overflow began; `None` while within it.
#[derive(Debug, Default)]
struct Overflow {
    dropped: Option<u64>,
}

impl Overflow {
    /// Counts one drop; warns at the first of an episode.
    fn drop_one(&mut self, what: &str, bound: usize, metric: &'static str) {
        metrics::counter!(metric).increment(1);
        let dropped = self.dropped.get_or_insert_with(|| {
            tracing::warn!(
                bound,
                "more than {bound} {what} waiting to be written; dropping until the database \
                 catches up"
            );
            0
        });
        *dropped += 1;
    }

    /// Ends the episode once the pending work is within `bound` again.
    fn settle(&mut self, what: &str, pending: usize, bound: usize) {
        if pending < bound {
            if let Some(dropped) = self.dropped.take() {
                tracing::warn!(
                    dropped,
                    "{what} within the bound again; {dropped} were dropped"
                );
            }
        }
    }
}

/// How much waits for the writer, shared with the [`Registry`](super::Registry) handles.
#[derive(Debug, Default)]
pub(super) struct Depth {
    /// Events sent and not yet received by the writer.
    pub(super) unread: AtomicUsize,
    /// Writes the writer holds (rows, ends, user changes, slot releases, audit records).
    pub(super) held: AtomicUsize,
}

/// The writer task's state.
pub(super) struct Writer {
    pool: PgPool,
    settings: Settings,
    rx: mpsc::UnboundedReceiver<Event>,
    pending: Pending,
    /// Whether `user_id` is written only for users `auth.users` knows.
    check_users: bool,
    rows_overflow: Overflow,
    audit_overflow: Overflow,
    /// What this node serves: open channels' rows and held slots.
    live: Live,
    /// This node was declared lost and has not re-registered yet.
    reregister_needed: bool,
    /// What waits, reported for the metrics.
    depth: Arc<Depth>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    pub(super) fn new(
        pool: PgPool,
        settings: Settings,
        rx: mpsc::UnboundedReceiver<Event>,
        check_users: bool,
        depth: Arc<Depth>,
    ) -> Writer {
        Writer {
            pool,
            settings,
            rx,
            pending: Pending::default(),
            check_users,
            rows_overflow: Overflow::default(),
            audit_overflow: Overflow::default(),
            live: Live::default(),
            reregister_needed: false,
            depth,
        }
    }

    #[tracing::instrument(name = "registry", skip_all)]
    pub(super) async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.depth.held.store(self.pending.len(), Ordering::Relaxed);
            let event = tokio::select! {
                event = self.rx.recv() => event,
                _ = flush.tick() => {
                    let due = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
                    if due && !self.pending.is_empty() {
                        if self.flush().await {
                            backoff = Duration::from_millis(100);
                            retry_at = None;
                        } else {
                            metrics::counter!("gateway_registry_write_failures_total").increment(1);
                            retry_at = Some(tokio::time::Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                    continue;
                }
            };
            if event.is_some() {
                self.depth.unread.fetch_sub(1, Ordering::Relaxed);
            }
            match event {
                Some(Event::Tick {
                    heartbeats,
                    sent,
                    done,
                }) => {
                    self.flush().await;
                    let mut reclaimed = Vec::new();
                    match store::tick(&self.pool, &self.settings, &heartbeats).await {
                        Ok(state) => {
                            if state.node_row_missing || state.slots_held < self.live.slots.len() {
                                tracing::warn!(
                                    node_row_missing = state.node_row_missing,
                                    slots_held = state.slots_held,
                                    open_connections = self.live.slots.len(),
                                    "this node was declared lost; re-registering its sessions"
                                );
                                self.reregister_needed = true;
                            }
                            if self.reregister_needed {
                                reclaimed = self.reregister().await;
                            } else if state.slots_held > self.live.slots.len() {
                                self.free_unknown_slots(sent).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!("registry heartbeat failed: {}", chain(&e));
                            metrics::counter!("gateway_registry_write_failures_total").increment(1);
                        }
                    }
                    let _answered = done.send(reclaimed);
                }
                Some(Event::Shutdown(done)) => {
                    // Sessions have closed and reported; write everything, then the node's end.
                    while let Ok(event) = self.rx.try_recv() {
                        self.depth.unread.fetch_sub(1, Ordering::Relaxed);
                        self.absorb(event);
                    }
                    while !self.flush().await {
                        tracing::warn!("registry flush at shutdown incomplete; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    if let Err(e) = store::retire_node(&self.pool, &self.settings.node_id).await {
                        tracing::warn!("cannot retire this node's registry rows: {}", chain(&e));
                    }
                    let _answered = done.send(());
                    return;
                }
                Some(event) => self.absorb(event),
                None => return,
            }
        }
    }

    /// Adds a reported event to the pending writes, within their bounds (ticks and shutdowns
    /// met here, at shutdown, are only answered).
    fn absorb(&mut self, event: Event) {
        let bound = self.settings.max_pending_rows;
        match event {
            Event::Joined(row) => {
                // Known as live even when its write is dropped: a re-registration writes it.
                self.live.joined(&row);
                if self.pending.rows() >= bound {
                    self.rows_overflow.drop_one(
                        "registry rows",
                        bound,
                        "gateway_registry_rows_dropped_total",
                    );
                } else {
                    self.pending.inserts.insert(row.id, (row, None));
                }
            }
            Event::Left { id, reason, at } => {
                self.live.left(id);
                if let Some(entry) = self.pending.inserts.get_mut(&id) {
                    entry.1 = Some((reason, at));
                } else if self.pending.closes.contains_key(&id) {
                    // The first end reported wins.
                } else if self.pending.rows() >= bound {
                    self.rows_overflow.drop_one(
                        "registry rows",
                        bound,
                        "gateway_registry_rows_dropped_total",
                    );
                } else {
                    self.pending.closes.insert(id, (reason, at));
                }
            }
            // Never dropped: there are at most as many as the node's connections.
            Event::Release { slot, connection } => {
                let slot = self.live.slot_released(slot, connection);
                self.pending.releases.push((slot, connection));
            }
            Event::Acquired { slot, connection } => self.live.slot_taken(slot, connection),
            Event::Audit(record) => self.push_audit(record),
            Event::User { id, user_id } => {
                self.live.user_changed(id, user_id);
                if let Some(entry) = self.pending.inserts.get_mut(&id) {
                    entry.0.user_id = user_id;
                } else if self.pending.closes.contains_key(&id) {
                    // Already ended: its user no longer matters.
                } else if !self.pending.users.contains_key(&id) && self.pending.rows() >= bound {
                    self.rows_overflow.drop_one(
                        "registry rows",
                        bound,
                        "gateway_registry_rows_dropped_total",
                    );
                } else {
                    self.pending.users.insert(id, user_id);
                }
            }
            Event::Tick { done, .. } => {
                let _answered = done.send(Vec::new());
            }
            Event::Shutdown(done) => {
                let _answered = done.send(());
            }
        }
    }

    fn push_audit(&mut self, record: AuditRecord) {
        let bound = self.settings.max_pending_audit;
        while self.pending.audit.len() >= bound.max(1) {
            self.pending.audit.pop_front();
            self.audit_overflow.drop_one(
                "audit records",
                bound,
                "gateway_registry_audit_dropped_total",
            );
        }
        self.pending.audit.push_back(record);
    }

    /// Writes what is pending; `true` when nothing is left to retry (rows the database refused
    /// are not retried: they are audited and counted).
    async fn flush(&mut self) -> bool {
        let releases = self.flush_releases().await;
        let inserts = self.flush_inserts().await;
        let users = self.flush_users().await;
        let closes = self.flush_closes().await;
        let audit = self.flush_audit().await;
        self.rows_overflow.settle(
            "registry rows",
            self.pending.rows(),
            self.settings.max_pending_rows,
        );
        self.audit_overflow.settle(
            "audit records",
            self.pending.audit.len(),
            self.settings.max_pending_audit,
        );
        releases && inserts && users && closes && audit
    }

    /// Rewrites the users of rows whose channel took another `sub`'s token; kept for a retry
    /// when the database cannot be reached.
    async fn flush_users(&mut self) -> bool {
        if self.pending.users.is_empty() {
            return true;
        }
        let users: Vec<(Uuid, Option<Uuid>)> =
            self.pending.users.iter().map(|(id, u)| (*id, *u)).collect();
        match store::set_users(&self.pool, &users, self.check_users).await {
            Ok(()) => {
                self.pending.users.clear();
                crate::room::give_back(&mut self.pending.users);
                true
            }
            Err(e) => {
                tracing::warn!("registry user update failed: {}; will retry", chain(&e));
                false
            }
        }
    }

    async fn flush_releases(&mut self) -> bool {
        if self.pending.releases.is_empty() {
            return true;
        }
        match store::release_slots(&self.pool, &self.pending.releases).await {
            Ok(()) => {
                self.pending.releases.clear();
                true
            }
            Err(e) => {
                tracing::warn!(
                    "slot release of {} slots failed: {}; will retry",
                    self.pending.releases.len(),
                    chain(&e)
                );
                false
            }
        }
    }

    async fn flush_inserts(&mut self) -> bool {
        let rows: Vec<(JoinRow, RowEnd)> = self.pending.inserts.drain().map(|(_, r)| r).collect();
        let mut complete = true;
        for chunk in chunks(rows) {
            let written = self.insert(chunk, self.check_users).await;
            let mut refused = Vec::new();
            for (row, error) in written.failed {
                if !self.check_users && constraint(&error) == Some(USER_FKEY) {
                    refused.push(row);
                } else {
                    self.row_failed("insert", &error, row_detail(&row.0));
                }
            }
            if !refused.is_empty() {
                // An `auth.users` foreign key appeared after start: check users from now on.
                tracing::info!("registry user ids are checked against auth.users from now on");
                self.check_users = true;
                let retried = self.insert(refused, true).await;
                for (row, error) in retried.failed {
                    self.row_failed("insert", &error, row_detail(&row.0));
                }
                complete &= self.keep_inserts(retried.unwritten);
            }
            complete &= self.keep_inserts(written.unwritten);
        }
        // Not the room of a storm of joins, kept for good (what was put back is counted).
        // During a storm the map grows again at each flush: some 100 µs each 100 ms.
        crate::room::give_back(&mut self.pending.inserts);
        complete
    }

    async fn insert(
        &self,
        rows: Vec<(JoinRow, RowEnd)>,
        check_users: bool,
    ) -> batch::Written<(JoinRow, RowEnd), Error> {
        // Each statement owns its handles (a pool clone is a reference count).
        let (pool, node) = (self.pool.clone(), self.settings.node_id.clone());
        write_split(
            "registry insert",
            rows,
            crate::pg::Error::is_row_error,
            |chunk| -> Write<'_, Error> {
                let (pool, node) = (pool.clone(), node.clone());
                Box::pin(async move {
                    store::insert_rows(&pool, &node, chunk, check_users, false).await
                })
            },
        )
        .await
    }

    /// Puts rows not written back; `true` when there were none.
    fn keep_inserts(&mut self, rows: Vec<(JoinRow, RowEnd)>) -> bool {
        let complete = rows.is_empty();
        for row in rows {
            self.pending.inserts.insert(row.0.id, row);
        }
        complete
    }

    async fn flush_closes(&mut self) -> bool {
        let rows: Vec<(Uuid, RowClose)> = self.pending.closes.drain().collect();
        let mut complete = true;
        for chunk in chunks(rows) {
            let pool = self.pool.clone();
            let written = write_split(
                "registry update",
                chunk,
                crate::pg::Error::is_row_error,
                |chunk| -> Write<'_, Error> {
                    let pool = pool.clone();
                    Box::pin(async move { store::close_rows(&pool, chunk).await })
                },
            )
            .await;
            for ((id, (reason, _)), error) in written.failed {
                self.row_failed("close", &error, json!({"id": id, "reason": reason}));
            }
            complete &= written.unwritten.is_empty();
            self.pending.closes.extend(written.unwritten);
        }
        crate::room::give_back(&mut self.pending.closes);
        complete
    }

    async fn flush_audit(&mut self) -> bool {
        let records: Vec<AuditRecord> = self.pending.audit.drain(..).collect();
        let mut complete = true;
        for chunk in chunks(records) {
            let (pool, node) = (self.pool.clone(), self.settings.node_id.clone());
            let written = write_split(
                "audit insert",
                chunk,
                crate::pg::Error::is_row_error,
                |chunk| -> Write<'_, Error> {
                    let (pool, node) = (pool.clone(), node.clone());
                    Box::pin(async move { store::append_audit(&pool, &node, chunk).await })
                },
            )
            .await;
            for (record, error) in written.failed {
                // Not audited: that could refuse the same way, for ever.
                metrics::counter!("gateway_registry_rows_failed_total", "write" => "audit")
                    .increment(1);
                tracing::warn!(
                    kind = record.kind,
                    "audit record not written: {}",
                    chain(&error)
                );
            }
            complete &= written.unwritten.is_empty();
            // Back at the front, in their order, ahead of records audited meanwhile.
            for record in written.unwritten.into_iter().rev() {
                self.pending.audit.push_front(record);
            }
        }
        complete
    }

    /// Writes this node's live rows and slots back after it was declared lost; returns the
    /// connections to close because the cluster is at its cap (audited `cap_reclaimed`).
    async fn reregister(&mut self) -> Vec<Uuid> {
        let outcome =
            match reregister(&self.pool, &self.settings, &mut self.live, self.check_users).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::warn!("re-registration failed: {}; will retry", chain(&e));
                    metrics::counter!("gateway_registry_write_failures_total").increment(1);
                    return Vec::new();
                }
            };
        self.reregister_needed = false;
        metrics::counter!("gateway_registry_reregistrations_total").increment(1);
        tracing::warn!(
            rows = outcome.rows,
            same_slot = outcome.same_slot,
            other_slot = outcome.other_slot,
            reclaimed = outcome.victims.len(),
            "re-registered this node's sessions"
        );
        let failed = outcome.failed.len();
        for (row, error) in outcome.failed {
            self.row_failed("reregister", &error, row_detail(&row));
        }
        self.push_audit(AuditRecord {
            kind: "node_reregistered",
            at: Utc::now(),
            user_id: None,
            remote_addr: None,
            detail: json!({
                "rows": outcome.rows,
                "rows_failed": failed,
                "connections": self.live.slots.len(),
                "same_slot": outcome.same_slot,
                "other_slot": outcome.other_slot,
                "reclaimed": outcome.victims.len(),
            }),
        });
        for connection in &outcome.victims {
            metrics::counter!("gateway_limits_reclaimed_total").increment(1);
            self.push_audit(AuditRecord {
                kind: "cap_reclaimed",
                at: Utc::now(),
                user_id: None,
                remote_addr: None,
                detail: json!({
                    "connection_id": connection,
                    "cap": self.settings.max_connections,
                }),
            });
        }
        // Written now rather than at the next flush interval.
        self.flush().await;
        outcome.victims
    }

    /// Frees the slots this node holds in the database but not for any of its connections
    /// (audited `slots_unknown_freed`, counted in `gateway_limits_unknown_slots_freed_total`).
    /// The tick was sent at `sent`: a slot taken since may be reported after it, so the margin
    /// grows by the time the tick waited and was worked on.
    async fn free_unknown_slots(&mut self, sent: std::time::Instant) {
        let known: Vec<i32> = self.live.slots.values().map(|held| held.slot).collect();
        let node = &self.settings.node_id;
        let margin = UNKNOWN_SLOT_MARGIN + sent.elapsed();
        match store::free_unknown_slots(&self.pool, node, &known, margin).await {
            Ok(freed) if freed.is_empty() => {}
            Ok(freed) => {
                tracing::warn!(
                    slots = freed.len(),
                    "freed connection slots this node held for no connection"
                );
                metrics::counter!("gateway_limits_unknown_slots_freed_total")
                    .increment(freed.len() as u64);
                let (slots, connections): (Vec<i32>, Vec<Uuid>) = freed.into_iter().unzip();
                self.push_audit(AuditRecord {
                    kind: "slots_unknown_freed",
                    at: Utc::now(),
                    user_id: None,
                    remote_addr: None,
                    detail: json!({ "slots": slots, "connection_ids": connections }),
                });
            }
            Err(e) => {
                tracing::warn!("cannot free unknown connection slots: {}", chain(&e));
                metrics::counter!("gateway_registry_write_failures_total").increment(1);
            }
        }
    }

    /// A row the database refused on its own: logged, counted and audited, not retried.
    fn row_failed(&mut self, write: &'static str, error: &Error, mut detail: serde_json::Value) {
        metrics::counter!("gateway_registry_rows_failed_total", "write" => write).increment(1);
        let db = error.database_error();
        detail["write"] = json!(write);
        detail["error"] = json!(db.map_or_else(|| chain(error), |db| db.message().to_owned()));
        detail["sqlstate"] = json!(error.sqlstate());
        detail["constraint"] = json!(constraint(error));
        tracing::warn!(%detail, "registry {write} of one row failed: {}", chain(error));
        self.push_audit(AuditRecord {
            kind: "registry_row_failed",
            at: Utc::now(),
            user_id: None,
            remote_addr: None,
            detail,
        });
    }
}

/// Splits `rows` into statements of at most [`MAX_STATEMENT_ROWS`], each built when it is
/// written and holding only its own rows. (Cut with `split_off`, every statement kept the room
/// of all the rows after it: 100,000 rows pending after an outage took about 0.5 GB at once.)
fn chunks<T>(rows: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    let mut rows = rows.into_iter();
    std::iter::from_fn(move || {
        let chunk: Vec<T> = rows.by_ref().take(MAX_STATEMENT_ROWS).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// The constraint a database error names, if any.
fn constraint(error: &Error) -> Option<&str> {
    error.database_error().and_then(|db| db.constraint())
}

/// What identifies a registry row in the audit log (the channel name cut to 100 bytes).
fn row_detail(row: &JoinRow) -> serde_json::Value {
    json!({
        "id": row.id,
        "subscription_id": super::bounded_prefix(&row.subscription_id, 200),
        "channel": super::bounded_prefix(&row.channel_name, 100),
        "connection_id": row.connection_id,
        "user_id": row.user_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_hold_at_most_the_bound() {
        assert_eq!(chunks(Vec::<u8>::new()).count(), 0);
        let all: Vec<Vec<u8>> = chunks(vec![0u8; 2 * MAX_STATEMENT_ROWS + 1]).collect();
        let sizes: Vec<usize> = all.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_STATEMENT_ROWS, MAX_STATEMENT_ROWS, 1]);
        // Each holds the room of its own rows, not of the rows after it.
        let room: Vec<usize> = all.iter().map(Vec::capacity).collect();
        assert_eq!(room, sizes);
    }

    #[test]
    fn an_overflow_episode_counts_and_ends() {
        let mut o = Overflow::default();
        o.drop_one("rows", 2, "test_dropped_total");
        o.drop_one("rows", 2, "test_dropped_total");
        assert_eq!(o.dropped, Some(2));
        o.settle("rows", 2, 2);
        assert_eq!(o.dropped, Some(2), "still at the bound");
        o.settle("rows", 1, 2);
        assert_eq!(o.dropped, None);
    }
}
