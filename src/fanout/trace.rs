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
//! ([`Router::explain`]).
//!
//! Every channel registration gets a number and the sequence number of the first change routed
//! after it ([`Tag`]), so an answer can tell "not subscribed yet" from "filtered". Channels that
//! leave are remembered (their subscriptions and claims, not their queue) for as long as a
//! bounded list holds them, so a slow consumer that was closed can still be told "dropped".
//!
//! Costs on the routing path: one counter per subscriber looked at, one vector push per frame
//! queued, and per change one short-lived lock to append the entry. With a depth of 0 the
//! recorder keeps nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use uuid::Uuid;

use super::router::{PgChannel, Router};
use super::subscription::{Events, PgSub};
use super::visibility::{Decision, Kept, Sight};
use crate::change::{ChangeEvent, Op};
use crate::pg::catalog::TableInfo;

/// Channels that left, remembered for explanations; the oldest are forgotten first.
const MAX_DEPARTED: usize = 4096;

/// What the recorder knows of one channel registration.
#[derive(Debug, Default)]
pub struct Tag {
    /// The connection (the registry's `connection_id`); nil when not given.
    connection_id: Uuid,
    /// Registration number (from 1), set when the channel is registered.
    reg: AtomicU64,
    /// Sequence number of the first change routed after registration.
    since: AtomicU64,
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
    got: Vec<u64>,
    errors: Vec<u64>,
    dropped: Vec<u64>,
    sight: Kept,
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

/// A channel registration, live or departed, as explanations see it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Registration number.
    pub reg: u64,
    /// The connection's id.
    pub connection_id: Uuid,
    /// This node's connection number.
    pub conn: crate::conn::ConnId,
    /// The topic, `realtime:<name>`.
    pub topic: Arc<str>,
    /// Its subscriptions.
    pub subs: Vec<PgSub>,
    /// Its token's role and `sub`.
    pub role: Arc<str>,
    /// The `sub` claim.
    pub sub: Option<String>,
    claims_key: u64,
    claims_json: Arc<str>,
    since: u64,
    /// Sequence number of the first change routed after it left (`None`: still subscribed).
    pub until: Option<u64>,
    /// Frames queued to it.
    pub delivered: u64,
}

impl Subscriber {
    fn of(channel: &PgChannel, until: Option<u64>) -> Subscriber {
        Subscriber {
            reg: channel.tag.reg.load(Ordering::Relaxed),
            connection_id: channel.tag.connection_id,
            conn: channel.key.conn,
            topic: Arc::clone(&channel.key.topic),
            subs: channel.subs.clone(),
            role: Arc::clone(&channel.role),
            sub: channel.claims.sub.clone(),
            claims_key: channel.claims_key,
            claims_json: Arc::clone(&channel.claims_json),
            since: channel.tag.since.load(Ordering::Relaxed),
            until,
            delivered: channel.delivered(),
        }
    }

    /// The channel name (the topic without `realtime:`).
    pub fn name(&self) -> &str {
        self.topic.strip_prefix("realtime:").unwrap_or(&self.topic)
    }

    fn registered_at(&self, seq: u64) -> bool {
        self.since <= seq && self.until.is_none_or(|until| seq < until)
    }
}

/// The event a subscription wants, as the client wrote it (`*` for all).
pub fn event_name(events: Events) -> &'static str {
    match [Op::Insert, Op::Update, Op::Delete].map(|op| events.contains(op)) {
        [true, false, false] => "INSERT",
        [false, true, false] => "UPDATE",
        [false, false, true] => "DELETE",
        _ => "*",
    }
}

/// Why a subscriber did or did not receive a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its queue took the change.
    Delivered,
    /// Its queue took an error entry in place of the change.
    ErrorEntry,
    /// None of its subscriptions' filters matched the row.
    Filtered,
    /// Row-level security: its token's role may not see the row.
    Refused,
    /// Its queue refused the frame: it was full (a slow consumer, then closed) or closing.
    Dropped,
    /// It was not subscribed to this table and operation when the change was routed.
    NotSubscribed,
}

impl Outcome {
    /// The outcome's name in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::ErrorEntry => "error_entry",
            Outcome::Filtered => "filtered",
            Outcome::Refused => "refused",
            Outcome::Dropped => "dropped",
            Outcome::NotSubscribed => "not_subscribed",
        }
    }
}

/// One subscriber's answer for one change.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The subscriber.
    pub subscriber: Subscriber,
    /// What became of the change for it.
    pub outcome: Outcome,
    /// Why, for a person.
    pub detail: String,
    /// For `filtered`: the filters that did not match (each subscription covering the change).
    pub filters: Vec<String>,
}

/// What routing one change did, noted while it is routed; handed back to
/// [`Recorder::finish`].
#[derive(Debug)]
pub struct Record {
    on: bool,
    seq: u64,
    subscribers: u64,
    hidden: u64,
    got: Vec<u64>,
    errors: Vec<u64>,
    dropped: Vec<u64>,
}

impl Record {
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
        if !self.on {
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
}

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
        let until = self.seq.load(Ordering::Acquire);
        let mut departed = lock(&self.departed);
        if departed.len() >= MAX_DEPARTED {
            departed.pop_front();
        }
        departed.push_back(Subscriber::of(&channel, Some(until)));
    }

    /// Starts the record of the next change.
    pub fn begin(&self) -> Record {
        Record {
            on: self.depth > 0,
            seq: self.seq.fetch_add(1, Ordering::AcqRel),
            subscribers: 0,
            hidden: 0,
            got: Vec::new(),
            errors: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Keeps what routing `change` did; `hidden` more channels were hidden by group.
    pub fn finish(&self, mut record: Record, change: &ChangeEvent, sight: Sight<'_>, hidden: u64) {
        if !record.on {
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
            got: record.got,
            errors: record.errors,
            dropped: record.dropped,
            sight: sight.keep(),
        });
        let mut tables = lock(&self.tables);
        let trail = tables.entry(change.table.relid).or_default();
        if trail.ring.len() >= self.depth {
            trail.ring.pop_front();
        }
        trail.ring.push_back(entry);
        trail.totals.add(&counts);
        trail.changes += 1;
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
    fn departed_subscribers(&self) -> Vec<Subscriber> {
        lock(&self.departed).iter().cloned().collect()
    }
}

/// Which subscribers an explanation is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    /// Only this connection.
    pub connection_id: Option<Uuid>,
    /// Only this channel (its name, without `realtime:`).
    pub channel: Option<&'a str>,
}

impl Who<'_> {
    fn admits(&self, s: &Subscriber) -> bool {
        self.connection_id.is_none_or(|c| c == s.connection_id)
            && self.channel.is_none_or(|c| c == s.name())
    }
}

impl Router {
    /// The channels now subscribed to `schema.table` (their `*` wildcards included), each
    /// once.
    pub fn subscribers(&self, schema: &str, table: &str) -> Vec<Subscriber> {
        let keys = [
            (schema.to_owned(), table.to_owned()),
            (schema.to_owned(), "*".to_owned()),
            ("*".to_owned(), "*".to_owned()),
        ];
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for key in &keys {
            let Some(map) = self.by_table.get(key).map(|m| Arc::clone(m.value())) else {
                continue;
            };
            for entry in map.iter() {
                if seen.insert(entry.key().clone()) {
                    out.push(Subscriber::of(entry.value(), None));
                }
            }
        }
        out
    }

    /// Calls `f` with each channel's topic and the change frames queued to it so far.
    pub fn for_each_channel(&self, mut f: impl FnMut(&str, u64)) {
        let mut seen = HashSet::new();
        for table in &self.by_table {
            for entry in table.value().iter() {
                if seen.insert(entry.key().clone()) {
                    f(&entry.key().topic, entry.value().delivered());
                }
            }
        }
    }

    /// The channels of topic `realtime:<name>` with Postgres Changes subscriptions.
    pub fn subscribers_of_topic(&self, name: &str) -> Vec<Subscriber> {
        let topic = format!("realtime:{name}");
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for table in &self.by_table {
            for entry in table.value().iter() {
                if *entry.key().topic == *topic && seen.insert(entry.key().clone()) {
                    out.push(Subscriber::of(entry.value(), None));
                }
            }
        }
        out
    }

    /// What became of change `id` for each subscriber `who` names: the channels subscribed to
    /// its table now, and those that left since and are remembered; for each connection and
    /// channel, the registration that was subscribed when the change was routed (else the
    /// newest). `None` when the change is not among the kept ones.
    pub fn explain(&self, id: i64, who: Who<'_>) -> Option<(Arc<Entry>, Vec<Explanation>)> {
        let entry = self.trace.find(id)?;
        let mut candidates = self.subscribers(&entry.table.schema, &entry.table.name);
        candidates.extend(
            self.trace
                .departed_subscribers()
                .into_iter()
                .filter(|s| s.subs.iter().any(|sub| covers_table(sub, &entry))),
        );
        let mut chosen: HashMap<(Uuid, crate::conn::ConnId, Arc<str>), Subscriber> = HashMap::new();
        for s in candidates.into_iter().filter(|s| who.admits(s)) {
            let key = (s.connection_id, s.conn, Arc::clone(&s.topic));
            let better = match chosen.get(&key) {
                None => true,
                Some(held) => {
                    let (now, then) = (s.registered_at(entry.seq), held.registered_at(entry.seq));
                    (now && !then) || (now == then && s.reg > held.reg)
                }
            };
            if better {
                chosen.insert(key, s);
            }
        }
        let mut out: Vec<Explanation> = chosen
            .into_values()
            .map(|s| explain_one(&entry, s))
            .collect();
        out.sort_by(|a, b| {
            (a.subscriber.connection_id, &a.subscriber.topic)
                .cmp(&(b.subscriber.connection_id, &b.subscriber.topic))
        });
        Some((entry, out))
    }
}

/// Whether `sub` is about `entry`'s table, whatever the event.
fn covers_table(sub: &PgSub, entry: &Entry) -> bool {
    (sub.schema == "*" || sub.schema == entry.table.schema)
        && (sub.table == "*" || sub.table == entry.table.name)
}

fn explain_one(entry: &Entry, subscriber: Subscriber) -> Explanation {
    let verdict = |outcome, detail: String| (outcome, detail, Vec::new());
    let s = &subscriber;
    let (outcome, detail, filters) = if entry.seq < s.since {
        verdict(
            Outcome::NotSubscribed,
            "the channel subscribed after this change was routed".to_owned(),
        )
    } else if s.until.is_some_and(|until| entry.seq >= until) {
        verdict(
            Outcome::NotSubscribed,
            "the channel had left (or re-subscribed) before this change was routed".to_owned(),
        )
    } else if entry.dropped.binary_search(&s.reg).is_ok() {
        verdict(
            Outcome::Dropped,
            "its connection's queue refused the frame: full (a slow consumer, closed with 4001) \
             or already closing"
                .to_owned(),
        )
    } else if entry.got.binary_search(&s.reg).is_ok() {
        verdict(Outcome::Delivered, "queued to its connection".to_owned())
    } else if entry.errors.binary_search(&s.reg).is_ok() {
        let why = entry.undeliverable.clone().unwrap_or_else(|| {
            "the change or its filter could not be evaluated for it (see errors in the entry)"
                .to_owned()
        });
        verdict(
            Outcome::ErrorEntry,
            format!("an error entry was queued: {why}"),
        )
    } else {
        unreached(entry, s)
    };
    Explanation {
        subscriber,
        outcome,
        detail,
        filters,
    }
}

/// Why a subscriber registered at the time got no frame: not subscribed to the operation,
/// hidden by row-level security, or filtered out.
fn unreached(entry: &Entry, s: &Subscriber) -> (Outcome, String, Vec<String>) {
    let covering: Vec<&PgSub> = s
        .subs
        .iter()
        .filter(|sub| covers_table(sub, entry) && sub.events.contains(entry.op))
        .collect();
    if covering.is_empty() {
        return (
            Outcome::NotSubscribed,
            format!(
                "no subscription of the channel covers {} on {}.{}",
                entry.op.as_str(),
                entry.table.schema,
                entry.table.name
            ),
            Vec::new(),
        );
    }
    let decision = entry.sight.decide(s.claims_key, &s.claims_json, &s.role);
    match decision {
        Decision::Hide => (
            Outcome::Refused,
            format!(
                "row-level security: the role {} may not see this row (its table privileges or \
                 SELECT policies, evaluated with the channel token's claims)",
                s.role
            ),
            Vec::new(),
        ),
        Decision::Error | Decision::Show { .. } => {
            let filters: Vec<String> = covering
                .iter()
                .filter_map(|sub| sub.filter_text.clone())
                .collect();
            let hidden_column = match decision {
                Decision::Show {
                    columns: Some(allowed),
                    ..
                } => covering.iter().any(|sub| {
                    sub.filter
                        .as_ref()
                        .is_some_and(|f| f.columns().any(|c| !allowed.iter().any(|a| a == c)))
                }),
                _ => false,
            };
            let detail = if hidden_column {
                "its filter tests a column the role may not select, so it matches nothing"
            } else {
                "the row did not match its filters"
            };
            (Outcome::Filtered, detail.to_owned(), filters)
        }
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
    use crate::auth::Claims;
    use crate::fanout::filter::{Column, Filter};
    use crate::fanout::router::{ChannelKey, Wakes};
    use crate::outbound::{self, Frame, Kind, Limits, Receiver};
    use crate::pg::catalog::{ColumnInfo, TableInfo};
    use crate::protocol::Vsn;
    use tokio_util::sync::CancellationToken;

    fn change(id: i64) -> ChangeEvent {
        let table = Arc::new(TableInfo {
            relid: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec![ColumnInfo {
                name: "id".into(),
                type_name: "int4".into(),
            }],
            primary_key: vec!["id".into()],
            replica_identity_full: false,
            rls_enabled: false,
        });
        let record = serde_json::json!({"id": 1});
        ChangeEvent {
            id,
            table,
            op: Op::Insert,
            record: record.as_object().cloned(),
            old_full: None,
            commit_timestamp: "2026-01-01T00:00:00.000Z".into(),
            captured_at: SystemTime::UNIX_EPOCH,
            record_raw: Some(vec![(
                "id".into(),
                serde_json::value::RawValue::from_string("1".into()).unwrap(),
            )]),
            old_raw: None,
            filter_gap: false,
            undeliverable: None,
        }
    }

    fn sub(event: &str, filter: Option<&str>) -> PgSub {
        PgSub {
            id: 7,
            events: Events::parse(Some(event)),
            schema: "public".into(),
            table: "items".into(),
            filter: filter.map(|f| {
                Filter::parse(f)
                    .unwrap()
                    .bind(&[Column::new("id", "int4")])
                    .unwrap()
            }),
            filter_text: filter.map(str::to_owned),
            select: None,
        }
    }

    /// Subscribes a channel of connection `conn` with queue bound `frames`.
    fn join(router: &Router, conn: u64, name: &str, subs: Vec<PgSub>, frames: usize) -> Receiver {
        let limits = Limits {
            max_frames: frames,
            max_bytes: 1 << 16,
        };
        let (tx, rx) = outbound::channel(limits, CancellationToken::new());
        if frames == 1 {
            // A queue that is full before the change comes.
            tx.push(Frame::text(Kind::System, "x")).unwrap();
        }
        let key = ChannelKey {
            conn,
            topic: Arc::from(format!("realtime:{name}")),
        };
        let claims = Arc::new(Claims {
            role: "anon".into(),
            exp: 0,
            sub: None,
            other: Default::default(),
        });
        let channel = PgChannel::new(key, tx, Vsn::V2, subs, claims)
            .for_connection(Uuid::from_u128(u128::from(conn)));
        router.subscribe(Arc::new(channel));
        rx
    }

    fn outcomes(router: &Router, id: i64) -> Vec<(String, Outcome)> {
        let (_, explained) = router.explain(id, Who::default()).expect("kept");
        explained
            .into_iter()
            .map(|e| (e.subscriber.name().to_owned(), e.outcome))
            .collect()
    }

    /// Guards the elimination: a frame queued is "delivered", a refused one "dropped", a filter
    /// that did not match "filtered" (with its text), another event or a later subscription
    /// "not_subscribed"; a channel that left is still answered for; the counts agree.
    #[test]
    fn every_subscriber_gets_its_outcome() {
        let router = Router::new();
        let _a = join(&router, 1, "all", vec![sub("*", None)], 8);
        let _f = join(&router, 2, "filtered", vec![sub("*", Some("id=eq.2"))], 8);
        let _d = join(&router, 3, "deletes", vec![sub("DELETE", None)], 8);
        let _full = join(&router, 4, "full", vec![sub("*", None)], 1);
        let mut wakes = Wakes::default();
        router.route(&change(10), Sight::everything(), 1 << 20, &mut wakes);
        let _late = join(&router, 5, "late", vec![sub("*", None)], 8);
        assert_eq!(
            outcomes(&router, 10),
            [
                ("all".to_owned(), Outcome::Delivered),
                ("filtered".to_owned(), Outcome::Filtered),
                ("deletes".to_owned(), Outcome::NotSubscribed),
                ("full".to_owned(), Outcome::Dropped),
                ("late".to_owned(), Outcome::NotSubscribed),
            ]
        );
        let (entry, explained) = router.explain(10, Who::default()).unwrap();
        assert_eq!(explained[1].filters, ["id=eq.2"]);
        assert_eq!(
            entry.counts,
            Counts {
                subscribers: 4,
                delivered: 1,
                error_entries: 0,
                filtered: 2,
                refused: 0,
                dropped: 1,
            }
        );
        // The channel that got it leaves: still answered for, and no longer subscribed.
        router.unsubscribe(&ChannelKey {
            conn: 1,
            topic: Arc::from("realtime:all"),
        });
        let who = Who {
            connection_id: Some(Uuid::from_u128(1)),
            channel: Some("all"),
        };
        let (_, explained) = router.explain(10, who).unwrap();
        assert_eq!(explained.len(), 1);
        assert_eq!(explained[0].outcome, Outcome::Delivered);
        assert!(explained[0].subscriber.until.is_some());
        router.route(&change(11), Sight::everything(), 1 << 20, &mut wakes);
        let (_, explained) = router.explain(11, who).unwrap();
        assert_eq!(explained.len(), 1);
        assert_eq!(explained[0].outcome, Outcome::NotSubscribed, "it had left");
        assert!(router.explain(99, Who::default()).is_none());
        let trail = router.trace.trail("public", "items").unwrap();
        assert_eq!(trail.changes, 2);
        assert_eq!(trail.recent[0].id, 11);
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
