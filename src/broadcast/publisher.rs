//! The bus publisher: one task per node that sends this node's broadcasts and presence changes
//! to the other nodes, in the order they happened.
//!
//! Fed by the [`Hub`] (which has already delivered to local members) through an unbounded
//! queue that never blocks a session; feeds the database: each batch of queued items is one
//! transaction that writes the presence rows of its changes and `NOTIFY`s every item on
//! [`envelope::CHANNEL`] (a notification over [`envelope::MAX_INLINE_BYTES`] goes into
//! `realtime.bus_spill` and the notification points at it). One transaction per batch keeps the
//! cost of the cluster-wide notify lock to one commit however many messages a burst holds, and
//! one task keeps the order. A failed batch is retried, whole and in order, with back-off.
//!
//! While the database is unreachable items pile up; past [`MAX_PENDING`] they are dropped
//! (counted in `gateway_bus_dropped_total`) and replaced by one `reassert`, which rewrites this
//! node's presence rows from memory and tells the other nodes to reload them — presence
//! recovers, the dropped broadcasts do not. At shutdown the task flushes what is queued and
//! removes this node's presence rows (other nodes see their leaves).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::store::{self, Item};
use super::{envelope, Hub, Message};
use crate::presence;
use crate::shutdown::Shutdown;

/// Most items sent in one transaction.
const MAX_BATCH: usize = 512;
/// Most items kept while the database is unreachable.
pub const MAX_PENDING: usize = 100_000;
/// Most bytes of broadcast envelopes waiting to be published; further broadcasts are not
/// relayed to other nodes (they still reach this node's members) until the backlog drains.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Longest wait between retries of a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long shutdown may spend flushing and retiring.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(3);

/// The handle the hub publishes through; cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Item>,
    node: Arc<str>,
    /// Makes every notification distinct (identical ones in one transaction are folded).
    seq: Arc<AtomicU64>,
    /// Bytes of envelopes queued and not yet published (the channel and the task's backlog).
    queued_bytes: Arc<AtomicUsize>,
    /// Most bytes of broadcasts waiting ([`MAX_PENDING_BYTES`]).
    max_bytes: usize,
}

impl Publisher {
    /// A publisher for `node` and the queue its task drains.
    pub fn channel(node: Arc<str>) -> (Publisher, mpsc::UnboundedReceiver<Item>) {
        Publisher::bounded(node, MAX_PENDING_BYTES)
    }

    /// As [`Publisher::channel`], with room for `max_bytes` of broadcasts.
    fn bounded(node: Arc<str>, max_bytes: usize) -> (Publisher, mpsc::UnboundedReceiver<Item>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let publisher = Publisher {
            tx,
            node,
            seq: Arc::default(),
            queued_bytes: Arc::default(),
            max_bytes,
        };
        (publisher, rx)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn queue(&self, item: Item) {
        self.queued_bytes.fetch_add(item.size(), Ordering::Relaxed);
        // The task lives until shutdown; after that there is no one left to tell.
        let _queued = self.tx.send(item);
    }

    /// Whether a broadcast of `bytes` more fits [`MAX_PENDING_BYTES`]. A flood of broadcasts
    /// faster than the database takes them is refused here, one broadcast at a time, instead of
    /// growing memory or dropping what others queued.
    fn has_room(&self, bytes: usize) -> bool {
        self.queued_bytes.load(Ordering::Relaxed) + bytes <= self.max_bytes
    }

    /// Forgets `bytes` of published (or dropped) envelopes.
    fn published(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Publishes a broadcast to channel `name`.
    pub fn broadcast(&self, name: &str, message: &Message) {
        if !self.has_room(message.size()) {
            metrics::counter!("gateway_bus_dropped_total").increment(1);
            metrics::counter!("gateway_bus_refused_total").increment(1);
            tracing::debug!(
                channel = name,
                "bus backlog full: broadcast not relayed to other nodes"
            );
            return;
        }
        let seq = self.next_seq();
        let envelope = match message {
            Message::Json(json) => envelope::broadcast_envelope(&self.node, seq, name, json),
            Message::Binary {
                event,
                meta,
                payload,
            } => envelope::binary_envelope(&self.node, seq, name, event, meta.as_deref(), payload),
        };
        self.queue(Item::Notify(envelope));
    }

    /// Publishes a presence diff of channel `name` (entries of this node).
    pub fn presence(&self, name: &str, diff: &presence::Diff) {
        let envelope = envelope::presence_envelope(&self.node, self.next_seq(), name, diff);
        self.queue(Item::Presence {
            envelope,
            upserts: diff
                .joins
                .iter()
                .map(|e| store::PresenceRow::of(name, e))
                .collect(),
            deletes: diff.leaves.iter().map(|e| e.phx_ref.clone()).collect(),
        });
    }

    /// Rewrites this node's presence rows and has the other nodes reload them.
    pub fn reassert(&self) {
        self.queue(Item::Reassert);
    }

    /// This node.
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// The `sync` notification about this node.
    pub(super) fn sync_envelope(&self) -> String {
        envelope::sync_envelope(&self.node, self.next_seq())
    }
}

/// Drains the queue into the database until shutdown, then flushes and retires.
#[tracing::instrument(name = "bus_publisher", skip_all)]
pub async fn run(
    hub: Hub,
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<Item>,
    shutdown: Shutdown,
) {
    let publisher = hub.publisher().clone();
    let mut pending: VecDeque<Item> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                item = rx.recv() => match item {
                    Some(item) => pending.push_back(item),
                    None => break,
                },
            }
        }
        while let Ok(item) = rx.try_recv() {
            pending.push_back(item);
        }
        if pending.len() > MAX_PENDING {
            let dropped = pending.len();
            publisher.published(pending.iter().map(Item::size).sum());
            pending.clear();
            pending.push_back(Item::Reassert);
            metrics::counter!("gateway_bus_dropped_total").increment(dropped as u64);
            tracing::warn!(
                dropped,
                "bus backlog over its bound: dropped, presence reasserted"
            );
        }
        metrics::gauge!("gateway_bus_pending").set(pending.len() as f64);
        let n = pending.len().min(MAX_BATCH);
        let batch: Vec<Item> = pending.drain(..n).collect();
        match store::publish(
            &pool,
            publisher.node(),
            &batch,
            || hub.local_rows(),
            || publisher.sync_envelope(),
        )
        .await
        {
            Ok(()) => {
                publisher.published(batch.iter().map(Item::size).sum());
                metrics::counter!("gateway_bus_published_total").increment(n as u64);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                metrics::counter!("gateway_bus_publish_failures_total").increment(1);
                tracing::warn!(error = %e, items = n, "cannot publish to the bus; retrying");
                for item in batch.into_iter().rev() {
                    pending.push_front(item);
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Shutdown: what is queued goes out if the database lets it, then this node's presence
    // leaves (sessions closing now need not publish their own leaves).
    while let Ok(item) = rx.try_recv() {
        pending.push_back(item);
    }
    let flush = async {
        while !pending.is_empty() {
            let n = pending.len().min(MAX_BATCH);
            let batch: Vec<Item> = pending.drain(..n).collect();
            store::publish(
                &pool,
                publisher.node(),
                &batch,
                || hub.local_rows(),
                || publisher.sync_envelope(),
            )
            .await?;
        }
        store::retire(&pool, publisher.node(), publisher.sync_envelope()).await
    };
    match tokio::time::timeout(SHUTDOWN_PATIENCE, flush).await {
        Ok(Ok(())) => tracing::debug!("presence retired"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot retire this node's presence"),
        Err(_) => tracing::warn!("retiring this node's presence timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a flood of broadcasts grew the publisher's backlog without bound, then
    /// dropped everyone's backlog at once. Past the byte bound, the flood's own broadcasts are
    /// refused one by one, and room comes back as the backlog is published.
    #[test]
    fn broadcasts_past_the_byte_bound_are_refused_alone() {
        let (publisher, mut rx) = Publisher::bounded(Arc::from("n"), 100);
        let message = Message::Json(Arc::from(r#"{"type":"broadcast","event":"e","payload":1}"#));
        publisher.broadcast("room", &message);
        publisher.broadcast("room", &message);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "the second did not fit");
        let queued = publisher.queued_bytes.load(Ordering::Relaxed);
        assert!(queued > 0 && queued <= 100);
        publisher.published(queued);
        publisher.broadcast("room", &message);
        assert!(rx.try_recv().is_ok(), "room came back once published");
    }
}
