//! Stage 3: routes each decoded change to the channels whose subscriptions match.
//!
//! Fed by the listener with [`ChangeEvent`]s in commit order; feeds each connection's outbound
//! queue (stage 4). Channels are indexed by the `(schema, table)` they subscribe to (`*` for
//! wildcards), so a change visits only the channels of its table, never every subscription.
//! Each change's `data` body was serialized once by the decoder; per channel only the frame
//! around it (topic, `ids`) is written. Delivery runs in three steps — collect matching
//! channels, authorize them grouped by their claims, push — so row-level security can check one
//! change once per distinct claim set rather than once per subscriber.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::subscription::PgSub;
use crate::auth::Claims;
use crate::pg::decode::ChangeEvent;
use crate::session::outbound::{Frame, Outbound, PushError};
use crate::session::protocol::{self, Vsn};

/// Identifies a connection within this node.
pub type ConnId = u64;

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
    /// Validated subscriptions, in join order.
    pub subs: Vec<PgSub>,
    /// The channel token's claims (row-level security groups deliveries by them).
    pub claims: Arc<Claims>,
    /// Fingerprint of `claims`: equal claims, equal key.
    claims_key: u64,
    /// Frame text before the payload, written once at subscribe time.
    prefix: String,
    /// Frame text after the payload.
    suffix: String,
}

impl PgChannel {
    /// Builds the channel entry.
    pub fn new(
        key: ChannelKey,
        outbound: Outbound,
        vsn: Vsn,
        subs: Vec<PgSub>,
        claims: Arc<Claims>,
    ) -> PgChannel {
        let prefix = protocol::frame_prefix(vsn, None, None, &key.topic, "postgres_changes");
        let suffix = protocol::frame_suffix(vsn, None).into_owned();
        let claims_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(&*claims)
                .unwrap_or_default()
                .hash(&mut h);
            h.finish()
        };
        PgChannel {
            key,
            outbound,
            vsn,
            subs,
            claims,
            claims_key,
            prefix,
            suffix,
        }
    }

    fn table_keys(&self) -> HashSet<TableKey> {
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
    by_table: DashMap<TableKey, Arc<DashMap<ChannelKey, Arc<PgChannel>>>>,
    /// Where each channel is registered, to remove it.
    registered: DashMap<ChannelKey, HashSet<TableKey>>,
    /// What the router did so far.
    pub stats: Stats,
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
        for table in &keys {
            self.by_table
                .entry(table.clone())
                .or_default()
                .insert(key.clone(), Arc::clone(&channel));
        }
        let old = self.registered.insert(key.clone(), keys.clone());
        for stale in old.unwrap_or_default().difference(&keys) {
            self.remove_from(stale, &key);
        }
    }

    /// Removes a channel's subscriptions, if any.
    pub fn unsubscribe(&self, key: &ChannelKey) {
        if let Some((_, keys)) = self.registered.remove(key) {
            for table in &keys {
                self.remove_from(table, key);
            }
        }
    }

    fn remove_from(&self, table: &TableKey, key: &ChannelKey) {
        let now_empty = match self.by_table.get(table) {
            Some(map) => {
                map.remove(key);
                map.is_empty()
            }
            None => false,
        };
        if now_empty {
            self.by_table.remove_if(table, |_, map| map.is_empty());
        }
    }

    /// Channels with Postgres Changes subscriptions.
    pub fn channel_count(&self) -> usize {
        self.registered.len()
    }

    /// Routes `change` to every matching channel: one frame per channel, listing the ids of all
    /// its matching subscriptions.
    pub fn route(&self, change: &ChangeEvent, max_change_bytes: usize) -> Routed {
        let deliveries = self.collect(change);
        let mut routed = Routed::default();
        let mut bodies: HashMap<Option<Vec<String>>, Arc<str>> = HashMap::new();
        for group in authorize(deliveries) {
            for (channel, ids, select) in group {
                let body = match select {
                    None => Arc::clone(&change.data),
                    Some(cols) => {
                        Arc::clone(bodies.entry(Some(cols.clone())).or_insert_with(|| {
                            Arc::from(change.data_json(Some(&cols), max_change_bytes))
                        }))
                    }
                };
                let mut text = String::with_capacity(
                    channel.prefix.len() + body.len() + channel.suffix.len() + 32,
                );
                text.push_str(&channel.prefix);
                text.push_str("{\"ids\":[");
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    // Writing into a String cannot fail.
                    let _ = write!(text, "{id}");
                }
                text.push_str("],\"data\":");
                text.push_str(&body);
                text.push('}');
                text.push_str(&channel.suffix);
                match channel.outbound.push(Frame::from(text)) {
                    Ok(()) => routed.delivered += 1,
                    Err(PushError::Full | PushError::Closed) => routed.dropped += 1,
                }
            }
        }
        self.stats.changes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .delivered
            .fetch_add(routed.delivered as u64, Ordering::Relaxed);
        self.stats
            .dropped
            .fetch_add(routed.dropped as u64, Ordering::Relaxed);
        metrics::counter!("gateway_router_deliveries_total").increment(routed.delivered as u64);
        if routed.dropped > 0 {
            metrics::counter!("gateway_router_dropped_total").increment(routed.dropped as u64);
        }
        routed
    }

    /// Step 1: the channels with at least one matching subscription, each once, with the ids
    /// of its matching subscriptions and the column selection they share.
    fn collect(&self, change: &ChangeEvent) -> Vec<Delivery> {
        let schema = change.table.schema.clone();
        let name = change.table.name.clone();
        let lookups = [
            (schema.clone(), name),
            (schema, "*".to_owned()),
            ("*".to_owned(), "*".to_owned()),
        ];
        let maps: Vec<Arc<DashMap<ChannelKey, Arc<PgChannel>>>> = lookups
            .iter()
            .filter_map(|k| self.by_table.get(k).map(|m| Arc::clone(m.value())))
            .collect();
        let mut seen: HashSet<ChannelKey> = HashSet::new();
        let mut out = Vec::new();
        let several = maps.len() > 1;
        for map in maps {
            for entry in map.iter() {
                let channel = entry.value();
                if several && !seen.insert(channel.key.clone()) {
                    continue;
                }
                let matching: Vec<&PgSub> =
                    channel.subs.iter().filter(|s| s.matches(change)).collect();
                if matching.is_empty() {
                    continue;
                }
                // Subscriptions with different column selections on one channel are served
                // the union of their columns in one frame (the client filters by id).
                let select = if matching.iter().any(|s| s.select.is_none()) {
                    None
                } else {
                    let mut cols: Vec<String> = matching
                        .iter()
                        .flat_map(|s| s.select.iter().flatten().cloned())
                        .collect();
                    cols.sort();
                    cols.dedup();
                    Some(cols)
                };
                let mut ids: Vec<u32> = matching.iter().map(|s| s.id).collect();
                ids.dedup();
                out.push((Arc::clone(channel), ids, select));
            }
        }
        out
    }
}

/// A channel, the ids of its matching subscriptions, and their column selection.
type Delivery = (Arc<PgChannel>, Vec<u32>, Option<Vec<String>>);

/// Step 2: groups deliveries by identical claims. Every group is delivered today; row-level
/// security will check each group's change once with that group's claims and drop the group
/// (or trim its columns) when the role may not see the row.
fn authorize(deliveries: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    // The common case, one claim set for every recipient, costs no grouping.
    let first = deliveries.first().map(|d| d.0.claims_key);
    if deliveries.iter().all(|d| Some(d.0.claims_key) == first) {
        return vec![deliveries];
    }
    let mut groups: HashMap<u64, Vec<Delivery>> = HashMap::new();
    for delivery in deliveries {
        groups
            .entry(delivery.0.claims_key)
            .or_default()
            .push(delivery);
    }
    groups.into_values().collect()
}
