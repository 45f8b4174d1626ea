//! Stage 3: routes each decoded change to the channels whose subscriptions match.
//!
//! Fed by the listener with [`ChangeEvent`]s in commit order; feeds each connection's outbound
//! queue (stage 4). Channels are indexed by the `(schema, table)` they subscribe to (`*` for
//! wildcards), so a change visits only the channels of its table, never every subscription.
//! Each change's `data` body was serialized once by the decoder; the frame around it (topic,
//! `ids`) is written once per distinct topic, serializer and `ids` list, and its bytes are
//! shared by every channel that gets the same frame. Delivery runs in three steps — collect
//! matching channels, authorize them grouped by their claims, push — so row-level security can
//! check one change once per distinct claim set rather than once per subscriber.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::encode::{self, View};
use super::subscription::{PgSub, Verdict};
use super::trace::{self, Record, Recorder};
use super::visibility::{self, ClaimSet, Decision, Sight};
use crate::auth::Claims;
use crate::change::ChangeEvent;
use crate::conn::ConnId;
use crate::outbound::{Frame, Kind, Outbound, Tally};
use crate::position::Stamp;
use crate::protocol::{self, Vsn};

/// `(schema, table)`, either of which may be `*`.
pub type TableKey = (String, String);

/// One joined channel of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The connection.
    pub conn: ConnId,
    /// The full topic, `realtime:<name>`.
    pub topic: Arc<str>,
}

/// A channel's Postgres Changes subscriptions and where to deliver them.
#[derive(Debug)]
pub struct PgChannel {
    /// Which channel.
    pub key: ChannelKey,
    /// The connection's queue.
    pub outbound: Outbound,
    /// The connection's serializer.
    pub vsn: Vsn,
    /// Validated subscriptions, in join order: one copy, shared with the session's channel (to
    /// register them again on a new token) and with what delivery diagnostics keep of it.
    pub subs: Arc<[PgSub]>,
    /// The channel token's claims (row-level security groups deliveries by them).
    pub claims: Arc<Claims>,
    /// `claims` as JSON, as row-level security checks see them.
    pub(super) claims_json: Arc<str>,
    /// Fingerprint of `claims_json`: equal claims, equal key.
    pub(super) claims_key: u64,
    /// The role checks run as: the `role` claim, `anon` when empty.
    pub(super) role: Arc<str>,
    /// Its registration, as delivery diagnostics know it ([`trace`]).
    pub(super) tag: trace::Tag,
    /// No two subscriptions share an id (then routing needs no duplicate check).
    unique_ids: bool,
    /// Frame text before the payload, written once at subscribe time (boxed, without spare
    /// capacity: every channel holds one).
    prefix: Box<str>,
    /// Frame text after the payload, the same for every channel of a serializer.
    suffix: &'static str,
    /// The channel's number within its connection when the connection can resume (its frames
    /// are then stamped, [`crate::position`]); 0 otherwise.
    pub chan: u32,
}

// Every channel with Postgres Changes is one `Arc` of this: 176 bytes and the `Arc`'s two
// counters fill a 192-byte class of mimalloc's, the default allocator (it was 192 bytes, in the
// 224-byte class, while the frame's prefix and suffix were `String`s).
const _: () = assert!(std::mem::size_of::<PgChannel>() <= 176);

impl PgChannel {
    /// Builds the channel entry.
    pub fn new(
        key: ChannelKey,
        outbound: Outbound,
        vsn: Vsn,
        subs: impl Into<Arc<[PgSub]>>,
        claims: Arc<Claims>,
    ) -> PgChannel {
        let subs = subs.into();
        let prefix = protocol::frame_prefix(vsn, None, None, &key.topic, "postgres_changes")
            .into_boxed_str();
        let suffix = protocol::null_ref_suffix(vsn);
        // Shared with every channel of the same token's claims.
        let policy = claims.policy();
        let claims_json = Arc::clone(&policy.json);
        let claims_key = policy.key;
        let role = Arc::clone(&policy.role);
        let unique_ids = {
            let mut seen = HashSet::with_capacity(subs.len());
            subs.iter().all(|sub| seen.insert(sub.id))
        };
        PgChannel {
            key,
            outbound,
            vsn,
            subs,
            claims,
            claims_json,
            claims_key,
            role,
            tag: trace::Tag::default(),
            unique_ids,
            prefix,
            suffix,
            chan: 0,
        }
    }

    /// The same channel, numbered `chan` within a connection that can resume.
    #[must_use]
    pub fn with_chan(mut self, chan: u32) -> PgChannel {
        self.chan = chan;
        self
    }

    /// The channel's `postgres_changes` frame for `ids` and a serialized `data` body.
    fn frame(&self, ids: &[u32], body: &str) -> String {
        let mut text =
            String::with_capacity(self.prefix.len() + body.len() + self.suffix.len() + 32);
        text.push_str(&self.prefix);
        text.push_str("{\"ids\":[");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            // Writing into a String cannot fail.
            let _ = write!(text, "{id}");
        }
        text.push_str("],\"data\":");
        text.push_str(body);
        text.push('}');
        text.push_str(self.suffix);
        text
    }

    /// The tables (and wildcards) its subscriptions name.
    pub fn table_keys(&self) -> HashSet<TableKey> {
        self.subs.iter().map(PgSub::table_key).collect()
    }
}

/// Counters of what the router did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Changes routed.
    pub changes: AtomicU64,
    /// Frames queued to connections.
    pub delivered: AtomicU64,
    /// Frames refused by a full or closed queue.
    pub dropped: AtomicU64,
}

/// The change router of one node. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Router {
    pub(super) by_table: DashMap<TableKey, Arc<DashMap<ChannelKey, Arc<PgChannel>>>>,
    /// Where each channel is registered, to remove it, and its number of subscriptions. A
    /// slice, not a set: a channel names a table or a few, and a set's first allocation took
    /// more than 200 bytes for one.
    registered: DashMap<ChannelKey, (Box<[TableKey]>, usize)>,
    /// What the router did so far.
    pub stats: Stats,
    /// The recent changes of each table and what became of them (delivery diagnostics).
    pub trace: Recorder,
}

/// Channels given frames whose writers still have to be woken: routing a batch of changes and
/// then waking each writer once lets a writer write the whole batch in one flush, instead of
/// one socket write per change.
#[derive(Debug, Default)]
pub struct Wakes {
    channels: Vec<Arc<PgChannel>>,
}

impl Wakes {
    /// Channels waiting to be woken.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Wakes every waiting channel's writer.
    pub fn wake_all(&mut self) {
        for channel in self.channels.drain(..) {
            channel.outbound.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        // Never leave a frame queued without its writer knowing (an error path included).
        self.wake_all();
    }
}

/// What routing one change produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Channels that got a frame.
    pub delivered: usize,
    /// Channels whose queue refused it (they are closing).
    pub dropped: usize,
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Registers (or replaces) a channel's subscriptions. A replacement is atomic per table:
    /// a change sees either the old or the new subscriptions of the channel, never both.
    pub fn subscribe(&self, channel: Arc<PgChannel>) {
        let key = channel.key.clone();
        let keys = channel.table_keys();
        self.trace.registered(&channel);
        let mut replaced = None;
        for table in &keys {
            let map = self.by_table.entry(table.clone()).or_default();
            replaced = map.insert(key.clone(), Arc::clone(&channel)).or(replaced);
        }
        let old = self.registered.insert(
            key.clone(),
            (keys.iter().cloned().collect(), channel.subs.len()),
        );
        for stale in old.iter().flat_map(|(old, _)| old.iter()) {
            if !keys.contains(stale) {
                replaced = self.remove_from(stale, &key).or(replaced);
            }
        }
        self.trace.departed(replaced);
    }

    /// Removes a channel's subscriptions, if any.
    pub fn unsubscribe(&self, key: &ChannelKey) {
        if let Some((_, (keys, _))) = self.registered.remove(key) {
            crate::room::give_back_shared(&self.registered);
            let mut left = None;
            for table in keys.iter() {
                left = self.remove_from(table, key).or(left);
            }
            self.trace.departed(left);
        }
    }

    /// Removes `key`'s entry of `table`; returns the channel removed.
    fn remove_from(&self, table: &TableKey, key: &ChannelKey) -> Option<Arc<PgChannel>> {
        let (removed, now_empty) = match self.by_table.get(table) {
            Some(map) => {
                let removed = map.remove(key).map(|(_, c)| c);
                crate::room::give_back_shared(&map);
                (removed, map.is_empty())
            }
            None => (None, false),
        };
        if now_empty {
            self.by_table.remove_if(table, |_, map| map.is_empty());
        }
        removed
    }

    /// Channels with Postgres Changes subscriptions.
    pub fn channel_count(&self) -> usize {
        self.registered.len()
    }

    /// Postgres Changes subscriptions of all channels, counted on demand (for a scrape).
    pub fn subscription_count(&self) -> usize {
        self.registered.iter().map(|entry| entry.value().1).sum()
    }

    /// Pushes a `system` message to every channel with Postgres Changes subscriptions;
    /// `payload` gets the channel name (the topic without `realtime:`). Returns how many
    /// channels were told.
    pub fn notify_all(&self, payload: impl Fn(&str) -> String) -> usize {
        let channels: Vec<Arc<PgChannel>> = self
            .by_table
            .iter()
            .flat_map(|table| {
                table
                    .value()
                    .iter()
                    .map(|c| Arc::clone(c.value()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut seen = HashSet::new();
        let mut tally = Tally::default();
        for channel in channels {
            if !seen.insert(channel.key.clone()) {
                continue;
            }
            let name = protocol::channel_name(&channel.key.topic);
            let text = protocol::encode_text(
                channel.vsn,
                None,
                None,
                &channel.key.topic,
                "system",
                &payload(name),
            );
            tally.count(channel.outbound.push(Frame::text(Kind::System, text)));
        }
        usize::try_from(tally.delivered).unwrap_or(usize::MAX)
    }

    /// Routes `change` to every matching channel: one frame per channel, listing the ids of all
    /// its matching subscriptions. The writers are not woken yet: the channels that got frames
    /// are added to `wakes`, and [`Wakes::wake_all`] wakes them once for everything routed.
    pub fn route(
        &self,
        change: &ChangeEvent,
        sight: Sight<'_>,
        max_change_bytes: usize,
        wakes: &mut Wakes,
    ) -> Routed {
        let mut record = self.trace.begin();
        let (deliveries, ids) = self.collect(change, sight, &mut record);
        let mut tally = Tally::default();
        // The whole body is encoded once, when the first recipient needs it; each distinct
        // view (column selection, allowed columns, old row hidden) once more.
        let mut whole: Option<Arc<str>> = None;
        let mut errors: HashMap<(&str, Option<&[String]>), Arc<str>> = HashMap::new();
        let mut bodies: HashMap<View<'_>, Arc<str>> = HashMap::new();
        let mut hidden = 0u64;
        for group in authorize(&deliveries) {
            let Some((first, ..)) = group.first() else {
                continue;
            };
            let (allowed, old_hidden) =
                match sight.decide(first.claims_key, &first.claims_json, &first.role) {
                    Decision::Hide => {
                        hidden += group.len() as u64;
                        continue;
                    }
                    Decision::Error => (None, None),
                    Decision::Show {
                        columns,
                        old_hidden,
                    } => (columns.as_deref(), Some(*old_hidden)),
                };
            // Channels of one topic and serializer whose matching subscriptions are the same
            // get the same bytes: the frame is written once and shared (a reference count per
            // recipient, no copy). Recipients of one frame usually come one after another, so
            // the last key is compared before the map is hashed.
            let mut frames: HashMap<FrameKey<'_>, Frame> = HashMap::new();
            let mut last: Option<(FrameKey<'_>, Frame)> = None;
            for (channel, range, select, is_error) in group {
                // The reason of an error entry, when this delivery is one.
                let reason = match old_hidden {
                    None => Some(visibility::CHECK_FAILED),
                    Some(_) if *is_error => Some(""),
                    Some(_) => None,
                };
                let key = (
                    &*channel.prefix,
                    &ids[range.clone()],
                    select.as_deref(),
                    reason,
                );
                let frame = match &last {
                    Some((last_key, frame)) if *last_key == key => frame.clone(),
                    _ => {
                        let frame = frames
                            .entry(key)
                            .or_insert_with(|| {
                                let view = View {
                                    select: key.2,
                                    allowed,
                                    old_hidden: old_hidden.unwrap_or(false),
                                };
                                let body = match key.3 {
                                    Some(reason) => {
                                        // A failed check lists no column: which ones the role
                                        // may see is unknown.
                                        let allowed = match old_hidden {
                                            None => Some(&[][..]),
                                            Some(_) => allowed,
                                        };
                                        let entry = errors.entry((reason, allowed));
                                        Arc::clone(entry.or_insert_with(|| {
                                            Arc::from(if reason.is_empty() {
                                                encode::error_body_with(
                                                    change,
                                                    change.undeliverable.clone().unwrap_or_else(
                                                        || encode::FILTER_GAP.to_owned(),
                                                    ),
                                                    allowed,
                                                )
                                            } else {
                                                encode::error_body_with(
                                                    change,
                                                    reason.to_owned(),
                                                    allowed,
                                                )
                                            })
                                        }))
                                    }
                                    None if view == View::default() => {
                                        Arc::clone(whole.get_or_insert_with(|| {
                                            Arc::from(encode::body(change, None, max_change_bytes))
                                        }))
                                    }
                                    None => Arc::clone(bodies.entry(view).or_insert_with(|| {
                                        Arc::from(encode::body_for(change, view, max_change_bytes))
                                    })),
                                };
                                Frame::text(Kind::Changes, channel.frame(key.1, &body))
                                    .since(change.captured_at)
                            })
                            .clone();
                        last = Some((key, frame.clone()));
                        frame
                    }
                };
                let frame = if channel.chan == 0 {
                    frame
                } else {
                    Frame {
                        stamp: Some(Stamp {
                            seq: change.seq,
                            id: change.id,
                            chan: channel.chan,
                        }),
                        ..frame
                    }
                };
                let pushed = tally.count(channel.outbound.push_deferred(frame));
                record.pushed(channel, *is_error || old_hidden.is_none(), pushed.is_some());
                if pushed == Some(true) {
                    wakes.channels.push(Arc::clone(channel));
                }
            }
        }
        self.stats.changes.fetch_add(1, Ordering::Relaxed);
        self.trace.finish(record, change, sight, hidden);
        if hidden > 0 {
            metrics::counter!("gateway_router_rls_hidden_total").increment(hidden);
        }
        self.stats
            .delivered
            .fetch_add(tally.delivered, Ordering::Relaxed);
        self.stats
            .dropped
            .fetch_add(tally.dropped, Ordering::Relaxed);
        tally.record(
            "gateway_router_deliveries_total",
            "gateway_router_dropped_total",
        );
        Routed {
            delivered: usize::try_from(tally.delivered).unwrap_or(usize::MAX),
            dropped: usize::try_from(tally.dropped).unwrap_or(usize::MAX),
        }
    }

    /// The distinct claim sets of the channels subscribed to `change`'s table, `service_role`
    /// left out (it sees every change unchecked): whom row-level security has to ask about.
    pub fn claim_sets(&self, change: &ChangeEvent) -> Vec<ClaimSet> {
        let maps: Vec<Arc<DashMap<ChannelKey, Arc<PgChannel>>>> = lookups(change)
            .iter()
            .filter_map(|k| self.by_table.get(k).map(|m| Arc::clone(m.value())))
            .collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for map in maps {
            for entry in map.iter() {
                let channel = entry.value();
                if &*channel.role != visibility::SERVICE_ROLE && seen.insert(channel.claims_key) {
                    out.push(ClaimSet {
                        key: channel.claims_key,
                        json: Arc::clone(&channel.claims_json),
                        role: Arc::clone(&channel.role),
                    });
                }
            }
        }
        out
    }

    /// Step 1: the channels with at least one matching subscription, each once, with the ids
    /// of its matching subscriptions (a range of the returned ids) and the column selection
    /// they share.
    ///
    /// Where row-level security restricts what a claim set sees, the channel's decision is
    /// taken here, before filters say anything: a claim set whose check failed gets an error
    /// entry for every subscription covering the change, whether or not its filter matches (so
    /// the entry tells nothing of a row it may not see), and a subscription filtering on a
    /// column its role may not select matches nothing (its answer would tell the column's
    /// value).
    fn collect(
        &self,
        change: &ChangeEvent,
        sight: Sight<'_>,
        record: &mut Record<'_>,
    ) -> (Vec<Delivery>, Vec<u32>) {
        let careful = sight.needs_care();
        let maps: Vec<Arc<DashMap<ChannelKey, Arc<PgChannel>>>> = lookups(change)
            .iter()
            .filter_map(|k| self.by_table.get(k).map(|m| Arc::clone(m.value())))
            .collect();
        let mut seen: HashSet<ChannelKey> = HashSet::new();
        let mut out = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        let several = maps.len() > 1;
        for map in maps {
            for entry in map.iter() {
                let channel = entry.value();
                if several && !seen.insert(channel.key.clone()) {
                    continue;
                }
                record.subscriber();
                // The ids go into one vector shared by the whole change (no allocation per
                // recipient). Equal ids (identical subscriptions) are listed once: channels whose
                // ids are all distinct (the usual case) need no check; others use a set, so the
                // work stays linear in the channel's subscriptions.
                let start = ids.len();
                let mut allowed: Option<&[String]> = None;
                if careful {
                    match sight.decide(channel.claims_key, &channel.claims_json, &channel.role) {
                        Decision::Hide => {
                            record.hidden();
                            continue;
                        }
                        Decision::Error => {
                            let mut listed = HashSet::new();
                            for sub in channel.subs.iter().filter(|s| s.covers(change)) {
                                if listed.insert(sub.id) {
                                    ids.push(sub.id);
                                }
                            }
                            if ids.len() > start {
                                out.push((Arc::clone(channel), start..ids.len(), None, true));
                            }
                            continue;
                        }
                        Decision::Show { columns, .. } => allowed = columns.as_deref(),
                    }
                }
                let readable = |sub: &PgSub| {
                    allowed.is_none_or(|allowed| {
                        sub.filter
                            .as_ref()
                            .is_none_or(|f| f.columns().all(|c| allowed.iter().any(|a| a == c)))
                    })
                };
                let mut every_column = false;
                let mut errored = false;
                let mut listed: Option<HashSet<u32>> = (!channel.unique_ids).then(HashSet::new);
                let mut cols: Vec<&String> = Vec::new();
                for sub in channel.subs.iter().filter(|s| readable(s)) {
                    match sub.verdict(change) {
                        Verdict::Skip => {}
                        Verdict::Error => errored = true,
                        Verdict::Deliver => {
                            if listed.as_mut().is_none_or(|l| l.insert(sub.id)) {
                                ids.push(sub.id);
                            }
                            match &sub.select {
                                None => every_column = true,
                                Some(selected) if !every_column => cols.extend(selected),
                                Some(_) => {}
                            }
                        }
                    }
                }
                let mid = ids.len();
                if errored {
                    // Subscriptions that get an error entry get it in a frame of their own.
                    let mut listed: Option<HashSet<u32>> = (!channel.unique_ids).then(HashSet::new);
                    for sub in channel.subs.iter().filter(|s| readable(s)) {
                        if sub.verdict(change) == Verdict::Error
                            && listed.as_mut().is_none_or(|l| l.insert(sub.id))
                        {
                            ids.push(sub.id);
                        }
                    }
                    out.push((Arc::clone(channel), mid..ids.len(), None, true));
                }
                if mid == start {
                    continue;
                }
                // Subscriptions with different column selections on one channel are served
                // the union of their columns in one frame (the client filters by id).
                let select = if every_column {
                    None
                } else {
                    let mut cols: Vec<String> = cols.into_iter().cloned().collect();
                    cols.sort();
                    cols.dedup();
                    Some(cols)
                };
                out.push((Arc::clone(channel), start..mid, select, false));
            }
        }
        (out, ids)
    }
}

/// The index keys a change's channels are found under: its table, its schema's `*`, `*.*`.
fn lookups(change: &ChangeEvent) -> [TableKey; 3] {
    let schema = change.table.schema.clone();
    [
        (schema.clone(), change.table.name.clone()),
        (schema, "*".to_owned()),
        ("*".to_owned(), "*".to_owned()),
    ]
}

/// What makes two channels' frames for one change identical within one claim set: the frame
/// prefix (topic and serializer), the ids listed, the column selection, and the reason of an
/// error entry (empty: the change's own).
type FrameKey<'a> = (
    &'a str,
    &'a [u32],
    Option<&'a [String]>,
    Option<&'static str>,
);

/// A channel, where the ids of its matching subscriptions are, their column selection, and
/// whether the frame is an error entry.
type Delivery = (
    Arc<PgChannel>,
    std::ops::Range<usize>,
    Option<Vec<String>>,
    bool,
);

/// Step 2: groups deliveries by identical claims. Every group is delivered today; row-level
/// security will check each group's change once with that group's claims and drop the group
/// (or trim its columns) when the role may not see the row.
fn authorize(deliveries: &[Delivery]) -> Vec<Vec<&Delivery>> {
    // The common case, one claim set for every recipient, costs no grouping. Claims are
    // grouped by their text: equal fingerprints are only a hint.
    let same = |a: &PgChannel, b: &PgChannel| {
        a.claims_key == b.claims_key
            && (Arc::ptr_eq(&a.claims_json, &b.claims_json) || a.claims_json == b.claims_json)
    };
    if let Some((first, ..)) = deliveries.first() {
        if deliveries.iter().all(|d| same(&d.0, first)) {
            return vec![deliveries.iter().collect()];
        }
    }
    let mut groups: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for delivery in deliveries {
        groups
            .entry(&delivery.0.claims_json)
            .or_default()
            .push(delivery);
    }
    groups.into_values().collect()
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
