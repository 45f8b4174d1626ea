//! Delivery diagnostics of broadcasts: each channel with members on this node keeps its last
//! broadcasts and what its fan-out did with each ([`Fanout`]: members, delivered, dropped,
//! the sender skipped, members not allowed to read), plus totals since the channel became
//! active here. The admin API reads them (`/admin/api/diagnostics/topics/{channel}`, and the
//! busiest channels of `/admin/api/channels`).
//!
//! Recording costs one short lock per broadcast on its channel's ring; a message is kept for
//! its event name only when it is small ([`KEPT_MESSAGE_BYTES`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::Message;
use crate::conn::ConnId;

/// Largest message kept whole in the ring (for its event name); larger ones keep their size.
pub const KEPT_MESSAGE_BYTES: usize = 4096;

/// What one fan-out did to a channel's local members.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Members of the channel on this node.
    pub members: u64,
    /// Members whose queue took the message.
    pub delivered: u64,
    /// Members whose queue refused it (full: a slow consumer; or closing).
    pub dropped: u64,
    /// The sender, which did not ask for its own broadcasts (`broadcast.self`).
    pub skipped_sender: u64,
    /// Members of a private channel whose token may not read this kind of message.
    pub not_authorized: u64,
    /// Members whose serializer cannot carry it (raw binary to a vsn 1 socket).
    pub unencodable: u64,
}

/// Where a broadcast came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node (its connection), or REST (`None`).
    Local(Option<ConnId>),
    /// Another node, or the database (`realtime.send`), over the cluster bus.
    Bus,
}

/// One broadcast as a channel keeps it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When it was fanned out.
    pub at: SystemTime,
    /// Where it came from.
    pub origin: Origin,
    /// Its size, bytes.
    pub bytes: usize,
    /// The message, when small enough to keep.
    pub message: Option<Message>,
    /// What the fan-out did.
    pub fanout: Fanout,
}

impl Sent {
    /// The broadcast's event name, when the message was kept.
    pub fn event(&self) -> Option<String> {
        match self.message.as_ref()? {
            Message::Json(json) => serde_json::from_str::<serde_json::Value>(json)
                .ok()?
                .get("event")?
                .as_str()
                .map(str::to_owned),
            Message::Binary { event, .. } => Some(event.to_string()),
        }
    }
}

/// Totals of a channel since it became active on this node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Broadcasts fanned out.
    pub broadcasts: u64,
    /// Presence diffs fanned out.
    pub presence_diffs: u64,
    /// Frames queued to members.
    pub delivered: u64,
    /// Frames refused by members' queues.
    pub dropped: u64,
}

/// One channel's recent broadcasts and totals.
#[derive(Debug, Default)]
pub struct TopicTrace {
    ring: Mutex<VecDeque<Sent>>,
    broadcasts: AtomicU64,
    presence_diffs: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl TopicTrace {
    /// Counts a presence diff's fan-out.
    pub fn presence(&self, fanout: &Fanout) {
        self.presence_diffs.fetch_add(1, Ordering::Relaxed);
        self.count(fanout);
    }

    /// Counts a broadcast's fan-out and keeps it in the ring of `depth` (0: counted only).
    pub fn broadcast(&self, depth: usize, origin: Origin, message: &Message, fanout: Fanout) {
        self.broadcasts.fetch_add(1, Ordering::Relaxed);
        self.count(&fanout);
        if depth == 0 {
            return;
        }
        let bytes = message.size();
        let sent = Sent {
            at: SystemTime::now(),
            origin,
            bytes,
            message: (bytes <= KEPT_MESSAGE_BYTES).then(|| message.clone()),
            fanout,
        };
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while ring.len() >= depth {
            ring.pop_front();
        }
        ring.push_back(sent);
    }

    fn count(&self, fanout: &Fanout) {
        self.delivered
            .fetch_add(fanout.delivered, Ordering::Relaxed);
        self.dropped.fetch_add(fanout.dropped, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn totals(&self) -> Totals {
        Totals {
            broadcasts: self.broadcasts.load(Ordering::Relaxed),
            presence_diffs: self.presence_diffs.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// The kept broadcasts, newest first.
    pub fn recent(&self) -> Vec<Sent> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_ring_keeps_the_newest_and_small_messages_only() {
        let trace = TopicTrace::default();
        let small = Message::Json(Arc::from(
            r#"{"type":"broadcast","event":"e1","payload":1}"#,
        ));
        let big = Message::Json(Arc::from(format!(
            r#"{{"type":"broadcast","event":"big","payload":"{}"}}"#,
            "x".repeat(KEPT_MESSAGE_BYTES)
        )));
        let fanout = Fanout {
            members: 2,
            delivered: 1,
            skipped_sender: 1,
            ..Fanout::default()
        };
        for _ in 0..3 {
            trace.broadcast(2, Origin::Local(Some(7)), &small, fanout);
        }
        trace.broadcast(2, Origin::Bus, &big, fanout);
        let recent = trace.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].origin, Origin::Bus);
        assert_eq!(recent[0].event(), None, "too big to keep");
        assert_eq!(recent[1].event().as_deref(), Some("e1"));
        assert_eq!(trace.totals().broadcasts, 4);
        assert_eq!(trace.totals().delivered, 4);
        trace.broadcast(0, Origin::Bus, &small, fanout);
        assert_eq!(trace.recent().len(), 2, "depth 0 counts only");
        assert_eq!(trace.totals().broadcasts, 5);
    }
}
