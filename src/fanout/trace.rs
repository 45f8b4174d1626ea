//! Delivery diagnostics of Postgres Changes: "I wrote it, why did my client not get it?"
//!
//! The router hands the [`Recorder`] what it did with each change, at a few call sites: a
//! [`Record`] counts the channels that looked at the change and those row-level security hid
//! it from, and notes each channel whose queue took a frame (or refused it). The recorder keeps
//! the last `depth` changes of every table in a bounded ring ([`Entry`]): the change's id,
//! operation and times, its counts (subscribers, delivered, error entries, filtered, refused,
//! dropped), the registrations that got a frame or whose queue refused one, and the row-level
//! security decisions of the change (kept by reference, not copied). Filters are not evaluated
//! twice: which subscriber was filtered out is found by elimination when someone asks
//! ([`super::explain`]).
//!
//! Every channel registration gets a number and the sequence number of the first change routed
//! after it ([`Tag`]), so an answer can tell "not subscribed yet" from "filtered". Channels that
//! leave are remembered (their subscriptions and claims, not their queue), so a slow consumer
//! that was closed can still be told "dropped": while the ring of a table they subscribed to
//! holds a change routed while they were subscribed, and at most [`MAX_DEPARTED`] of them. The
//! others can no longer be part of an answer and are forgotten: a node whose connections come
//! and go keeps none it has no use for.
//!
//! Costs on the routing path: one counter per subscriber looked at, one vector push per frame
//! queued, and per change one short-lived lock to append the entry; at most every
//! [`PASS_EVERY_MS`], a pass over the departed channels against the rings (each departure makes
//! one as well). With a depth of 0 the recorder keeps nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use uuid::Uuid;

use super::explain::{self, Subscriber};
use super::router::PgChannel;
use super::visibility::{Kept, Sight};
use crate::change::{ChangeEvent, Op};
use crate::pg::catalog::TableInfo;

/// Channels that left, remembered for explanations; the oldest are forgotten first.
const MAX_DEPARTED: usize = 4096;

/// What the recorder knows of one channel registration.
#[derive(Debug, Default)]
pub struct Tag {
    /// The connection (the registry's `connection_id`); nil when not given.
    pub(super) connection_id: Uuid,
    /// Registration number (from 1), set when the channel is registered.
    pub(super) reg: AtomicU64,
    /// Sequence number of the first change routed after registration.
    pub(super) since: AtomicU64,
    /// Frames queued to the channel so far.
    delivered: AtomicU64,
}

impl PgChannel {
    /// This channel belongs to connection `connection_id` (the registry's id), for diagnostics.
    pub fn for_connection(mut self, connection_id: Uuid) -> PgChannel {
        self.tag.connection_id = connection_id;
        self
    }

    /// Frames queued to this channel so far.
    pub fn delivered(&self) -> u64 {
        self.tag.delivered.load(Ordering::Relaxed)
    }
}

/// What happened to one change, in numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Channels subscribed to the change's table (any event, any filter).
    pub subscribers: u64,
    /// Channels whose queue took the change.
    pub delivered: u64,
    /// Channels whose queue took an error entry in its place.
    pub error_entries: u64,
    /// Channels none of whose subscriptions matched (another event, or the filter).
    pub filtered: u64,
    /// Channels row-level security hid the change from.
    pub refused: u64,
    /// Channels whose queue refused the frame (slow consumers, closing connections).
    pub dropped: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.subscribers += other.subscribers;
        self.delivered += other.delivered;
        self.error_entries += other.error_entries;
        self.filtered += other.filtered;
        self.refused += other.refused;
        self.dropped += other.dropped;
    }
}

/// One routed change, as the recorder keeps it.
#[derive(Debug)]
pub struct Entry {
    /// The router's sequence number of the change.
    pub seq: u64,
    /// Outbox id.
    pub id: i64,
    /// The table.
    pub table: Arc<TableInfo>,
    /// The operation.
    pub op: Op,
    /// `commit_timestamp` as delivered.
    pub commit_timestamp: String,
    /// When it was captured (in the writer's transaction).
    pub captured_at: SystemTime,
    /// When it was routed.
    pub routed_at: SystemTime,
    /// Why it could not be delivered at all, if so (its subscribers got error entries).
    pub undeliverable: Option<String>,
    /// What happened to it.
    pub counts: Counts,
    /// Registrations whose queue took the change, sorted.
    pub(super) got: Vec<u64>,
    /// Registrations whose queue took an error entry, sorted.
    pub(super) errors: Vec<u64>,
    /// Registrations whose queue refused a frame, sorted.
    pub(super) dropped: Vec<u64>,
    /// The change's row-level security decisions.
    pub(super) sight: Kept,
}

/// What one table's changes did.
#[derive(Debug, Default)]
struct Trail {
    ring: VecDeque<Arc<Entry>>,
    totals: Counts,
    changes: u64,
}

/// A table's recent changes and totals since the node started.
#[derive(Debug, Clone)]
pub struct TableTrail {
    /// Changes of the table routed by this node.
    pub changes: u64,
    /// Their counts, summed.
    pub totals: Counts,
    /// The newest changes, newest first.
    pub recent: Vec<Arc<Entry>>,
}

/// What routing one change did, noted while it is routed; handed back to
/// [`Recorder::finish`].
#[derive(Debug)]
pub struct Record<'a> {
    /// The recorder's count of changes in flight, which this record is part of until it is
    /// dropped (finished, or a routing that panicked); `None` when nothing is kept.
    in_flight: Option<&'a AtomicU64>,
    seq: u64,
    subscribers: u64,
    hidden: u64,
    got: Vec<u64>,
    errors: Vec<u64>,
    dropped: Vec<u64>,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Record<'_> {
    /// A channel subscribed to the change's table looked at it.
    pub fn subscriber(&mut self) {
        self.subscribers += 1;
    }

    /// Row-level security hid the change from one channel.
    pub fn hidden(&mut self) {
        self.hidden += 1;
    }

    /// A frame was pushed to `channel` (an error entry or the change) and its queue took it
    /// (`queued`) or refused it.
    pub fn pushed(&mut self, channel: &PgChannel, error_entry: bool, queued: bool) {
        if queued {
            channel.tag.delivered.fetch_add(1, Ordering::Relaxed);
        }
        if self.in_flight.is_none() {
            return;
        }
        let reg = channel.tag.reg.load(Ordering::Relaxed);
        match (queued, error_entry) {
            (false, _) => self.dropped.push(reg),
            (true, true) => self.errors.push(reg),
            (true, false) => self.got.push(reg),
        }
    }
}

/// The recent changes of every table and what became of them; see the module header.
#[derive(Debug)]
pub struct Recorder {
    /// Changes kept per table (0: nothing is kept).
    depth: usize,
    /// Changes routed so far: the next change's sequence number.
    seq: AtomicU64,
    /// Registrations so far.
    regs: AtomicU64,
    /// By table (its `relid`: no allocation to find it).
    tables: Mutex<HashMap<u32, Trail>>,
    departed: Mutex<VecDeque<Subscriber>>,
    /// Changes begun and not finished yet: their entries are not in the rings, so while any
    /// is in flight, what a departed channel may still be needed for is not known.
    in_flight: AtomicU64,
    /// When the recorder was made, and when (milliseconds after) routing last looked at the
    /// departed list: see [`Recorder::pass_due`].
    started: Instant,
    last_pass: AtomicU64,
    pass_every_ms: u64,
}

/// How often, at most, the routing path looks for departed channels to forget, in ms.
const PASS_EVERY_MS: u64 = 250;

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new(DEFAULT_DEPTH)
    }
}

/// Changes kept per table unless the settings say otherwise.
pub const DEFAULT_DEPTH: usize = 64;

impl Recorder {
    /// A recorder keeping the last `depth` changes of each table (0: none).
    pub fn new(depth: usize) -> Recorder {
        Recorder {
            depth,
            seq: AtomicU64::new(0),
            regs: AtomicU64::new(0),
            tables: Mutex::default(),
            departed: Mutex::default(),
            in_flight: AtomicU64::new(0),
            started: Instant::now(),
            last_pass: AtomicU64::new(0),
            pass_every_ms: PASS_EVERY_MS,
        }
    }

    /// Changes kept per table.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Numbers `channel`'s registration; called as it is registered with the router.
    pub fn registered(&self, channel: &PgChannel) {
        let reg = self.regs.fetch_add(1, Ordering::Relaxed) + 1;
        channel.tag.reg.store(reg, Ordering::Relaxed);
        channel
            .tag
            .since
            .store(self.seq.load(Ordering::Acquire), Ordering::Relaxed);
    }

    /// Remembers a channel that left the router (or was replaced), when there is one.
    pub fn departed(&self, channel: Option<Arc<PgChannel>>) {
        let Some(channel) = channel else {
            return;
        };
        if self.depth == 0 {
            return;
        }
        let until = self.seq.load(Ordering::SeqCst);
        let mut departed = lock(&self.departed);
        if departed.len() >= MAX_DEPARTED {
            departed.pop_front();
        }
        departed.push_back(Subscriber::of(&channel, Some(until)));
        self.forget_departed(&mut departed);
    }

    /// Forgets the departed channels no kept change can be explained with: a channel is kept
    /// while the ring of a table it subscribed to holds a change routed while it was
    /// subscribed (all are forgotten when the rings hold nothing). Does nothing while a change
    /// is being routed (its entry, which may need them, is not kept yet); the next change's
    /// end or the next departure does it then.
    ///
    /// Called with the list locked, and it stays locked throughout (the tables are locked
    /// inside it, never the other way round): a channel that leaves meanwhile waits, and is
    /// judged by the next pass.
    fn forget_departed(&self, departed: &mut VecDeque<Subscriber>) {
        if departed.is_empty() {
            return;
        }
        // With none in flight, every change begun so far is finished and its entry is in its
        // ring (or already left it). A change begun later is counted in flight after this
        // load, so it is numbered after every channel on the list had left: it needs none.
        if self.in_flight.load(Ordering::SeqCst) != 0 {
            return;
        }
        // Each ring in routing order (one listener routes one change at a time), so its
        // front and back are its oldest and newest change.
        let kept: Vec<(Arc<TableInfo>, u64, u64)> = lock(&self.tables)
            .values()
            .filter_map(|trail| {
                let (front, back) = (trail.ring.front()?, trail.ring.back()?);
                Some((Arc::clone(&back.table), front.seq, back.seq))
            })
            .collect();
        // A channel was subscribed to the changes numbered from its `since` to below its
        // `until`: it is needed while that overlaps a ring of a table it subscribed to.
        departed.retain(|s| {
            let until = s.until.unwrap_or(u64::MAX);
            kept.iter().any(|(table, oldest, newest)| {
                s.since <= *newest
                    && until > *oldest
                    && s.subs.iter().any(|sub| explain::covers_table(sub, table))
            })
        });
    }

    /// Whether the routing path should look at the departed list now: at most once every
    /// [`PASS_EVERY_MS`] (a pass scans the list against every ring; departures do it on their own).
    fn pass_due(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_pass.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.pass_every_ms
            && self
                .last_pass
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Starts the record of the next change.
    pub fn begin(&self) -> Record<'_> {
        let in_flight = (self.depth > 0).then_some(&self.in_flight);
        if let Some(in_flight) = in_flight {
            // Counted before the number is taken: see `forget_departed`.
            in_flight.fetch_add(1, Ordering::SeqCst);
        }
        Record {
            in_flight,
            seq: self.seq.fetch_add(1, Ordering::SeqCst),
            subscribers: 0,
            hidden: 0,
            got: Vec::new(),
            errors: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Keeps what routing `change` did; `hidden` more channels were hidden by group.
    pub fn finish(
        &self,
        mut record: Record<'_>,
        change: &ChangeEvent,
        sight: Sight<'_>,
        hidden: u64,
    ) {
        if record.in_flight.is_none() {
            return;
        }
        for list in [&mut record.got, &mut record.errors, &mut record.dropped] {
            list.sort_unstable();
            list.dedup();
        }
        let refused = record.hidden + hidden;
        let reached = union_len(&record.got, &record.errors, &record.dropped);
        let counts = Counts {
            subscribers: record.subscribers,
            delivered: record.got.len() as u64,
            error_entries: record.errors.len() as u64,
            filtered: record.subscribers.saturating_sub(reached + refused),
            refused,
            dropped: record.dropped.len() as u64,
        };
        let entry = Arc::new(Entry {
            seq: record.seq,
            id: change.id,
            table: Arc::clone(&change.table),
            op: change.op,
            commit_timestamp: change.commit_timestamp.clone(),
            captured_at: change.captured_at,
            routed_at: SystemTime::now(),
            undeliverable: change.undeliverable.clone(),
            counts,
            got: std::mem::take(&mut record.got),
            errors: std::mem::take(&mut record.errors),
            dropped: std::mem::take(&mut record.dropped),
            sight: sight.keep(),
        });
        {
            let mut tables = lock(&self.tables);
            let trail = tables.entry(change.table.relid).or_default();
            if trail.ring.len() >= self.depth {
                trail.ring.pop_front();
            }
            trail.ring.push_back(entry);
            trail.totals.add(&counts);
            trail.changes += 1;
        }
        // Out of flight after its entry is kept: see `forget_departed`.
        drop(record);
        if self.pass_due() {
            self.forget_departed(&mut lock(&self.departed));
        }
    }

    /// The recent changes of `schema.table`, if this node routed any.
    pub fn trail(&self, schema: &str, table: &str) -> Option<TableTrail> {
        let tables = lock(&self.tables);
        // The newest trail of that name: a table dropped and created again has a new relid.
        let trail = tables
            .values()
            .filter(|t| {
                t.ring
                    .back()
                    .is_some_and(|e| e.table.schema == schema && e.table.name == table)
            })
            .max_by_key(|t| t.ring.back().map_or(0, |e| e.seq))?;
        Some(TableTrail {
            changes: trail.changes,
            totals: trail.totals,
            recent: trail.ring.iter().rev().cloned().collect(),
        })
    }

    /// The kept change of outbox id `id`, if it is still in its table's ring.
    pub fn find(&self, id: i64) -> Option<Arc<Entry>> {
        let tables = lock(&self.tables);
        tables
            .values()
            .find_map(|trail| trail.ring.iter().rev().find(|e| e.id == id).cloned())
    }

    /// The channels that left and are still remembered.
    pub(super) fn departed_subscribers(&self) -> Vec<Subscriber> {
        lock(&self.departed).iter().cloned().collect()
    }
}

/// How many distinct values three sorted, deduplicated lists hold together (no allocation).
fn union_len(a: &[u64], b: &[u64], c: &[u64]) -> u64 {
    let (mut i, mut j, mut k, mut n) = (0, 0, 0, 0u64);
    loop {
        let next = [a.get(i), b.get(j), c.get(k)]
            .into_iter()
            .flatten()
            .min()
            .copied();
        let Some(v) = next else {
            return n;
        };
        n += 1;
        i += usize::from(a.get(i) == Some(&v));
        j += usize::from(b.get(j) == Some(&v));
        k += usize::from(c.get(k) == Some(&v));
    }
}

// Poisoning only means another thread panicked mid-update; the rings stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::explain::tests::{change, join, sub};
    use crate::fanout::explain::{Outcome, Who};
    use crate::fanout::router::{ChannelKey, Router, Wakes};
    use crate::fanout::visibility::Sight;

    fn leave(router: &Router, conn: u64, name: &str) {
        router.unsubscribe(&ChannelKey {
            conn,
            topic: Arc::from(format!("realtime:{name}")),
        });
    }

    /// A recorder whose routing path looks at the departed list after every change.
    fn every_change(mut recorder: Recorder) -> Recorder {
        recorder.pass_every_ms = 0;
        recorder
    }

    fn departed(router: &Router) -> Vec<String> {
        let mut names: Vec<String> = router
            .trace
            .departed_subscribers()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        names.sort();
        names
    }

    /// A channel that left is remembered while a kept change was routed when it was
    /// subscribed, and forgotten once the rings have moved past it; with no change kept, a
    /// channel that leaves is not remembered at all (connections coming and going on a quiet
    /// node keep nothing).
    #[test]
    fn departed_channels_are_kept_only_while_a_kept_change_needs_them() {
        let mut router = Router::new();
        router.trace = every_change(Recorder::new(2));
        let _quiet = join(&router, 1, "quiet", vec![sub("*", None)], 8);
        leave(&router, 1, "quiet");
        assert!(
            departed(&router).is_empty(),
            "no change kept: nothing to explain"
        );

        let _a = join(&router, 2, "a", vec![sub("*", None)], 8);
        let _b = join(&router, 3, "b", vec![sub("*", None)], 8);
        let mut wakes = Wakes::default();
        router.route(&change(1), Sight::everything(), 1 << 20, &mut wakes);
        leave(&router, 2, "a");
        router.route(&change(2), Sight::everything(), 1 << 20, &mut wakes);
        leave(&router, 3, "b");
        assert_eq!(departed(&router), ["a", "b"]);
        let who = Who {
            connection_id: Some(Uuid::from_u128(2)),
            channel: Some("a"),
        };
        let (_, explained) = router.explain(1, who).unwrap();
        assert_eq!(explained[0].outcome, Outcome::Delivered);

        // Change 1 leaves the ring of two: "a" got only change 1, "b" got change 2 as well.
        router.route(&change(3), Sight::everything(), 1 << 20, &mut wakes);
        assert_eq!(departed(&router), ["b"]);
        router.route(&change(4), Sight::everything(), 1 << 20, &mut wakes);
        assert!(departed(&router).is_empty());
    }

    /// A channel that leaves while a change is being routed is kept for that change, whose
    /// entry is not in the ring yet.
    #[test]
    fn a_change_in_flight_keeps_the_channels_that_leave_under_it() {
        let mut router = Router::new();
        router.trace = Recorder::new(4);
        let _a = join(&router, 1, "a", vec![sub("*", None)], 8);
        let record = router.trace.begin();
        leave(&router, 1, "a");
        assert_eq!(departed(&router), ["a"]);
        router
            .trace
            .finish(record, &change(1), Sight::everything(), 0);
        assert_eq!(
            departed(&router),
            ["a"],
            "change 1 was routed while it was subscribed"
        );
        let who = Who {
            connection_id: Some(Uuid::from_u128(1)),
            channel: Some("a"),
        };
        let (_, explained) = router.explain(1, who).unwrap();
        assert_eq!(explained.len(), 1);

        // A record dropped unfinished (a routing that panicked) is out of flight as well.
        let _b = join(&router, 2, "b", vec![sub("*", None)], 8);
        drop(router.trace.begin());
        leave(&router, 2, "b");
        assert_eq!(departed(&router), ["a"], "b left after every kept change");
    }

    /// Another table's old changes keep no channel that was not subscribed to it; a departure
    /// looks at the list whenever the routing path does not (here: never).
    #[test]
    fn a_quiet_table_keeps_only_its_own_subscribers() {
        let mut router = Router::new();
        let mut recorder = Recorder::new(1);
        recorder.pass_every_ms = u64::MAX;
        router.trace = recorder;
        let quiet = |id| {
            let mut c = change(id);
            c.table = Arc::new(TableInfo {
                relid: 2,
                name: "quiet".into(),
                ..(*c.table).clone()
            });
            c
        };
        let mut all_tables = sub("*", None);
        all_tables.table = "*".into();
        let _q = join(&router, 1, "both", vec![all_tables], 8);
        let _a = join(&router, 2, "items", vec![sub("*", None)], 8);
        let mut wakes = Wakes::default();
        router.route(&quiet(1), Sight::everything(), 1 << 20, &mut wakes);
        router.route(&change(2), Sight::everything(), 1 << 20, &mut wakes);
        leave(&router, 1, "both");
        leave(&router, 2, "items");
        assert_eq!(departed(&router), ["both", "items"]);
        // Change 2 leaves the items ring; the quiet table's change 1 stays.
        router.route(&change(3), Sight::everything(), 1 << 20, &mut wakes);
        assert_eq!(departed(&router).len(), 2, "the routing path did not look");
        let _c = join(&router, 3, "c", vec![sub("*", None)], 8);
        leave(&router, 3, "c");
        assert_eq!(
            departed(&router),
            ["both"],
            "subscribed when the quiet table's kept change was routed"
        );
    }

    #[test]
    fn union_len_counts_distinct_values() {
        assert_eq!(union_len(&[], &[], &[]), 0);
        assert_eq!(union_len(&[1, 3, 5], &[3, 4], &[5, 9]), 5);
        assert_eq!(union_len(&[2], &[2], &[2]), 1);
    }

    /// With a depth of 0 nothing is kept, and the ring keeps only the newest `depth` changes.
    #[test]
    fn the_ring_is_bounded() {
        let mut router = Router::new();
        router.trace = Recorder::new(2);
        let _a = join(&router, 1, "all", vec![sub("*", None)], 8);
        let mut wakes = Wakes::default();
        for id in 1..=5 {
            router.route(&change(id), Sight::everything(), 1 << 20, &mut wakes);
        }
        let trail = router.trace.trail("public", "items").unwrap();
        let ids: Vec<i64> = trail.recent.iter().map(|e| e.id).collect();
        assert_eq!(ids, [5, 4]);
        assert_eq!(trail.changes, 5);
        let mut off = Router::new();
        off.trace = Recorder::new(0);
        off.route(&change(1), Sight::everything(), 1 << 20, &mut wakes);
        assert!(off.trace.trail("public", "items").is_none());
    }
}
