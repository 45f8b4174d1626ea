//! What a run observes: one monotonic clock shared by the writers and every client, the commit
//! instant of each written row, per-client delivery bookkeeping (lost, duplicated, out of
//! order per writer), latency histograms and a once-a-second timeline.
//!
//! Clients are many small tasks on every core: what they count on every delivery goes to
//! sharded counters ([`Sharded`]: 64 cache lines, each client adding to one), and they hand
//! latencies over in batches, so the shared histogram's lock is taken a few thousand times a
//! second at most, whatever the delivery rate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms hold, in microseconds (two minutes).
const MAX_LATENCY_US: u64 = 120_000_000;
/// Latencies a client collects before taking the histogram lock.
const BATCH_LEN: usize = 256;
/// A client hands its batch over at least this often while deliveries arrive.
const BATCH_AGE_NS: u64 = 200_000_000;
/// Distinct error texts kept; further kinds are counted under "other".
const MAX_ERROR_KINDS: usize = 64;

/// The one clock of a run: nanoseconds since the run started, from `Instant` (monotonic).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the start.
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The instant each written row's INSERT was sent and its commit returned, indexed by the
/// row's sequence `n`.
#[derive(Debug)]
pub(crate) struct CommitLog {
    /// `now_ns + 1` when row `n` committed; 0 while it has not (or its insert failed).
    committed_ns: Vec<AtomicU64>,
    /// `now_ns + 1` when row `n`'s INSERT was sent; 0 before.
    sent_ns: Vec<AtomicU64>,
}

impl CommitLog {
    /// Room for `capacity` rows.
    pub(crate) fn new(capacity: u64) -> CommitLog {
        let len = usize::try_from(capacity).unwrap_or(usize::MAX);
        CommitLog {
            committed_ns: (0..len).map(|_| AtomicU64::new(0)).collect(),
            sent_ns: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Rows the log has room for.
    pub(crate) fn capacity(&self) -> u64 {
        self.committed_ns.len() as u64
    }

    /// Records that row `n`'s commit returned at `at_ns`.
    pub(crate) fn committed(&self, n: u64, at_ns: u64) {
        if let Some(slot) = usize::try_from(n)
            .ok()
            .and_then(|i| self.committed_ns.get(i))
        {
            slot.store(at_ns.saturating_add(1), Ordering::Release);
        }
    }

    /// Records that row `n`'s INSERT was sent at `at_ns`.
    pub(crate) fn sent(&self, n: u64, at_ns: u64) {
        if let Some(slot) = usize::try_from(n).ok().and_then(|i| self.sent_ns.get(i)) {
            slot.store(at_ns.saturating_add(1), Ordering::Release);
        }
    }

    /// When row `n`'s INSERT was sent, if it was.
    pub(crate) fn sent_ns(&self, n: u64) -> Option<u64> {
        let slot = self.sent_ns.get(usize::try_from(n).ok()?)?;
        slot.load(Ordering::Acquire).checked_sub(1)
    }

    /// When row `n`'s commit returned, if it has.
    pub(crate) fn commit_ns(&self, n: u64) -> Option<u64> {
        let slot = self.committed_ns.get(usize::try_from(n).ok()?)?;
        slot.load(Ordering::Acquire).checked_sub(1)
    }
}

/// Counters every client task adds to.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connection attempts started.
    pub(crate) attempted: AtomicU64,
    /// WebSocket handshakes that succeeded.
    pub(crate) connected: AtomicU64,
    /// Sockets open now.
    pub(crate) open: AtomicU64,
    /// Upgrades refused with an HTTP status.
    pub(crate) refused: AtomicU64,
    /// Everything else that went wrong (see the error kinds).
    pub(crate) errors: AtomicU64,
    /// Joins answered ok.
    pub(crate) joins_ok: AtomicU64,
    /// Channels whose Postgres Changes subscription was confirmed (`system` ok).
    pub(crate) subscribed: AtomicU64,
    /// Subscribed channels open now.
    pub(crate) subscribed_now: AtomicU64,
    /// Presence tracks answered ok.
    pub(crate) presence_ok: AtomicU64,
    /// Presence tracks refused (also counted in `errors`).
    pub(crate) presence_refused: AtomicU64,
    /// Presence state and diff frames received.
    pub(crate) presence_frames: AtomicU64,
    /// Heartbeats sent.
    pub(crate) heartbeats: AtomicU64,
    /// Heartbeat replies received.
    pub(crate) heartbeat_replies: AtomicU64,
    /// Heartbeats not answered before the next one was due (realtime-js would reconnect).
    pub(crate) heartbeats_missed: AtomicU64,
    /// What the clients received, counted per shard.
    pub(crate) deliveries: Deliveries,
    /// Leaves answered ok (churn).
    pub(crate) leaves_ok: AtomicU64,
    /// Connect-join-leave cycles completed (churn).
    pub(crate) cycles: AtomicU64,
}

/// Shards of a [`Sharded`] counter: more than the cores a run uses, so that client tasks on
/// different cores seldom add to the same cache line.
const SHARDS: usize = 64;

/// An atomic counter on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter every client adds to on every delivery, split in [`SHARDS`] cache lines: one
/// shared atomic would be a line bouncing between the cores a million times a second. Each
/// client adds to its own shard; readers sum them.
#[derive(Debug)]
pub(crate) struct Sharded {
    shards: Box<[Padded]>,
}

impl Default for Sharded {
    fn default() -> Sharded {
        Sharded {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }
}

impl Sharded {
    /// Adds `n` in shard `shard` (any number; taken modulo the shards).
    pub(crate) fn add(&self, shard: usize, n: u64) {
        self.shards[shard % SHARDS]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub(crate) fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Delivery counters, added to by every client on every frame.
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    /// Delivery frames of this run received, duplicates included.
    pub(crate) received: Sharded,
    /// Distinct (client, row) deliveries.
    pub(crate) unique: Sharded,
    /// Deliveries of a row the client had already received.
    pub(crate) duplicated: Sharded,
    /// Deliveries of a row older than one the client had already received from the same
    /// writer.
    pub(crate) out_of_order: Sharded,
    /// Deliveries that arrived before the writer saw their commit return (latency taken as 0).
    pub(crate) early: Sharded,
    /// Change frames that were not rows of this run (other tables, earlier runs).
    pub(crate) foreign: Sharded,
    /// Deliveries without a `commit_timestamp` string.
    pub(crate) unstamped: Sharded,
}

/// One second of the timeline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// Seconds since the run started.
    pub(crate) t_s: f64,
    /// Sockets open.
    pub(crate) open: u64,
    /// Subscribed channels open.
    pub(crate) subscribed: u64,
    /// Deliveries per second over the interval.
    pub(crate) deliveries_per_s: f64,
    /// Rows written so far.
    pub(crate) written: u64,
    /// Latency percentiles of the interval's deliveries, ms (`None` when there were none).
    pub(crate) p50_ms: Option<f64>,
    /// p95 of the interval.
    pub(crate) p95_ms: Option<f64>,
    /// p99 of the interval.
    pub(crate) p99_ms: Option<f64>,
    /// Max of the interval.
    pub(crate) max_ms: Option<f64>,
    /// Gateway resident memory, KiB.
    pub(crate) gateway_rss_kib: Option<u64>,
    /// Gateway CPU use over the interval, percent of one core.
    pub(crate) gateway_cpu_pct: Option<f64>,
    /// This process's CPU use over the interval, percent of one core.
    pub(crate) loadtest_cpu_pct: Option<f64>,
}

/// Latency histograms: the whole run and the current timeline interval, in microseconds.
#[derive(Debug)]
struct Latency {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// Everything a run records, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The run's clock.
    pub(crate) clock: Clock,
    /// Counters.
    pub(crate) counters: Counters,
    /// Rows the writer committed so far (for the timeline).
    pub(crate) written: AtomicU64,
    /// Most connections the gateway held to PostgreSQL at any sample; -1 before any.
    pg_connections_peak: AtomicI64,
    latency: Mutex<Latency>,
    errors: Mutex<BTreeMap<String, u64>>,
    timeline: Mutex<Vec<Sample>>,
}

/// An empty latency histogram (microseconds, 1 µs to two minutes, 3 significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    // Bounds and precision are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub(crate) fn new() -> Recorder {
        Recorder {
            clock: Clock::new(),
            counters: Counters::default(),
            written: AtomicU64::new(0),
            pg_connections_peak: AtomicI64::new(-1),
            latency: Mutex::new(Latency {
                total: histogram(),
                interval: histogram(),
            }),
            errors: Mutex::new(BTreeMap::new()),
            timeline: Mutex::new(Vec::new()),
        }
    }

    /// Counts an error of kind `kind` (a short fixed text, e.g. `join refused: <reason>`).
    pub(crate) fn error(&self, kind: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.note(kind);
    }

    /// Counts `kind` among the error kinds without counting an error (e.g. a refusal).
    pub(crate) fn note(&self, kind: &str) {
        let Ok(mut errors) = self.errors.lock() else {
            return;
        };
        let kind: String = kind.chars().take(160).collect();
        let key = if errors.len() >= MAX_ERROR_KINDS && !errors.contains_key(&kind) {
            "other".to_owned()
        } else {
            kind
        };
        *errors.entry(key).or_default() += 1;
    }

    /// Error kinds and their counts.
    pub(crate) fn error_kinds(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Adds a batch of latencies (microseconds).
    fn add_latencies(&self, batch: &[u64]) {
        let Ok(mut latency) = self.latency.lock() else {
            return;
        };
        for &us in batch {
            latency.total.saturating_record(us.max(1));
            latency.interval.saturating_record(us.max(1));
        }
    }

    /// The whole run's latency histogram.
    pub(crate) fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .map(|l| l.total.clone())
            .unwrap_or_else(|_| histogram())
    }

    /// Takes the interval histogram, leaving an empty one.
    pub(crate) fn take_interval(&self) -> Histogram<u64> {
        match self.latency.lock() {
            Ok(mut l) => std::mem::replace(&mut l.interval, histogram()),
            Err(_) => histogram(),
        }
    }

    /// Books a sample of the gateway's PostgreSQL connections.
    pub(crate) fn note_pg_connections(&self, n: i64) {
        self.pg_connections_peak.fetch_max(n, Ordering::Relaxed);
    }

    /// Most PostgreSQL connections the gateway held at any sample.
    pub(crate) fn pg_connections_peak(&self) -> Option<i64> {
        let n = self.pg_connections_peak.load(Ordering::Relaxed);
        (n >= 0).then_some(n)
    }

    /// Appends a timeline sample.
    pub(crate) fn push_sample(&self, sample: Sample) {
        if let Ok(mut timeline) = self.timeline.lock() {
            timeline.push(sample);
        }
    }

    /// The timeline so far.
    pub(crate) fn timeline(&self) -> Vec<Sample> {
        self.timeline.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// One client's view of the deliveries: which rows it has seen, and latencies waiting to be
/// handed over.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The shard of the shared counters this client adds to.
    shard: usize,
    /// Bit `n` set once row `n` arrived.
    seen: Vec<u64>,
    /// Highest row received so far from each writer (row `n` comes from writer
    /// `n % writers`; each writer commits its rows in order).
    highest: Vec<Option<u64>>,
    /// Latencies (µs) not yet handed to the recorder.
    batch: Vec<u64>,
    /// When the oldest latency in `batch` was taken.
    batch_started_ns: u64,
}

impl Tracker {
    /// A tracker adding to shard `shard` (e.g. the client's number), for rows written by
    /// `writers` writers.
    pub(crate) fn new(shard: usize, writers: usize) -> Tracker {
        Tracker {
            shard,
            seen: Vec::new(),
            highest: vec![None; writers.max(1)],
            batch: Vec::new(),
            batch_started_ns: 0,
        }
    }

    /// The shard this client adds to.
    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    /// Books the delivery of row `n` received at `recv_ns`.
    pub(crate) fn delivered(&mut self, n: u64, recv_ns: u64, commits: &CommitLog, rec: &Recorder) {
        let c = &rec.counters.deliveries;
        let shard = self.shard;
        c.received.add(shard, 1);
        if n >= commits.capacity() {
            c.foreign.add(shard, 1);
            return;
        }
        let (word, bit) = (usize::try_from(n / 64).unwrap_or(usize::MAX), n % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            c.duplicated.add(shard, 1);
            return;
        }
        self.seen[word] |= 1 << bit;
        c.unique.add(shard, 1);
        let lane = usize::try_from(n % self.highest.len() as u64).unwrap_or(0);
        let highest = &mut self.highest[lane];
        if highest.is_some_and(|h| n < h) {
            c.out_of_order.add(shard, 1);
        }
        *highest = Some(highest.map_or(n, |h| h.max(n)));
        let latency_us = match commits.commit_ns(n) {
            Some(commit) => recv_ns.saturating_sub(commit) / 1000,
            None => {
                // The delivery beat the writer's own wake-up after its commit returned.
                c.early.add(shard, 1);
                0
            }
        };
        if self.batch.is_empty() {
            self.batch_started_ns = recv_ns;
        }
        self.batch.push(latency_us);
        if self.batch.len() >= BATCH_LEN
            || recv_ns.saturating_sub(self.batch_started_ns) > BATCH_AGE_NS
        {
            self.flush(rec);
        }
    }

    /// Hands the pending latencies to the recorder.
    pub(crate) fn flush(&mut self, rec: &Recorder) {
        if !self.batch.is_empty() {
            rec.add_latencies(&self.batch);
            self.batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_reordering_are_counted_once_each() {
        let rec = Recorder::new();
        let commits = CommitLog::new(10);
        for n in 0..4 {
            commits.committed(n, 1_000);
        }
        let mut t = Tracker::new(3, 1);
        for n in [0, 1, 1, 3, 2] {
            t.delivered(n, 2_001_000, &commits, &rec);
        }
        t.flush(&rec);
        let c = &rec.counters.deliveries;
        assert_eq!(c.received.sum(), 5);
        assert_eq!(c.unique.sum(), 4);
        assert_eq!(c.duplicated.sum(), 1);
        assert_eq!(c.out_of_order.sum(), 1);
        let h = rec.latency();
        assert_eq!(h.len(), 4);
        // 2_001_000 ns received - 1_000 ns committed = 2 ms.
        assert_eq!(h.value_at_quantile(0.5) / 1000, 2);
    }

    #[test]
    fn order_is_checked_per_writer() {
        let rec = Recorder::new();
        let commits = CommitLog::new(10);
        // Two writers: even rows from one, odd rows from the other, each in its own order.
        let mut t = Tracker::new(0, 2);
        for n in [1, 0, 3, 2, 5, 4] {
            t.delivered(n, 10, &commits, &rec);
        }
        assert_eq!(rec.counters.deliveries.out_of_order.sum(), 0);
        t.delivered(8, 10, &commits, &rec);
        t.delivered(6, 10, &commits, &rec);
        assert_eq!(rec.counters.deliveries.out_of_order.sum(), 1);
    }

    #[test]
    fn sharded_counters_sum_every_shard() {
        let s = Sharded::default();
        for shard in 0..200 {
            s.add(shard, 2);
        }
        assert_eq!(s.sum(), 400);
    }

    #[test]
    fn rows_outside_the_log_are_foreign() {
        let rec = Recorder::new();
        let commits = CommitLog::new(2);
        let mut t = Tracker::new(0, 1);
        t.delivered(5, 10, &commits, &rec);
        assert_eq!(rec.counters.deliveries.foreign.sum(), 1);
        assert_eq!(rec.counters.deliveries.unique.sum(), 0);
    }

    #[test]
    fn a_delivery_before_the_commit_returned_counts_as_early() {
        let rec = Recorder::new();
        let commits = CommitLog::new(2);
        let mut t = Tracker::new(0, 1);
        t.delivered(0, 10, &commits, &rec);
        t.flush(&rec);
        assert_eq!(rec.counters.deliveries.early.sum(), 1);
        commits.committed(1, 5);
        assert_eq!(commits.commit_ns(1), Some(5));
    }
}
