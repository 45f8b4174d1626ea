//! Broadcast and presence: the hub that relays user messages and presence between the members
//! of a channel, on this node and, over the cluster bus, on every node sharing the database.
//!
//! # Data flow
//!
//! ```text
//! session (broadcast push, kind 3)  ─┐
//! REST  POST /api/broadcast          ├─> Hub::send ──> local fan-out (members' Outbound, stage 4)
//!                                    │            └──> publisher ──NOTIFY realtime_bus──┐
//! session (track / untrack / leave) ─┴─> Hub::track ─> presence::State ─> presence_diff │
//!                                                  └──> publisher (rows + NOTIFY) ──────┤
//! SQL realtime.send / send_binary / broadcast_changes ──row + NOTIFY at commit──────────┤
//!                                                                                       v
//!   capture::listener (the node's one LISTEN connection) ─BusMessage─> bus::run ─> Hub (remote
//!   deliveries, presence diffs, reconciliation from realtime.presences after a gap)
//! ```
//!
//! Members are indexed by channel name in a [`DashMap`] (sharded, like the change router). Each
//! message is serialized once and each distinct frame is encoded at most once per fan-out —
//! one text frame per serializer version (`presence_diff`, JSON broadcasts) and one kind-4 binary
//! frame for raw-binary payloads, which vsn 1 sockets never get (docs/protocol.md 2.3) — and every
//! recipient's queue gets a clone of the same bytes. A push never waits: a full queue closes
//! that client as a slow consumer, and fan-out goes on.
//!
//! A client's broadcast is delivered to the local members at once (the sender only when it
//! joined with `broadcast.self`) and handed to the [`publisher`], which sends it to the other
//! nodes; each node ignores what it published itself. Presence works the same way, and every
//! presence change is also written to `realtime.presences` in the transaction that notifies it,
//! so a node that missed notifications (listener reconnect) rebuilds the other nodes' presence
//! from those rows, and a lost node's presence is removed by whichever node runs
//! `realtime.presence_prune` first ([`bus::run_maintenance`]). See [`envelope`] for the message
//! formats and [`store`] for the SQL.
//!
//! Database messages (`realtime.send`, `realtime.send_binary`, `realtime.broadcast_changes`)
//! carry their row id through the fan-out, so a private channel joined with
//! `config.broadcast.replay` receives each once: [`replay`] holds its live broadcasts while the
//! stored ones are read, then queues the stored ones and the held ones, in that order, minus the
//! held ones it replayed.
//!
//! A private channel and the public channel of the same name are two channels (docs/protocol.md
//! 7.5): the hub keys every channel by [`channel_key`], which keeps them apart, and a member of a
//! private channel receives broadcasts and presence diffs only when its token may read them
//! ([`Member::reads_broadcast`], [`Member::reads_presence`], decided by `auth::channel` before it
//! joins). Who may send is decided before a message reaches the hub.
//!
//! Lock order, never reversed: a `topics` shard, then a topic's `presence`, then its `members`.
//! No lock is held across an `.await`.

pub mod bus;
pub mod envelope;
#[cfg(test)]
mod key_proptests;
pub mod publisher;
pub mod replay;
pub mod rest;
pub mod store;
pub mod trace;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::change::BusMessage;
use crate::conn::ConnId;
use crate::outbound::{Frame, Kind, Outbound, Tally};
use crate::presence;
use crate::protocol::{self, Vsn};
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// The event of user broadcasts.
const BROADCAST_EVENT: &str = "broadcast";
/// The event of presence diffs.
const PRESENCE_DIFF_EVENT: &str = "presence_diff";

/// Why a broadcast or a presence change was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message is larger than `--max-message-bytes`.
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A REST request that does not have the documented shape.
    #[error("invalid broadcast request: {0}")]
    Invalid(String),
    /// The channel holds as much presence as `--max-presence-per-channel` and
    /// `--max-presence-bytes-per-channel` allow.
    #[error("the channel's presence is full")]
    PresenceFull,
    /// A REST request without a valid token.
    #[error("broadcast request not authorized")]
    Unauthorized(#[source] crate::auth::Error),
    /// A REST message to a private channel the token may not send to (docs/protocol.md 7.5).
    #[error("Unauthorized: You do not have permissions to write to this Channel topic: {0}")]
    Forbidden(String),
    /// A REST message to a private channel whose policies the database did not evaluate.
    #[error("Realtime was unable to connect to the project database")]
    AuthorizationUnavailable,
    /// The stored messages a join asked to replay could not be read: the database failed, or
    /// did not answer in time (`None`).
    #[error("Realtime was unable to replay messages")]
    ReplayUnavailable(#[source] Option<sqlx::Error>),
}

/// What the hub needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node (messages it published come back over the bus and are ignored).
    pub node_id: String,
    /// Largest broadcast or tracked presence payload, in bytes.
    pub max_message_bytes: usize,
    /// How much presence one channel may hold.
    pub presence_bounds: presence::Bounds,
    /// A node silent this long is lost: its presence is removed.
    pub stale_timeout: Duration,
    /// How often lost nodes' presence and old bus rows are pruned, and each node audits its
    /// view of the bus (presence reloaded, missed database broadcasts delivered).
    pub maintenance_interval: Duration,
    /// Database messages (`realtime.messages` rows) are deleted when older than this.
    pub message_retention: Duration,
    /// Broadcasts each channel remembers for delivery diagnostics ([`trace`]).
    pub trace_depth: usize,
}

/// A user message to relay.
#[derive(Debug, Clone)]
pub enum Message {
    /// A JSON broadcast: the serialized payload object clients receive,
    /// `{"type":"broadcast","event":E,"payload":P}` plus `"meta"` when there is some.
    Json(Arc<str>),
    /// A raw-binary broadcast (binary push encoding 0): delivered as kind 4 to vsn 2 sockets.
    Binary {
        /// The user event.
        event: Arc<str>,
        /// Metadata object, serialized, if any.
        meta: Option<Arc<str>>,
        /// The user payload.
        payload: Bytes,
    },
}

impl Message {
    /// Bytes counted against `--max-message-bytes`.
    pub fn size(&self) -> usize {
        match self {
            Message::Json(json) => json.len(),
            Message::Binary { payload, .. } => payload.len(),
        }
    }
}

/// One channel membership of a local connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection.
    pub conn: ConnId,
    /// Its queue.
    pub outbound: Outbound,
    /// Its serializer.
    pub vsn: Vsn,
    /// `broadcast.self`: whether it receives its own broadcasts.
    pub self_broadcast: bool,
    /// Whether it receives broadcasts (always on a public channel; on a private one, when its
    /// token may read them).
    pub reads_broadcast: bool,
    /// Whether it receives presence diffs (likewise).
    pub reads_presence: bool,
    /// While its channel replays stored messages: where its live broadcasts wait
    /// ([`replay`]); `None` otherwise.
    pub hold: Option<Arc<replay::Hold>>,
    /// The ids of the database messages its channel replayed, which it never receives live
    /// ([`replay`]); `None` when it replayed nothing.
    pub replayed: Option<Arc<HashSet<uuid::Uuid>>>,
}

/// Marks a private channel's key, and escapes a public name that starts with it.
const KEY_MARK: char = '\u{1}';
/// Prefix of a private channel's key.
const PRIVATE_KEY: &str = "\u{1}private:";
/// Prefix of the key of a public channel whose name starts with [`KEY_MARK`].
const ESCAPED_KEY: &str = "\u{1}public:";

/// The hub's key of channel `name`: the name itself for a public channel (escaped when it
/// starts with the mark), the name behind a private prefix for a private one. Distinct
/// (name, private) pairs never share a key, so a public channel never hears a private one.
/// The key is what the cluster bus and `realtime.presences` carry.
pub fn channel_key(name: &str, private: bool) -> Cow<'_, str> {
    if private {
        Cow::Owned(format!("{PRIVATE_KEY}{name}"))
    } else if name.starts_with(KEY_MARK) {
        Cow::Owned(format!("{ESCAPED_KEY}{name}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// The channel name of a hub key (the inverse of [`channel_key`]).
pub fn channel_name(key: &str) -> &str {
    key.strip_prefix(PRIVATE_KEY)
        .or_else(|| key.strip_prefix(ESCAPED_KEY))
        .unwrap_or(key)
}

/// Counters of what the hub did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages sent by local clients, REST or this node's bus input.
    pub messages: AtomicU64,
    /// Frames queued to members.
    pub delivered: AtomicU64,
    /// Frames refused by full or closed queues.
    pub dropped: AtomicU64,
}

/// The hub of one node; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    node: Arc<str>,
    /// Channel name -> its members and presence. A topic stays while it has members or
    /// presence entries; entries are added only under the shard's entry guard, so a topic
    /// being removed as idle never loses an addition.
    topics: DashMap<Arc<str>, Arc<Topic>>,
    publisher: publisher::Publisher,
    /// Replay reads stored messages through it.
    pool: PgPool,
    /// Where undeliverable database messages are audited.
    registry: Registry,
    max_message_bytes: usize,
    presence_bounds: presence::Bounds,
    stats: Stats,
    /// Broadcasts each channel remembers.
    trace_depth: usize,
}

/// One channel on this node.
#[derive(Debug)]
struct Topic {
    /// `realtime:<name>`, as frames carry it.
    topic: Arc<str>,
    /// Local members, by connection (a connection joins a topic at most once).
    members: RwLock<HashMap<ConnId, Member>>,
    /// The topic's presence, cluster-wide. Held while its diff is fanned out and queued for
    /// the bus, so every member and every node sees one topic's diffs in one order.
    presence: Mutex<presence::State>,
    /// Its recent broadcasts and totals (delivery diagnostics).
    trace: trace::TopicTrace,
}

impl Topic {
    fn new(key: &str) -> Topic {
        Topic {
            topic: Arc::from(format!("realtime:{}", channel_name(key))),
            members: RwLock::default(),
            presence: Mutex::default(),
            trace: trace::TopicTrace::default(),
        }
    }

    fn is_idle(&self) -> bool {
        lock(&self.presence).is_empty() && read(&self.members).is_empty()
    }
}

impl Hub {
    /// Starts the hub and its background tasks (bus publisher, bus receiver, maintenance) on
    /// `shutdown`'s tracker. Returns the sender the change listener forwards bus notifications
    /// to ([`crate::capture::listener::Listener::with_bus`], channel [`envelope::CHANNEL`]).
    ///
    /// The first thing the publisher does is remove whatever presence rows a previous run of
    /// this node left, telling the other nodes to drop them.
    pub fn start(
        pool: PgPool,
        settings: Settings,
        registry: Registry,
        shutdown: &Shutdown,
    ) -> (Hub, mpsc::UnboundedSender<BusMessage>) {
        let node: Arc<str> = Arc::from(settings.node_id.as_str());
        let (publisher, items) = publisher::Publisher::channel(Arc::clone(&node));
        publisher.reassert();
        let hub = Hub {
            shared: Arc::new(Shared {
                node: Arc::clone(&node),
                topics: DashMap::new(),
                publisher,
                pool: pool.clone(),
                registry,
                max_message_bytes: settings.max_message_bytes,
                presence_bounds: settings.presence_bounds,
                stats: Stats::default(),
                trace_depth: settings.trace_depth,
            }),
        };
        let (bus_tx, bus_rx) = mpsc::unbounded_channel();
        {
            let (hub, pool, s) = (hub.clone(), pool.clone(), shutdown.clone());
            shutdown.spawn("bus_publisher", publisher::run(hub, pool, items, s));
        }
        {
            let (hub, pool, s) = (hub.clone(), pool.clone(), shutdown.clone());
            let audit_every = settings.maintenance_interval;
            shutdown.spawn("bus_receiver", bus::run(hub, pool, bus_rx, audit_every, s));
        }
        shutdown.spawn(
            "bus_maintenance",
            bus::run_maintenance(pool, node, settings, shutdown.clone()),
        );
        (hub, bus_tx)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// The message size limit, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.shared.max_message_bytes
    }

    /// What the hub did so far.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Channels with local members or presence.
    pub fn topic_count(&self) -> usize {
        self.shared.topics.len()
    }

    /// Local memberships (channels joined on this node) that receive broadcasts, and those that
    /// receive presence; counted on demand (for a scrape), each topic's members under its read
    /// lock in turn.
    pub fn reader_counts(&self) -> (usize, usize) {
        let mut broadcast = 0;
        let mut presence = 0;
        for topic in &self.shared.topics {
            for member in read(&topic.members).values() {
                broadcast += usize::from(member.reads_broadcast);
                presence += usize::from(member.reads_presence);
            }
        }
        (broadcast, presence)
    }

    /// Local members of channel `name`.
    pub fn member_count(&self, name: &str) -> usize {
        self.topic(name).map_or(0, |t| read(&t.members).len())
    }

    /// Every channel active on this node (by hub key, [`channel_key`]), with its local members
    /// and what it relayed since it became active here.
    pub fn channel_totals(&self) -> Vec<(Arc<str>, usize, trace::Totals)> {
        let topics: Vec<(Arc<str>, Arc<Topic>)> = self
            .shared
            .topics
            .iter()
            .map(|t| (Arc::clone(t.key()), Arc::clone(t.value())))
            .collect();
        topics
            .into_iter()
            .map(|(key, t)| (key, read(&t.members).len(), t.trace.totals()))
            .collect()
    }

    /// Channel `key`'s local members, totals and recent broadcasts, if it is active here.
    pub fn channel_trace(
        &self,
        key: &str,
    ) -> Option<(Vec<Member>, trace::Totals, Vec<trace::Sent>)> {
        let topic = self.topic(key)?;
        let members = read(&topic.members).values().cloned().collect();
        Some((members, topic.trace.totals(), topic.trace.recent()))
    }

    /// Adds a membership of channel `name` (a re-join of the same connection replaces it).
    pub fn join(&self, name: &str, member: Member) {
        let topic = self
            .shared
            .topics
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(Topic::new(name)));
        write(&topic.members).insert(member.conn, member);
    }

    /// Sets what connection `conn`'s membership of channel `name` may read (its new token's
    /// rights), keeping the rest of the membership.
    pub fn set_reads(&self, name: &str, conn: ConnId, broadcast: bool, presence: bool) {
        if let Some(topic) = self.topic(name) {
            if let Some(member) = write(&topic.members).get_mut(&conn) {
                member.reads_broadcast = broadcast;
                member.reads_presence = presence;
            }
        }
    }

    /// Ends a membership: it leaves the channel, and its presence, if any, leaves with a diff
    /// to the remaining members and the other nodes.
    pub fn leave(&self, name: &str, conn: ConnId) {
        let Some(topic) = self.topic(name) else {
            return;
        };
        write(&topic.members).remove(&conn);
        self.untrack_in(name, &topic, conn);
        self.shared.topics.remove_if(name, |_, t| t.is_idle());
    }

    /// The `presence_state` payload of channel `name`.
    pub fn presence_state(&self, name: &str) -> String {
        self.topic(name)
            .map_or_else(|| "{}".to_owned(), |t| lock(&t.presence).to_json())
    }

    /// Relays `message` to every member of channel `name` on every node: `from` (a local
    /// member) receives it only if it joined with `broadcast.self`. Returns how many local
    /// members got it.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the message is over `--max-message-bytes` (nothing is sent).
    pub fn send(
        &self,
        name: &str,
        private: bool,
        from: Option<ConnId>,
        message: &Message,
    ) -> Result<usize, Error> {
        let size = message.size();
        if size > self.shared.max_message_bytes {
            metrics::counter!("gateway_broadcast_too_large_total").increment(1);
            return Err(Error::TooLarge {
                size,
                limit: self.shared.max_message_bytes,
            });
        }
        let key = channel_key(name, private);
        let delivered = self.deliver(&key, trace::Origin::Local(from), message, None);
        self.shared.publisher.broadcast(&key, message);
        Ok(delivered)
    }

    /// Tracks `payload` as the presence of `conn`'s membership of channel `name` under `key`.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the payload serializes to more than `--max-message-bytes`.
    pub fn track(
        &self,
        name: &str,
        conn: ConnId,
        key: &str,
        payload: Map<String, Value>,
    ) -> Result<(), Error> {
        let size = serde_json::to_string(&payload).map_or(0, |s| s.len());
        if size > self.shared.max_message_bytes {
            return Err(Error::TooLarge {
                size,
                limit: self.shared.max_message_bytes,
            });
        }
        let topic = self
            .shared
            .topics
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(Topic::new(name)))
            .clone();
        let mut state = lock(&topic.presence);
        if !state.admits(conn, key, size, self.shared.presence_bounds) {
            metrics::counter!("gateway_presence_refused_total").increment(1);
            return Err(Error::PresenceFull);
        }
        if let Some(diff) = state.track(conn, &self.shared.node, key, payload) {
            self.presence_diff(&topic, &diff);
            self.shared.publisher.presence(name, &diff);
        }
        Ok(())
    }

    /// Removes the presence of `conn`'s membership of channel `name`, if any.
    pub fn untrack(&self, name: &str, conn: ConnId) {
        if let Some(topic) = self.topic(name) {
            self.untrack_in(name, &topic, conn);
        }
    }

    fn untrack_in(&self, name: &str, topic: &Topic, conn: ConnId) {
        let mut state = lock(&topic.presence);
        if let Some(diff) = state.untrack(conn) {
            self.presence_diff(topic, &diff);
            self.shared.publisher.presence(name, &diff);
        }
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.shared.topics.get(name).map(|t| Arc::clone(t.value()))
    }

    /// Local fan-out of a broadcast (`id`: a database message's row id); returns how many
    /// members got it.
    fn deliver(
        &self,
        name: &str,
        origin: trace::Origin,
        message: &Message,
        id: Option<uuid::Uuid>,
    ) -> usize {
        self.shared.stats.messages.fetch_add(1, Ordering::Relaxed);
        let Some(topic) = self.topic(name) else {
            return 0;
        };
        let from = match origin {
            trace::Origin::Local(from) => from,
            trace::Origin::Bus => None,
        };
        let fanout = self.fan_out(&topic, BROADCAST_EVENT, message, from, id);
        let depth = self.shared.trace_depth;
        topic.trace.broadcast(depth, origin, message, fanout);
        usize::try_from(fanout.delivered).unwrap_or(usize::MAX)
    }

    fn presence_diff(&self, topic: &Topic, diff: &presence::Diff) {
        if diff.is_empty() {
            return;
        }
        let message = Message::Json(Arc::from(diff.to_json()));
        let fanout = self.fan_out(topic, PRESENCE_DIFF_EVENT, &message, None, None);
        topic.trace.presence(&fanout);
    }

    /// Queues `message` as `event` to every member of `topic` but `from` (unless it asked for
    /// its own broadcasts). Each distinct frame is encoded once. A member whose channel is
    /// replaying holds broadcasts instead (with `id`, a database message's row id).
    fn fan_out(
        &self,
        topic: &Topic,
        event: &str,
        message: &Message,
        from: Option<ConnId>,
        id: Option<uuid::Uuid>,
    ) -> trace::Fanout {
        let members = read(&topic.members);
        let mut fanout = trace::Fanout {
            members: members.len() as u64,
            ..trace::Fanout::default()
        };
        // Per serializer version: not encoded yet / encoded (None: not deliverable to it).
        let mut frames: [Option<Option<Frame>>; 2] = [None, None];
        // The gateway has the message from now on: delivery latency is measured from here.
        let origin = SystemTime::now();
        let mut tally = Tally::default();
        for member in members.values() {
            if from == Some(member.conn) && !member.self_broadcast {
                fanout.skipped_sender += 1;
                continue;
            }
            let reads = match event {
                BROADCAST_EVENT => member.reads_broadcast,
                _ => member.reads_presence,
            };
            if !reads {
                fanout.not_authorized += 1;
                continue;
            }
            if event == BROADCAST_EVENT && replay::holds_back(member, id, message) {
                continue;
            }
            let slot = match member.vsn {
                Vsn::V1 => 0,
                Vsn::V2 => 1,
            };
            let frame = frames[slot].get_or_insert_with(|| {
                encode(member.vsn, &topic.topic, event, message).map(|f| f.since(origin))
            });
            let Some(frame) = frame else {
                fanout.unencodable += 1;
                continue;
            };
            tally.count(member.outbound.push(frame.clone()));
        }
        self.count(tally);
        fanout.delivered = tally.delivered;
        fanout.dropped = tally.dropped;
        fanout
    }

    /// Adds what one fan-out queued and dropped to the hub's stats and metrics.
    fn count(&self, tally: Tally) {
        let stats = &self.shared.stats;
        stats
            .delivered
            .fetch_add(tally.delivered, Ordering::Relaxed);
        stats.dropped.fetch_add(tally.dropped, Ordering::Relaxed);
        tally.record(
            "gateway_broadcast_deliveries_total",
            "gateway_broadcast_dropped_total",
        );
    }

    // ---- the bus side -----------------------------------------------------------------------

    /// A broadcast from another node (or the database, with its row `id`) to the channel of hub
    /// key `key`: every local member that may read it gets it.
    fn deliver_remote(&self, key: &str, message: &Message, id: Option<uuid::Uuid>) {
        self.deliver(key, trace::Origin::Bus, message, id);
    }

    /// A presence diff another node published.
    fn apply_presence(
        &self,
        name: &str,
        node: &Arc<str>,
        joins: Vec<presence::Remote>,
        leaves: &[String],
    ) {
        if joins.is_empty() && self.topic(name).is_none() {
            return;
        }
        {
            // The entry guard keeps the topic from being removed as idle before the joins land.
            let topic = self
                .shared
                .topics
                .entry(Arc::from(name))
                .or_insert_with(|| Arc::new(Topic::new(name)));
            let mut state = lock(&topic.presence);
            let diff = state.apply(node, joins, leaves);
            self.presence_diff(&topic, &diff);
        }
        self.shared.topics.remove_if(name, |_, t| t.is_idle());
    }

    /// Makes the presence of the nodes that `covers` accepts match `rows` (by channel name).
    fn reconcile(
        &self,
        covers: impl Fn(&str) -> bool,
        mut rows: HashMap<String, Vec<(Arc<str>, presence::Remote)>>,
    ) {
        let mut names: Vec<String> = self
            .shared
            .topics
            .iter()
            .map(|t| t.key().to_string())
            .collect();
        names.extend(
            rows.keys()
                .filter(|n| !self.shared.topics.contains_key(n.as_str()))
                .cloned(),
        );
        for name in names {
            let topic_rows = rows.remove(&name).unwrap_or_default();
            if topic_rows.is_empty() && self.topic(&name).is_none() {
                continue;
            }
            {
                let topic = self
                    .shared
                    .topics
                    .entry(Arc::from(name.as_str()))
                    .or_insert_with(|| Arc::new(Topic::new(&name)));
                let mut state = lock(&topic.presence);
                let diff = state.reconcile(&covers, topic_rows);
                self.presence_diff(&topic, &diff);
            }
            self.shared
                .topics
                .remove_if(name.as_str(), |_, t| t.is_idle());
        }
    }

    /// This node's presence entries, as durable rows.
    fn local_rows(&self) -> Vec<store::PresenceRow> {
        let topics: Vec<(Arc<str>, Arc<Topic>)> = self
            .shared
            .topics
            .iter()
            .map(|t| (Arc::clone(t.key()), Arc::clone(t.value())))
            .collect();
        let mut rows = Vec::new();
        for (name, topic) in topics {
            let state = lock(&topic.presence);
            rows.extend(
                state
                    .local_entries()
                    .map(|e| store::PresenceRow::of(&name, e)),
            );
        }
        rows
    }

    fn publisher(&self) -> &publisher::Publisher {
        &self.shared.publisher
    }
}

/// Encodes one member's frame; `None` when the message cannot go to this serializer (raw
/// binary to vsn 1, or a kind-4 field over 255 bytes).
fn encode(vsn: Vsn, topic: &str, event: &str, message: &Message) -> Option<Frame> {
    match message {
        Message::Json(json) => Some(Frame::text(
            Kind::of_event(event),
            protocol::encode_text(vsn, None, None, topic, event, json),
        )),
        Message::Binary {
            event: user_event,
            meta,
            payload,
        } => match vsn {
            Vsn::V1 => None,
            Vsn::V2 => {
                match protocol::encode_binary_broadcast(
                    topic,
                    user_event,
                    meta.as_deref(),
                    payload,
                    false,
                ) {
                    Ok(bytes) => Some(Frame::binary(Kind::Broadcast, &bytes)),
                    Err(e) => {
                        tracing::debug!(error = %e, "binary broadcast not encodable");
                        None
                    }
                }
            }
        },
    }
}

// Poisoning only means another thread panicked mid-update; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// A channel membership's broadcast and presence settings, from its join config
/// (docs/protocol.md 5.1, read by `session::join`): `broadcast.self`, `broadcast.ack`, `presence.key`, `presence.enabled`.
/// Missing or `null` objects mean the defaults; booleans may be strings, any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The sender receives its own broadcasts.
    pub self_broadcast: bool,
    /// Each broadcast push is answered.
    pub ack: bool,
    /// The presence key: `presence.key`, else a random UUID for this join.
    pub presence_key: String,
    /// `presence_state` is pushed after the join (or, failing that, after the first track).
    pub presence_enabled: bool,
}
