//! The cluster bus: how gateway nodes sharing one database hear each other's broadcasts and
//! presence changes, and the database's own broadcasts (`realtime.send`, `realtime.send_binary`,
//! `realtime.broadcast_changes`).
//!
//! The bus is PostgreSQL `NOTIFY` on one channel, [`CHANNEL`]. Nodes publish through their
//! [`super::publisher`]; every node receives through its one change-listener connection
//! ([`crate::capture::listener`] forwards the channel's notifications and reports a `Gap` whenever
//! that connection was (re)established), and [`run`] hands each message to the [`Hub`].
//! Nothing here is a protocol of our own beyond the JSON of each notification:
//!
//! | `k` | fields | meaning |
//! |---|---|---|
//! | `b` | `n` node, `s` seq, `t` channel, `x` private, `m` message | a JSON broadcast; `m` is the payload clients receive |
//! | `bin` | `n`, `s`, `t`, `x`, `e` event, `meta`, `h` hex payload | a raw-binary broadcast |
//! | `p` | `n`, `s`, `t`, `j` `[{r, k, m}]` joins, `l` `[ref]` leaves | a presence diff of node `n` |
//! | `sync` | `node` (and `n` when a node sent it) | reload `node`'s presence from `realtime.presences` |
//! | `spill` | `n`, `id` | a message over the inline limit, in `realtime.bus_spill` row `id` |
//! | `db` | `id`, and `t`, `x`, `e`, `d` (or `h`, hex bytes) when small enough | a database message: a `realtime.messages` row of `realtime.send`, `send_binary` or `broadcast_changes` |
//!
//! `s` makes every notification of a node distinct (PostgreSQL folds identical payloads sent in
//! one transaction). A node ignores what it published itself (`n` is its id): it delivered
//! locally already. Messages that do not parse are counted and skipped.
//!
//! After a gap, this node reloads the presence of every other node from `realtime.presences`
//! (diffing against what it held, so members see only what changed) and delivers the
//! database messages it missed: rows inserted since shortly before the gap that it has
//! not delivered yet (it remembers delivered ids for [`SEEN_FOR`]). The same audit also runs
//! every maintenance interval, so presence converges and database broadcasts arrive even when
//! a lost notification went unnoticed (a listener that reconnected without reporting the gap).
//! Client broadcasts relayed between nodes during a gap are lost, as they are upstream: they
//! are never stored. A database message larger than `--max-message-bytes` is delivered to no one,
//! counted and audited (`broadcast_undeliverable`).
//! A `sync` naming this node that another node sent (or the prune function) means its rows
//! were removed as if it were lost: it writes them again and tells the others ([`Hub`]'s
//! publisher `reassert`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::envelope::{unhex, Envelope, CHANNEL};
use super::store::DbMessage;
use super::{store, Hub, Message, Settings};
use crate::change::BusMessage;
use crate::protocol::RawJson;
use crate::shutdown::Shutdown;

/// How long delivered database message ids are remembered (so catch-up after a gap never
/// delivers one twice).
pub const SEEN_FOR: Duration = Duration::from_secs(600);
/// Catch-up after a gap looks this much further back than the last message heard, for
/// transactions that committed late.
const CATCH_UP_SLACK: Duration = Duration::from_secs(30);
/// A failed reload after a gap is retried this often.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The receiving side: handles bus notifications and gaps until shutdown.
#[tracing::instrument(name = "bus_receiver", skip_all)]
pub async fn run(
    hub: Hub,
    pool: PgPool,
    mut bus: mpsc::UnboundedReceiver<BusMessage>,
    audit_every: Duration,
    shutdown: Shutdown,
) {
    let mut receiver = Receiver {
        node: Arc::clone(&hub.shared.node),
        hub,
        pool,
        seen: HashMap::new(),
        seen_cap: 4096,
        last_heard: None,
        listening_since: None,
        pending: None,
    };
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit =
        tokio::time::interval_at(tokio::time::Instant::now() + audit_every, audit_every);
    audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retrying = receiver.pending.is_some();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            message = bus.recv() => match message {
                None => return,
                Some(BusMessage::Gap) => receiver.gap().await,
                Some(BusMessage::Notification { channel, payload }) => {
                    if channel == CHANNEL {
                        receiver.last_heard = Some(Instant::now());
                        receiver.notification(&payload).await;
                    }
                }
            },
            _ = retry.tick(), if retrying => receiver.resync().await,
            _ = audit.tick() => receiver.audit(audit_every).await,
        }
    }
}

/// What a reload after a gap still has to do.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Catch up on database messages of this long ago (none after the first connect).
    catch_up: Option<Duration>,
}

#[derive(Debug)]
struct Receiver {
    hub: Hub,
    node: Arc<str>,
    pool: PgPool,
    /// Database message ids delivered, and when.
    seen: HashMap<uuid::Uuid, Instant>,
    seen_cap: usize,
    /// When the last notification arrived (`None` before the first connect).
    last_heard: Option<Instant>,
    /// When the listener first connected: catch-up never reaches further back, since messages
    /// sent before were never this node's to deliver.
    listening_since: Option<Instant>,
    /// A reload after a gap that has not succeeded yet.
    pending: Option<Pending>,
}

impl Receiver {
    async fn gap(&mut self) {
        metrics::counter!("gateway_bus_gaps_total").increment(1);
        let catch_up = self.last_heard.map(|t| t.elapsed() + CATCH_UP_SLACK);
        let catch_up = match (self.pending.and_then(|p| p.catch_up), catch_up) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.pending = Some(Pending { catch_up });
        self.last_heard = Some(Instant::now());
        self.listening_since.get_or_insert_with(Instant::now);
        self.resync().await;
    }

    /// The periodic audit: a resync covering the last period, whether or not a gap was seen.
    async fn audit(&mut self, period: Duration) {
        let window = (period + CATCH_UP_SLACK).min(SEEN_FOR);
        let catch_up = match self.pending.and_then(|p| p.catch_up) {
            Some(w) => w.max(window),
            None => window,
        };
        self.pending = Some(Pending {
            catch_up: Some(catch_up),
        });
        self.resync().await;
    }

    /// Reloads every other node's presence and catches up on database messages.
    async fn resync(&mut self) {
        let Some(pending) = self.pending else {
            return;
        };
        let me = Arc::clone(&self.node);
        match store::presence_rows(&self.pool, &me, None).await {
            Ok(rows) => self.hub.reconcile(|n| n != &*me, rows),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload presence after a bus gap; retrying");
                return;
            }
        }
        let listening_for = self.listening_since.map_or(Duration::ZERO, |t| t.elapsed());
        let window = pending.catch_up.map(|w| w.min(listening_for));
        if let Some(window) = window.filter(|w| !w.is_zero()) {
            match store::missed_messages(&self.pool, window).await {
                Ok(messages) => {
                    let mut caught_up = 0u64;
                    for m in &messages {
                        if self.deliver_db(m) {
                            caught_up += 1;
                        }
                    }
                    if caught_up > 0 {
                        tracing::info!(
                            messages = caught_up,
                            "delivered database broadcasts the bus had missed"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot catch up on database broadcasts; retrying");
                    self.pending = Some(Pending {
                        catch_up: pending.catch_up,
                    });
                    return;
                }
            }
        }
        self.pending = None;
    }

    async fn notification(&mut self, text: &str) {
        let envelope = match Envelope::parse(text) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!("gateway_bus_malformed_total").increment(1);
                tracing::warn!(error = %e, "malformed bus message skipped");
                return;
            }
        };
        let envelope = match envelope {
            Envelope::Spill { n, id } => {
                if *n == *self.node {
                    return;
                }
                match store::spilled(&self.pool, id).await {
                    Ok(Some(text)) => match Envelope::parse(&text) {
                        Ok(Envelope::Spill { .. }) | Err(_) => {
                            metrics::counter!("gateway_bus_malformed_total").increment(1);
                            return;
                        }
                        Ok(e) => e,
                    },
                    Ok(None) => {
                        metrics::counter!("gateway_bus_dropped_total").increment(1);
                        tracing::warn!(id, "spilled bus message gone before it was read");
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("gateway_bus_dropped_total").increment(1);
                        tracing::warn!(error = %e, id, "cannot read a spilled bus message");
                        return;
                    }
                }
            }
            other => other,
        };
        self.handle(envelope).await;
    }

    async fn handle(&mut self, envelope: Envelope) {
        metrics::counter!("gateway_bus_received_total").increment(1);
        match envelope {
            Envelope::Broadcast { n, t, x, m } => {
                if *n != *self.node {
                    let message = Message::Json(m.into_arc());
                    self.hub.deliver_remote(&relayed_key(&t, x), &message, None);
                }
            }
            Envelope::Binary {
                n,
                t,
                x,
                e,
                meta,
                h,
            } => {
                if *n == *self.node {
                    return;
                }
                let Some(payload) = unhex(&h) else {
                    metrics::counter!("gateway_bus_malformed_total").increment(1);
                    return;
                };
                let message = Message::Binary {
                    event: Arc::from(e),
                    meta: meta.map(RawJson::into_arc),
                    payload: payload.into(),
                };
                self.hub.deliver_remote(&relayed_key(&t, x), &message, None);
            }
            Envelope::Presence { n, t, j, l } => {
                if *n != *self.node {
                    let joins = j.into_iter().map(|e| (e.r, e.k, e.m)).collect();
                    self.hub.apply_presence(&t, &Arc::from(n), joins, &l);
                }
            }
            Envelope::Sync { n, node } => {
                if *node == *self.node {
                    if n.as_deref() != Some(&*self.node) {
                        tracing::warn!(
                            "this node's presence was removed as lost; writing it again"
                        );
                        self.hub.publisher().reassert();
                    }
                    return;
                }
                match store::presence_rows(&self.pool, &self.node, Some(&node)).await {
                    Ok(rows) => self.hub.reconcile(|n| n == node, rows),
                    Err(e) => {
                        tracing::warn!(error = %e, node = %node, "cannot reload a node's presence; retrying");
                        self.pending.get_or_insert(Pending { catch_up: None });
                    }
                }
            }
            Envelope::Db { id, t, x, e, d, h } => {
                if self.seen.contains_key(&id) {
                    return;
                }
                if let Some(m) = inline_message(id, t, x, e, d, h.as_deref()) {
                    self.deliver_db(&m);
                    return;
                }
                match store::message(&self.pool, id).await {
                    Ok(Some(m)) => {
                        self.deliver_db(&m);
                    }
                    Ok(None) => tracing::debug!(%id, "database broadcast gone before it was read"),
                    Err(e) => {
                        metrics::counter!("gateway_bus_dropped_total").increment(1);
                        tracing::warn!(error = %e, %id, "cannot read a database broadcast");
                    }
                }
            }
            Envelope::Spill { .. } => {}
        }
    }

    /// Delivers a database message unless it was delivered before (or is over the size limit);
    /// returns whether it was new.
    fn deliver_db(&mut self, m: &DbMessage) -> bool {
        let now = Instant::now();
        if self.seen.insert(m.id, now).is_some() {
            return false;
        }
        if self.seen.len() > self.seen_cap {
            self.seen.retain(|_, at| now.duration_since(*at) < SEEN_FOR);
            self.seen_cap = (self.seen.len() * 2).max(4096);
        }
        let message = m.message(false);
        if self.hub.deliverable(m, &message, true) {
            let key = super::channel_key(&m.topic, m.private);
            self.hub.deliver_remote(&key, &message, Some(m.id));
        }
        true
    }
}

/// The database message a `db` notification carries whole (topic, event, and a JSON or hex
/// payload); `None` when it carries only the id, or a payload that is not hex.
fn inline_message(
    id: uuid::Uuid,
    topic: Option<String>,
    private: Option<bool>,
    event: Option<String>,
    payload: Option<Value>,
    hex: Option<&str>,
) -> Option<DbMessage> {
    let (topic, event) = (topic?, event?);
    let (payload, binary_payload) = match (payload, hex) {
        (_, Some(hex)) => (Value::Null, Some(unhex(hex)?)),
        (Some(payload), None) => (payload, None),
        (None, None) => return None,
    };
    Some(DbMessage {
        id,
        topic,
        event,
        payload,
        binary_payload,
        private: private.unwrap_or(true),
    })
}

/// The hub key of a relayed broadcast: nodes send the key itself as `t`; `x` (private) is set
/// is never set by this version; when set, `t` is a bare channel name.
fn relayed_key(t: &str, private: bool) -> std::borrow::Cow<'_, str> {
    if private {
        super::channel_key(t, true)
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// Periodically removes the presence rows of lost nodes (`realtime.presence_prune`, which tells
/// every node to drop them), old bus rows, and database messages older than
/// `--message-retention`. Every node runs it; the first to see a node lost
/// removes its rows, the others find nothing.
#[tracing::instrument(name = "bus_maintenance", skip_all)]
pub async fn run_maintenance(pool: PgPool, node: Arc<str>, settings: Settings, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(settings.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pruned = store::prune(
            &pool,
            &node,
            settings.stale_timeout,
            settings.message_retention,
        )
        .await;
        match pruned {
            Ok((presence, messages)) => {
                if presence > 0 {
                    tracing::info!(rows = presence, "removed the presence of lost nodes");
                }
                if messages > 0 {
                    metrics::counter!("gateway_broadcast_messages_pruned_total")
                        .increment(messages);
                    tracing::debug!(
                        rows = messages,
                        "database messages past their retention deleted"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune presence and bus rows"),
        }
    }
}
