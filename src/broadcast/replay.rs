//! Broadcast replay (docs/protocol.md 7.6): a private channel joined with
//! `config.broadcast.replay` receives the stored database messages of its topic since a time,
//! marked `meta.replayed`, then the live ones, each message once and the replayed ones first.
//!
//! Fed by the session's join: the membership joins the hub holding ([`Hold`]) before the stored
//! messages are read ([`Hub::stored`]), so whatever reaches it from then on waits in the hold
//! instead of its queue. [`Hub::release`] then queues, under the topic's member lock (no
//! fan-out to the topic runs meanwhile), the replayed messages, oldest first, then the held
//! ones minus those it replayed, and ends the hold. The membership keeps the ids it replayed and
//! never receives those messages live: a message committed before the stored ones were read is
//! replayed, and its live announcement, whether it arrived during the read or arrives later, is
//! skipped; one committed after is delivered live once, after every replayed message. Only
//! database messages can be both; they carry their row id through the fan-out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::store::{self, DbMessage, ReplayRequest};
use super::{encode, lock, write, Error, Hub, Member, Message, BROADCAST_EVENT};
use crate::conn::ConnId;
use crate::outbound::{Outbound, Tally};

/// The live broadcasts of a member whose channel is replaying, in arrival order.
#[derive(Debug, Default)]
pub struct Hold {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Each message with its database row id, if it has one.
    messages: Vec<(Option<uuid::Uuid>, Message)>,
    /// Their bytes, bounded like the member's queue.
    bytes: usize,
    /// The bound was passed: the connection is closing as a slow consumer; nothing more is kept.
    overflowed: bool,
}

impl Hold {
    /// An empty hold.
    pub fn new() -> Arc<Hold> {
        Arc::default()
    }

    /// Keeps `message` (a database message's row `id`) until the release. Held messages are
    /// bounded like the member's queue (`outbound`): past its frames or bytes, the connection
    /// is closed as a slow consumer, as a full queue would close it.
    pub(super) fn keep(&self, id: Option<uuid::Uuid>, message: &Message, outbound: &Outbound) {
        let mut held = lock(&self.held);
        if held.overflowed {
            return;
        }
        held.bytes += message.size();
        held.messages.push((id, message.clone()));
        if held.messages.len() > outbound.max_frames() || held.bytes > outbound.max_bytes() {
            *held = Held {
                overflowed: true,
                ..Held::default()
            };
            outbound.overflowed();
        }
    }

    fn take(&self) -> Held {
        std::mem::take(&mut *lock(&self.held))
    }
}

/// What a release queued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Replayed messages queued.
    pub replayed: u64,
    /// Live messages held during the replay and queued after it.
    pub held: u64,
    /// Live messages held and not queued, because they were replayed.
    pub duplicates: u64,
}

/// Whether `member` does not receive broadcast `message` (a database message's row `id`) now:
/// it is held while the member's channel replays, or it was replayed already (counted as a
/// duplicate).
pub(super) fn holds_back(member: &Member, id: Option<uuid::Uuid>, message: &Message) -> bool {
    if let Some(hold) = &member.hold {
        hold.keep(id, message, &member.outbound);
        return true;
    }
    match (id, &member.replayed) {
        (Some(id), Some(replayed)) if replayed.contains(&id) => {
            metrics::counter!("gateway_broadcast_replay_duplicates_total").increment(1);
            true
        }
        _ => false,
    }
}

impl Hub {
    /// The messages a join of private channel `name` with `request` replays
    /// ([`store::replay`]), read within `timeout`.
    ///
    /// # Errors
    /// [`Error::ReplayUnavailable`] when the database fails or does not answer in time.
    pub async fn stored(
        &self,
        name: &str,
        request: ReplayRequest,
        timeout: Duration,
    ) -> Result<Vec<DbMessage>, Error> {
        let read = store::replay(&self.shared.pool, name, request);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(messages)) => Ok(messages),
            Ok(Err(e)) => Err(Error::ReplayUnavailable(Some(e))),
            Err(_elapsed) => Err(Error::ReplayUnavailable(None)),
        }
    }

    /// Ends the replay of connection `conn`'s membership of the channel of hub key `key`: queues
    /// `replayed` (oldest first, `meta.replayed`), then what its hold kept, minus the messages
    /// of `replayed`; from then on its broadcasts go to its queue again, but for those of
    /// `replayed`, which it keeps skipping. Does nothing for a membership that does not hold.
    pub fn release(&self, key: &str, conn: ConnId, replayed: &[DbMessage]) -> Released {
        let mut released = Released::default();
        let Some(topic) = self.topic(key) else {
            return released;
        };
        // The write lock: no fan-out reaches this topic's members until the hold is ended, so
        // nothing overtakes what was held.
        let mut members = write(&topic.members);
        let Some(member) = members.get_mut(&conn) else {
            return released;
        };
        let Some(hold) = member.hold.take() else {
            return released;
        };
        let held = hold.take();
        if held.overflowed {
            return released;
        }
        let ids: HashSet<uuid::Uuid> = replayed.iter().map(|m| m.id).collect();
        let ids = Arc::new(ids);
        member.replayed = (!ids.is_empty()).then(|| Arc::clone(&ids));
        let member = &*member;
        let origin = SystemTime::now();
        let mut tally = Tally::default();
        let mut queue = |message: &Message| {
            if let Some(frame) = encode(member.vsn, &topic.topic, BROADCAST_EVENT, message) {
                tally.count(member.outbound.push(frame.since(origin)));
            }
        };
        for stored in replayed {
            let message = stored.message(true);
            if self.deliverable(stored, &message, false) {
                queue(&message);
                released.replayed += 1;
            }
        }
        for (id, message) in held.messages {
            if id.is_some_and(|id| ids.contains(&id)) {
                released.duplicates += 1;
            } else {
                queue(&message);
                released.held += 1;
            }
        }
        drop(members);
        self.count(tally);
        metrics::counter!("gateway_broadcast_replayed_total").increment(released.replayed);
        metrics::counter!("gateway_broadcast_replay_duplicates_total")
            .increment(released.duplicates);
        released
    }

    /// Whether database message `stored` (as `message`) is within `--max-message-bytes`; one
    /// that is not is delivered to no one, counted, and (when `audit`, the first time it is
    /// seen) logged and audited as `broadcast_undeliverable`.
    pub(super) fn deliverable(&self, stored: &DbMessage, message: &Message, audit: bool) -> bool {
        let (size, limit) = (message.size(), self.shared.max_message_bytes);
        if size <= limit {
            return true;
        }
        metrics::counter!("gateway_broadcast_too_large_total").increment(1);
        if audit {
            tracing::warn!(id = %stored.id, size, limit, "database broadcast over the size limit not delivered");
            self.shared.registry.audit(
                "broadcast_undeliverable",
                None,
                None,
                serde_json::json!({"id": stored.id, "topic": stored.topic, "event": stored.event,
                                   "private": stored.private, "size": size, "limit": limit,
                                   "reason": Error::TooLarge { size, limit }.to_string()}),
            );
        }
        false
    }
}
