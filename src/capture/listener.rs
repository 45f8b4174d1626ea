//! Stage 1: the change listener — one LISTEN connection per node, however many clients.
//!
//! Writers' triggers put every change of a published table into the outbox `realtime.changes`
//! inside their own transaction; at commit, a transaction rings a bell (`NOTIFY
//! realtime_gateway`) unless another one is ringing at that moment (so writers never queue on
//! NOTIFY's cluster-wide lock; see docs/capture.md). The bell only says "look": this task reads
//! the outbox through the pool, so nothing depends on a notification arriving. Missed bells
//! (listener reconnecting, writers that skipped the bell) are covered by follow-up and poll
//! reads, and a dropped listener connection loses nothing because the outbox is durable.
//!
//! Reading in commit order: each read sees one snapshot `S` — one statement when everything
//! fits in a page, else a repeatable-read transaction read page by page — compared with the
//! previous read's snapshot `P`. The rows to deliver are exactly those of
//! transactions visible in `S` but not in `P`. With `M` the highest id visible in `P`, they are:
//! rows with ids up to `M` of transactions `P` did not see (`xid = any(P.xip)` or
//! `xid >= P.xmax` — a transaction may hold an xid at or above `P.xmax`, and have written rows,
//! before `P` was taken, since `xmax` is one past the latest *completed* xid), and every row above
//! `M` that `S` sees (ids above `M` were all allocated after `P`, by transactions `P` did not see).
//! Everything a batch delivers committed after everything earlier batches delivered; within a
//! batch rows go in id (capture) order, which keeps every row's changes in the order they were
//! made, since conflicting writes are serialized by row locks. Each row is decoded (stage 2) and
//! routed (stage 3) as its page arrives, so a bulk write of any size streams with bounded memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};

use chrono::Utc;
use sqlx::postgres::PgRow;

use super::bell::Rest;
use super::decode::{self, ChangeRow};
use super::maintenance;
use super::outbox::{
    fetch_at_once, fetch_page, fits, parse_snapshot, read_row, start_cursor, AtOnce, Cursor, Part,
    SightAsked,
};
use super::schedule::{Backoff, Pace, FOLLOW_UP};
use crate::change::{BusMessage, ChangeEvent};
use crate::fanout::router::{Router, Wakes};
use crate::fanout::table_sight::TableSights;
use crate::fanout::visibility::{ClaimSet, Visibility};
use crate::pg::catalog::Catalog;
use crate::pg::Error;
use crate::position::Spans;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// Channel the capture bell notifies.
pub const BELL_CHANNEL: &str = "realtime_gateway";
/// `application_name` of the listener connection, as seen in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "realtime-gateway listener";
/// How an undeliverable change's error entry begins (docs/protocol.md 6.3).
pub const UNDELIVERABLE: &str = "Error 422: Unprocessable Entity, change not delivered";
/// Rows read per page.
pub(super) const PAGE_ROWS: i64 = 1000;
/// Within a page, writers are woken at least every this many deliveries, which bounds how
/// long a routed frame waits for its writer.
const WAKE_EVERY_DELIVERIES: usize = 50_000;
/// The listener connection is checked with a query this often, so a silently dead connection
/// is noticed within seconds, not at the next TCP timeout.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Settings of the listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database URL (the listener opens its own connection).
    pub database_url: String,
    /// Read the outbox at least this often even without a bell.
    pub poll_interval: Duration,
    /// Longest spacing of reads under sustained load ([`super::schedule::Pace`]).
    pub read_spacing: Duration,
    /// Changes over this many bytes are truncated with `Error 413`.
    pub max_change_bytes: usize,
    /// This node, as its read position is recorded.
    pub node_id: String,
    /// Further channels to LISTEN on; their notifications go to the bus sender.
    pub bus_channels: Vec<String>,
}

/// What the listener reports to readiness and metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// The LISTEN connection is up.
    pub connected: AtomicBool,
    /// The outbox cursor is established (changes committed from now on will be delivered).
    pub started: AtomicBool,
    /// Times the LISTEN connection was lost.
    pub reconnects: AtomicU64,
    /// Outbox rows read.
    pub rows: AtomicU64,
    /// Outbox reads made.
    pub reads: AtomicU64,
    /// Highest outbox id read.
    pub last_id: AtomicU64,
    /// Whether the change stream runs (started and connected), for those who wait for it.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Status {
    /// Records whether the LISTEN connection is up.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        self.publish();
    }

    /// Records that the outbox cursor is established.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
        self.publish();
    }

    /// Follows whether the change stream runs: `true` once the cursor is established and while
    /// the LISTEN connection is up.
    pub fn ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn publish(&self) {
        let ready = self.started.load(Ordering::Acquire) && self.connected.load(Ordering::Acquire);
        self.ready
            .send_if_modified(|was| std::mem::replace(was, ready) != ready);
    }
}

/// The listener task.
#[derive(Debug)]
pub struct Listener {
    settings: Settings,
    bus: Option<tokio::sync::mpsc::UnboundedSender<BusMessage>>,
    pub(super) pool: PgPool,
    catalog: Arc<Catalog>,
    pub(super) router: Arc<Router>,
    /// Row-level security: who may see which change.
    visibility: Visibility,
    /// Whether the usual read answers what its tables show roles.
    sight: SightAsked,
    status: Arc<Status>,
    audit: Option<Registry>,
    /// Records this node's read position for the pruner.
    position: maintenance::Position,
    /// The reads' spans, for resumable connections ([`crate::position`]).
    pub(super) spans: Arc<Spans>,
    /// Channels to make live at a read boundary, after catching up ([`super::resume`]).
    requests: Option<tokio::sync::mpsc::UnboundedReceiver<super::resume::Request>>,
}

impl Listener {
    /// A listener reading through `pool` and routing into `router`.
    pub fn new(
        settings: Settings,
        pool: PgPool,
        catalog: Arc<Catalog>,
        router: Arc<Router>,
        visibility: Visibility,
        status: Arc<Status>,
    ) -> Listener {
        let position = maintenance::Position::new(pool.clone(), settings.node_id.clone());
        Listener {
            settings,
            bus: None,
            position,
            pool,
            catalog,
            router,
            visibility,
            sight: SightAsked::default(),
            status,
            audit: None,
            spans: Arc::default(),
            requests: None,
        }
    }

    /// Records the reads' spans in `spans`, and makes channels sent on `requests` live at a
    /// read boundary, after catching them up from where their previous connection stopped.
    pub fn with_resume(
        mut self,
        spans: Arc<Spans>,
        requests: tokio::sync::mpsc::UnboundedReceiver<super::resume::Request>,
    ) -> Listener {
        self.spans = spans;
        self.requests = Some(requests);
        self
    }

    /// Writes an audit record (`change_undeliverable`) for every outbox row skipped as
    /// undeliverable to `registry`'s audit log.
    pub fn with_audit(mut self, registry: Registry) -> Listener {
        self.audit = Some(registry);
        self
    }

    /// Forwards notifications of the bus channels (and gaps) to `bus`.
    pub fn with_bus(mut self, bus: tokio::sync::mpsc::UnboundedSender<BusMessage>) -> Listener {
        self.bus = Some(bus);
        self
    }

    fn forward(&self, message: BusMessage) {
        if let Some(bus) = &self.bus {
            // The bus consumer lives as long as the gateway.
            let _sent = bus.send(message);
        }
    }

    /// Handles one notification: the bell asks for a read; others go to the bus.
    fn on_notification(&self, n: &sqlx::postgres::PgNotification) -> bool {
        if n.channel() == BELL_CHANNEL {
            return true;
        }
        self.forward(BusMessage::Notification {
            channel: n.channel().to_owned(),
            payload: n.payload().to_owned(),
        });
        false
    }

    /// Starts the task on the shutdown tracker.
    pub fn spawn(self, shutdown: &Shutdown) -> tokio::task::JoinHandle<()> {
        let s = shutdown.clone();
        shutdown.spawn("pg_listener", async move { self.run(s).await })
    }

    /// Runs until shutdown.
    #[tracing::instrument(name = "pg_listener", skip_all)]
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut backoff = Backoff::new();
        let mut cursor = loop {
            match start_cursor(&self.pool).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot read the outbox position; retrying");
                    if backoff.wait(&shutdown).await {
                        return;
                    }
                }
            }
        };
        // Where reading starts: the backlog metric counts from here until the first read.
        self.status
            .last_id
            .store(u64::try_from(cursor.max_id).unwrap_or(0), Ordering::Relaxed);
        // The first span is empty: connections that go live now start at the cursor.
        let first = self.spans.begin(&cursor, &cursor);
        self.spans.complete(first.seq);
        let mut requests = self.requests.take();
        self.status.set_started();
        tracing::info!(max_id = cursor.max_id, "change listener started");
        let listen_pool = match listen_pool(&self.settings.database_url) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "invalid database url for the listener");
                return;
            }
        };
        let mut listener: Option<PgListener> = None;
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = tokio::time::interval(HEALTH_CHECK_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.report_position(&cursor).await;
        let mut report = tokio::time::interval(maintenance::REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read_backoff = Backoff::new();
        // A failed read is retried from its own select arm, so the other duties go on.
        let mut read_retry_at: Option<tokio::time::Instant> = None;
        let mut routed = std::collections::HashSet::new();
        let mut listen_backoff = Backoff::new();
        let mut listen_retry_at = tokio::time::Instant::now();
        let mut need_read = true;
        let mut follow_up = false;
        let mut bell_rang = false;
        let mut pace = Pace::new(self.settings.read_spacing);
        let mut rest = Rest::default();
        loop {
            if listener.is_none() && tokio::time::Instant::now() >= listen_retry_at {
                match connect_listener(&listen_pool, &self.settings.bus_channels).await {
                    Ok(l) => {
                        tracing::info!("listener connected");
                        self.status.set_connected(true);
                        listener = Some(l);
                        listen_backoff = Backoff::new();
                        need_read = true; // whatever was rung while we were away
                        self.forward(BusMessage::Gap);
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "listener cannot connect; retrying");
                        listen_retry_at = tokio::time::Instant::now() + listen_backoff.next();
                    }
                }
            }
            if need_read && read_retry_at.is_none() && pace.due() {
                need_read = false;
                let rang = std::mem::take(&mut bell_rang);
                let started = tokio::time::Instant::now();
                let read = self.read(&mut cursor, &mut routed).await;
                // Any read makes the next poll due a full interval later: the poll only
                // bounds the time without one.
                poll.reset();
                match read {
                    Ok(n) => {
                        follow_up = n > 0 || rang;
                        pace.read(started, n > 0);
                        read_backoff = Backoff::new();
                        if let Some(l) = listener.as_mut() {
                            match rest.follow(l, pace.sustained()).await {
                                // Given back: a writer that skipped its bell just before is
                                // found by the follow-up.
                                Ok(woke) => follow_up |= woke,
                                Err(e) => {
                                    tracing::warn!(error = %e, "listener connection lost");
                                    self.lose(&mut listener, &mut rest);
                                    need_read = true;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "cannot read the outbox; retrying");
                        metrics::counter!("gateway_listener_read_errors_total").increment(1);
                        bell_rang |= rang;
                        follow_up = false;
                        read_retry_at = Some(tokio::time::Instant::now() + read_backoff.next());
                    }
                }
            }
            let retry_listen = listener.is_none();
            let retry_read = read_retry_at.unwrap_or_else(tokio::time::Instant::now);
            // A read asked for but held back by the spacing starts when it is due; a
            // follow-up comes no sooner than that either.
            let paced = need_read && read_retry_at.is_none();
            let follow_up_at = pace.next.max(tokio::time::Instant::now() + FOLLOW_UP);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                bell = recv(&mut listener) => match bell {
                    Ok(Some(n)) => {
                        bell_rang |= self.on_notification(&n);
                        if let Some(l) = listener.as_mut() {
                            while let Some(n) = l.next_buffered() {
                                bell_rang |= self.on_notification(&n);
                            }
                        }
                        need_read |= bell_rang;
                    }
                    Ok(None) | Err(_) => {
                        // Lost: reconnect, LISTEN again and report the gap (on connect) on our
                        // own path, never inside sqlx's recv, which other arms may cancel.
                        match &bell {
                            Err(e) => tracing::warn!(error = %e, "listener connection lost"),
                            Ok(_) => tracing::warn!("listener connection lost"),
                        }
                        self.lose(&mut listener, &mut rest);
                        need_read = true; // catch up on the gap
                    }
                },
                () = tokio::time::sleep_until(follow_up_at), if follow_up && !paced => need_read = true,
                () = tokio::time::sleep_until(pace.next), if paced => {}
                () = tokio::time::sleep_until(retry_read), if read_retry_at.is_some() => {
                    read_retry_at = None;
                    need_read = true;
                }
                _ = poll.tick() => need_read = true,
                () = tokio::time::sleep_until(listen_retry_at), if retry_listen => {},
                // Between reads, and not while a failed read waits for its retry (its routed
                // ids would be missed by a channel that goes live now).
                request = super::resume::next(&mut requests),
                    if read_retry_at.is_none() && routed.is_empty() =>
                {
                    self.go_live(&cursor, request).await;
                }
                _ = health.tick() => {
                    if let Some(l) = listener.as_mut() {
                        let ok = tokio::time::timeout(
                            Duration::from_secs(2),
                            sqlx::query("select 1").execute(&mut *l),
                        ).await;
                        if !matches!(ok, Ok(Ok(_))) {
                            tracing::warn!("listener connection failed its health check");
                            self.lose(&mut listener, &mut rest);
                            need_read = true;
                        }
                    }
                }
                _ = report.tick() => self.report_position(&cursor).await,
            }
        }
        self.status.set_connected(false);
        // The listener holds the pool's only connection: return it before closing the pool.
        drop(listener);
        listen_pool.close().await;
        tracing::info!("change listener stopped");
    }

    /// Drops a lost `LISTEN` connection (and with its session, the bell's rest); the loop
    /// connects again.
    fn lose(&self, listener: &mut Option<PgListener>, rest: &mut Rest) {
        *listener = None;
        rest.lost();
        self.status.set_connected(false);
        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_listener_reconnects_total").increment(1);
    }

    /// Reads and routes every change committed since the cursor; returns how many. `routed`
    /// holds the ids an earlier, failed attempt already routed since the cursor last moved: they
    /// are not routed again.
    async fn read(
        &self,
        cursor: &mut Cursor,
        routed: &mut std::collections::HashSet<i64>,
    ) -> Result<usize, Error> {
        if let Some(total) = self.read_at_once(cursor, routed).await? {
            return Ok(total);
        }
        let mut tx = self.pool.begin().await?;
        // Custom plans: with the snapshot's values in hand the planner finds in-flight rows
        // through the xid index; a generic plan walks the id index from the outbox's start.
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        sqlx::query("set local plan_cache_mode = force_custom_plan")
            .execute(&mut *tx)
            .await?;
        let snapshot: String = sqlx::query_scalar("select pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await?;
        let (xmax_now, xip_now) = parse_snapshot(&snapshot);
        // Its highest id is known only at the end: unbounded in the span.
        let span = self.spans.begin(
            cursor,
            &Cursor {
                xmax: xmax_now.clone(),
                xip: xip_now.clone(),
                max_id: i64::MAX,
            },
        );
        let mut total = 0usize;
        let mut max_id = cursor.max_id;
        // First the rows up to the previous highest id of transactions the previous read did
        // not see, then every row above that id this snapshot sees; each in id order, by page.
        for (part, start) in [(Part::InFlight, 0), (Part::Above, cursor.max_id)] {
            let mut after = start;
            loop {
                let rows = fetch_page(&mut tx, part, cursor, after).await?;
                let n = rows.len();
                after = self
                    .deliver(
                        &self.router,
                        rows,
                        &TableSights::default(),
                        &mut max_id,
                        routed,
                        span.seq,
                    )
                    .await?
                    .0
                    .unwrap_or(after);
                total += n;
                if n < PAGE_ROWS as usize {
                    break;
                }
                // A long read keeps this node's recorded position fresh (at the cursor it
                // started from), so the pruner never takes it for gone mid-read.
                if self.position.due() {
                    self.report_position(cursor).await;
                }
            }
        }
        tx.commit().await?;
        self.advance(cursor, xmax_now, xip_now, max_id, total, routed);
        self.spans.complete(span.seq);
        Ok(total)
    }

    /// The usual read, in one statement (one snapshot, one round trip): the snapshot and both
    /// parts, each up to a page. `None` when a part fills its page: nothing was routed, and the
    /// paged read in a repeatable-read transaction takes over.
    async fn read_at_once(
        &self,
        cursor: &mut Cursor,
        routed: &mut std::collections::HashSet<i64>,
    ) -> Result<Option<usize>, Error> {
        let Some(AtOnce {
            snapshot,
            changes,
            sights,
        }) = fetch_at_once(&self.pool, cursor, self.visibility.roles(), &self.sight).await?
        else {
            return Ok(None);
        };
        let (xmax_now, xip_now) = parse_snapshot(&snapshot);
        let mut max_id = cursor.max_id;
        let total = changes.len();
        let span = self.spans.begin(
            cursor,
            &Cursor {
                xmax: xmax_now.clone(),
                xip: xip_now.clone(),
                max_id: i64::MAX,
            },
        );
        self.deliver(
            &self.router,
            changes,
            &sights,
            &mut max_id,
            routed,
            span.seq,
        )
        .await?;
        self.advance(cursor, xmax_now, xip_now, max_id, total, routed);
        self.spans.complete(span.seq);
        Ok(Some(total))
    }

    /// Moves the cursor past a completed read and counts it.
    fn advance(
        &self,
        cursor: &mut Cursor,
        xmax: String,
        xip: Vec<String>,
        max_id: i64,
        total: usize,
        routed: &mut std::collections::HashSet<i64>,
    ) {
        *cursor = Cursor { xmax, xip, max_id };
        routed.clear();
        self.status.reads.fetch_add(1, Ordering::Relaxed);
        self.status.rows.fetch_add(total as u64, Ordering::Relaxed);
        self.status
            .last_id
            .store(u64::try_from(max_id).unwrap_or(0), Ordering::Relaxed);
        if total > 0 {
            metrics::counter!("gateway_listener_changes_total").increment(total as u64);
        }
    }

    /// Records the read position; tells every subscriber when changes were pruned before
    /// this node read them.
    async fn report_position(&self, cursor: &Cursor) {
        let xmin = maintenance::snapshot_xmin(&cursor.xmax, &cursor.xip);
        match self.position.report(cursor.max_id, xmin).await {
            Ok(None) => {}
            Ok(Some(gap)) => {
                tracing::warn!(
                    pruned_id = gap.pruned_id,
                    read_id = gap.read_id,
                    "changes were pruned before this node read them"
                );
                metrics::counter!("gateway_capture_gaps_total").increment(1);
                let told = self.router.notify_all(|name| {
                    serde_json::json!({"extension": "postgres_changes", "status": "error",
                        "message": "ChangesMissed: changes were pruned before this node read them; \
                                    reload the data you show",
                        "channel": name})
                    .to_string()
                });
                if let Some(registry) = &self.audit {
                    let detail = serde_json::json!({"pruned_id": gap.pruned_id,
                        "read_id": gap.read_id, "channels_told": told});
                    registry.audit("changes_missed", None, None, detail);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot record the read position"),
        }
    }

    /// Decodes one page, asks row-level security about it once (where `sights`, the read's
    /// answers, do not decide), and routes it through `router` (skipping ids in `routed`,
    /// adding the ones it routes), its frames stamped with span `seq`; returns its last id and
    /// the frames queued.
    pub(super) async fn deliver(
        &self,
        router: &Router,
        rows: Vec<PgRow>,
        sights: &TableSights,
        max_id: &mut i64,
        routed: &mut std::collections::HashSet<i64>,
        seq: u64,
    ) -> Result<(Option<i64>, usize), Error> {
        let mut last = None;
        let mut events = Vec::with_capacity(rows.len());
        let mut taken = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            last = Some(id);
            *max_id = (*max_id).max(id);
            if !routed.insert(id) {
                continue; // routed by an attempt that failed later
            }
            taken.push(id);
            match self.event(&row, id).await {
                Ok(Some(mut event)) => {
                    event.seq = seq;
                    events.push(event);
                }
                Ok(None) => {}
                Err(e) => {
                    // The database is unreachable, not the row bad: the read is retried, and
                    // this page's rows with it.
                    for id in &taken {
                        routed.remove(id);
                    }
                    return Err(e);
                }
            }
        }
        // The claim sets subscribed to a table are gathered once per table of the page, not
        // once per change (it walks the table's channels).
        let mut by_table: std::collections::HashMap<u32, Vec<ClaimSet>> =
            std::collections::HashMap::new();
        let decisions = self
            .visibility
            .decide(&events, sights, |event| {
                by_table
                    .entry(event.table.relid)
                    .or_insert_with(|| router.claim_sets(event))
                    .clone()
            })
            .await;
        // Writers are woken once per page (and every so many deliveries within a big one), so
        // a writer that keeps up writes all of a page's frames for its socket in one flush.
        let mut wakes = Wakes::default();
        let mut since_wake = 0usize;
        let mut queued = 0usize;
        for (i, event) in events.iter().enumerate() {
            let routed = router.route(
                event,
                decisions.sight(i),
                self.settings.max_change_bytes,
                &mut wakes,
            );
            since_wake += routed.delivered;
            queued += routed.delivered;
            if since_wake >= WAKE_EVERY_DELIVERIES {
                wakes.wake_all();
                since_wake = 0;
            }
        }
        wakes.wake_all();
        Ok((last, queued))
    }

    /// The event to route for outbox row `id`: the change, or an error entry when the row
    /// cannot be delivered (counted and audited); `None` for a table dropped since. `Err` only
    /// when the database cannot be reached, which a later read retries.
    async fn event(&self, row: &PgRow, id: i64) -> Result<Option<ChangeEvent>, Error> {
        let relid = row
            .try_get::<i64, _>("relid")
            .ok()
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let change = match read_row(row, id, relid) {
            Ok(change) => change,
            Err(e) => {
                let change = ChangeRow {
                    id,
                    captured_at: row.try_get("captured_at").unwrap_or_else(|_| Utc::now()),
                    relid,
                    op: row.try_get("op").unwrap_or_default(),
                    record: None,
                    old_record: None,
                };
                return self
                    .undeliverable(&change, format!("unreadable row: {e}"))
                    .await;
            }
        };
        let table = match self.catalog.table(relid).await {
            Ok(Some(table)) => table,
            Ok(None) => {
                tracing::debug!(relid, "change of a dropped table skipped");
                return Ok(None);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                return self
                    .undeliverable(
                        &change,
                        format!("table description: {}", crate::error::chain(&e)),
                    )
                    .await
            }
        };
        let mut decoded = decode::decode(change.clone(), Arc::clone(&table));
        if let Ok(event) = &decoded {
            if !fits(&table, event.record_raw.as_ref().or(event.old_raw.as_ref())) {
                // A column was added or dropped since the table was cached.
                match self.catalog.refresh(relid).await {
                    Ok(Some(fresh)) => decoded = decode::decode(change.clone(), fresh),
                    Ok(None) => {}
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "cannot refresh a table")
                    }
                }
            }
        }
        match decoded {
            Ok(event) => Ok(Some(event)),
            Err(e) => self.undeliverable(&change, e.to_string()).await,
        }
    }

    /// Skips `change` as undeliverable: counts it, audits it, and returns the error entry its
    /// subscribers get (none when its table is unknown).
    async fn undeliverable(
        &self,
        change: &ChangeRow,
        reason: String,
    ) -> Result<Option<ChangeEvent>, Error> {
        metrics::counter!("gateway_capture_rows_failed_total").increment(1);
        metrics::counter!("gateway_decode_errors_total").increment(1);
        let table = match self.catalog.table(change.relid).await {
            Ok(table) => table,
            Err(e) if e.is_transient() => return Err(e),
            Err(_) => None,
        };
        tracing::warn!(
            id = change.id,
            relid = change.relid,
            reason = %reason,
            "undeliverable outbox row skipped"
        );
        if let Some(audit) = &self.audit {
            audit.audit(
                "change_undeliverable",
                None,
                None,
                serde_json::json!({
                    "id": change.id,
                    "relid": change.relid,
                    "schema": table.as_ref().map(|t| t.schema.clone()),
                    "table": table.as_ref().map(|t| t.name.clone()),
                    "op": crate::change::Op::parse(&change.op)
                        .map_or_else(|| change.op.clone(), |op| op.as_str().to_owned()),
                    "reason": reason,
                }),
            );
        }
        Ok(table.map(|table| {
            decode::undeliverable(change, table, format!("{UNDELIVERABLE}: {reason}"))
        }))
    }
}

/// The listener's pool of one connection. A connection given back is closed, never reused: the
/// listener gives it back only when it counts it as lost, and its session may still hold the
/// bell's rest (advisory locks survive `UNLISTEN`), which a reused session would keep after the
/// node gave the rest back.
fn listen_pool(url: &str) -> Result<PgPool, Error> {
    let options = crate::pg::connect_options(url, APPLICATION_NAME)?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .after_release(|_, _| Box::pin(async { Ok(false) }))
        .connect_lazy_with(options))
}

async fn connect_listener(pool: &PgPool, bus_channels: &[String]) -> Result<PgListener, Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is reported (`Ok(None)`) rather than re-established inside `try_recv`:
    // the caller's other select arms may cancel that future mid-reconnect and lose the gap.
    listener.eager_reconnect(false);
    listener.listen(BELL_CHANNEL).await?;
    for channel in bus_channels {
        listener.listen(channel).await?;
    }
    Ok(listener)
}

/// Waits for the next notification: `Ok(Some)` one arrived; `Ok(None)` or `Err` the connection
/// is gone. Pends forever without a listener.
async fn recv(
    listener: &mut Option<PgListener>,
) -> Result<Option<sqlx::postgres::PgNotification>, sqlx::Error> {
    match listener.as_mut() {
        Some(l) => l.try_recv().await,
        None => std::future::pending().await,
    }
}
