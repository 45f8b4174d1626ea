//! Channels of resumable connections go live at a read boundary of the listener, after
//! catching up on what their previous connection missed.
//!
//! A channel of a connection that can resume is not registered with the router by its session
//! but by the listener, between two reads: at that moment the listener's cursor `C` is exactly
//! where live routing continues. When the channel's previous connection left a [`Position`]
//! `P` (README, "Resuming after a reconnect"), the listener first routes, to this channel
//! alone, the changes `P` had not handled and `C` sees, in two spans: the rest of `P`'s own span
//! (visible in `P.after`, not in `P.before`, ids above `P.last_id`), then those visible in `C`
//! and not in `P.after`, each in id order like any read. Then the channel joins the router and
//! every later read reaches it: nothing committed in between is missed or delivered twice.
//!
//! Catching up runs in the listener's task, so live routing waits for it; its cost is one
//! index scan of the outbox rows since `P` per resumed channel, bounded by the resume window.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use sqlx::postgres::PgRow;

use super::listener::{Listener, PAGE_ROWS};
use super::outbox::Cursor;
use crate::fanout::router::{PgChannel, Router};
use crate::fanout::table_sight::TableSights;
use crate::outbound::Frame;
use crate::pg::Error;
use crate::position::{Position, Snapshot, Stamp, THROUGH};

/// A request not taken yet.
pub const PENDING: u8 = 0;
/// The listener took it.
pub const TAKEN: u8 = 1;
/// The session stopped waiting: the listener leaves it.
pub const ABANDONED: u8 = 2;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Live from now (there was no position to continue from).
    Live,
    /// Caught up (`changes` frames queued), then live.
    Resumed {
        /// Frames of missed changes queued.
        changes: usize,
    },
    /// The catch-up failed (the database); live from now.
    Failed,
}

/// Makes `channel` live, after catching up from `from`.
pub struct Request {
    /// The channel, numbered within its connection.
    pub channel: Arc<PgChannel>,
    /// Where its previous connection stopped.
    pub from: Option<Position>,
    /// [`PENDING`], [`TAKEN`] or [`ABANDONED`], so that exactly one of the listener and the
    /// session registers the channel.
    pub state: Arc<AtomicU8>,
    /// The `system` frame announcing the outcome, queued before any live change.
    pub system: Box<dyn FnOnce(Outcome) -> Frame + Send>,
    /// Told the outcome once the channel is live.
    pub done: tokio::sync::oneshot::Sender<Outcome>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("channel", &self.channel.key)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// The next request; never resolves without a receiver.
pub(super) async fn next(
    requests: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Request>>,
) -> Option<Request> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Listener {
    /// Catches `request`'s channel up to `cursor` and makes it live (between two reads).
    pub(super) async fn go_live(&self, cursor: &Cursor, request: Option<Request>) {
        let Some(request) = request else {
            return;
        };
        let taken =
            request
                .state
                .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire);
        if taken.is_err() {
            return;
        }
        let Some(current) = self.spans.get(self.spans.completed()) else {
            return;
        };
        let channel = &request.channel;
        let outcome = match &request.from {
            None => Outcome::Live,
            Some(from) => match self.catch_up(channel, from, cursor).await {
                Ok(changes) => Outcome::Resumed { changes },
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot catch a resumed channel up");
                    metrics::counter!("gateway_resume_failed_total").increment(1);
                    Outcome::Failed
                }
            },
        };
        // The channel is at the cursor: the marker, the outcome, then live changes.
        let marker = Frame::marker(Stamp {
            seq: current.seq,
            id: THROUGH,
            chan: channel.chan,
        });
        // A full queue closes the connection as a slow consumer; nothing more to do here.
        let _queued = channel.outbound.push(marker);
        let _queued = channel.outbound.push((request.system)(outcome));
        self.router.subscribe(Arc::clone(channel));
        if let Outcome::Resumed { changes } = outcome {
            metrics::counter!("gateway_resume_changes_total").increment(changes as u64);
        }
        let _told = request.done.send(outcome);
    }

    /// Routes the changes between `from` and `cursor` to `channel` alone; returns the frames
    /// queued.
    async fn catch_up(
        &self,
        channel: &Arc<PgChannel>,
        from: &Position,
        cursor: &Cursor,
    ) -> Result<usize, Error> {
        let router = Router::new();
        router.subscribe(Arc::clone(channel));
        let keys = channel.table_keys();
        let (schemas, tables): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
        let mut queued = 0;
        let mut phases = Vec::with_capacity(2);
        if !from.is_whole() {
            phases.push((&from.before, &from.after, from.last_id));
        }
        phases.push((&from.after, cursor, 0));
        for (lower, upper, after) in phases {
            let span = self.spans.begin(lower, upper);
            let mut after = after.max(self.first_unseen(lower).await? - 1);
            loop {
                let rows = page(&self.pool, lower, upper, after, &schemas, &tables).await?;
                let n = rows.len();
                let mut max_id = 0;
                let mut routed = std::collections::HashSet::new();
                let (last, frames) = self
                    .deliver(
                        &router,
                        rows,
                        &TableSights::default(),
                        &mut max_id,
                        &mut routed,
                        span.seq,
                    )
                    .await?;
                queued += frames;
                match last {
                    Some(last) if n == PAGE_ROWS as usize => after = last,
                    _ => break,
                }
            }
        }
        Ok(queued)
    }

    /// The lowest outbox id `snapshot` does not see (rows below it are all visible to it).
    async fn first_unseen(&self, snapshot: &Snapshot) -> Result<i64, Error> {
        let min: Option<i64> = sqlx::query_scalar(
            "select min(id) from realtime.changes \
             where id <= $3 and (xid >= $1::text::xid8 or xid = any($2::text[]::xid8[]))",
        )
        .bind(&snapshot.xmax)
        .bind(&snapshot.xip)
        .bind(snapshot.max_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(min.unwrap_or(snapshot.max_id.saturating_add(1)).max(1))
    }
}

/// One page of the changes `upper` sees and `lower` does not, of the channel's tables, with
/// ids above `after`, in id order. A change's table is its `relid` as the catalog names it now,
/// as for live routing (a table dropped since has no name: its changes are skipped anyway).
async fn page(
    pool: &sqlx::PgPool,
    lower: &Snapshot,
    upper: &Snapshot,
    after: i64,
    schemas: &[String],
    tables: &[String],
) -> Result<Vec<PgRow>, Error> {
    Ok(sqlx::query(
        "select id, realtime.commit_time(xid, captured_at) as captured_at, \
                relid::int8 as relid, op, record::text as record, old_record::text as old_record \
         from realtime.changes c \
         where id > $1 and id <= $2 \
           and (xid >= $3::text::xid8 or xid = any($4::text[]::xid8[])) \
           and xid < $5::text::xid8 and not (xid = any($6::text[]::xid8[])) \
           and exists (select from pg_catalog.pg_class r \
                         join pg_catalog.pg_namespace n on n.oid = r.relnamespace \
                         join unnest($7::text[], $8::text[]) k(s, t) \
                           on (k.s = '*' or k.s = n.nspname) and (k.t = '*' or k.t = r.relname) \
                       where r.oid = c.relid) \
         order by id limit $9",
    )
    .bind(after)
    .bind(upper.max_id)
    .bind(&lower.xmax)
    .bind(&lower.xip)
    .bind(&upper.xmax)
    .bind(&upper.xip)
    .bind(schemas)
    .bind(tables)
    .bind(PAGE_ROWS)
    .fetch_all(pool)
    .await?)
}
