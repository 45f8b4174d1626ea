//! Positions in the change stream, for resuming a session after a reconnect.
//!
//! The listener reads the outbox snapshot by snapshot (see `capture::listener`): read `r`
//! delivers the changes visible in its snapshot and not in the previous one. Each read is a
//! [`Span`] (`before`, `after`, and a sequence number `seq` counted by this node), kept for a
//! short while in [`Spans`]; every change frame carries a [`Stamp`] (the read's `seq`, the
//! change's outbox id, and which channel of the connection it is for). A channel's place in the
//! stream is then "everything visible in `before`, and of the changes visible in `after` but not
//! in `before`, those with ids up to `last_id`": a [`Position`], made of snapshots only, so any
//! node sharing the database can continue from it.
//!
//! Boundary types: capture, outbound and session import this module; it imports no stage.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A read snapshot of the outbox: `xmax` and the transactions in progress (as `xid8` text),
/// and the highest outbox id visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `xmax` of the snapshot.
    pub xmax: String,
    /// Transactions running at the snapshot.
    pub xip: Vec<String>,
    /// Highest id visible.
    pub max_id: i64,
}

impl Snapshot {
    /// The oldest transaction the snapshot does not see: rows it does not see all have
    /// `xid` at or above this.
    pub fn xmin(&self) -> u64 {
        let xmax = self.xmax.parse().unwrap_or(0);
        self.xip
            .iter()
            .filter_map(|x| x.parse::<u64>().ok())
            .min()
            .unwrap_or(xmax)
            .min(xmax)
    }
}

/// One read of the listener: the changes visible in `after` and not in `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// This node's count of spans.
    pub seq: u64,
    /// The snapshot of the previous read.
    pub before: Snapshot,
    /// The snapshot of this read.
    pub after: Snapshot,
}

/// A stamp id meaning "the whole span".
pub const THROUGH: i64 = i64::MAX;

/// Where one frame stands: the span it was read in, the change's outbox id ([`THROUGH`] for a
/// marker that covers the whole span), and the channel of the connection it is for (numbered
/// by the session; 0 for connections that cannot resume, whose stamps nobody reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The span's `seq`.
    pub seq: u64,
    /// Outbox id, or [`THROUGH`].
    pub id: i64,
    /// The channel, within its connection.
    pub chan: u32,
}

/// A channel's place in the stream (see the module header); stored with a resumable session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Everything visible in it was handled.
    pub before: Snapshot,
    /// Of the changes visible in it and not in `before`, those with ids up to `last_id` were
    /// handled.
    pub after: Snapshot,
    /// See `after`; [`THROUGH`] when the whole span was.
    pub last_id: i64,
}

impl Position {
    /// The position `last_id` into `span`.
    pub fn within(span: &Span, last_id: i64) -> Position {
        if last_id == THROUGH {
            Position::at(span.after.clone())
        } else {
            Position {
                before: span.before.clone(),
                after: span.after.clone(),
                last_id,
            }
        }
    }

    /// Everything visible in `snapshot`, nothing else.
    pub fn at(snapshot: Snapshot) -> Position {
        Position {
            before: snapshot.clone(),
            after: snapshot,
            last_id: THROUGH,
        }
    }

    /// Whether the span is handled whole.
    pub fn is_whole(&self) -> bool {
        self.last_id == THROUGH || self.before == self.after
    }
}

/// Spans kept: enough for a writer that is many reads behind (beyond it, its connection's
/// position is unknown and a resume says so).
const KEPT: usize = 8192;

/// The recent spans of this node's listener and the last one routed whole.
#[derive(Debug, Default)]
pub struct Spans {
    ring: Mutex<Ring>,
    /// The `seq` of the last span whose changes were all routed.
    completed: AtomicU64,
}

#[derive(Debug, Default)]
struct Ring {
    spans: VecDeque<Arc<Span>>,
    last_seq: u64,
}

impl Spans {
    /// A new span from `before` to `after`; returns it.
    pub fn begin(&self, before: &Snapshot, after: &Snapshot) -> Arc<Span> {
        let mut ring = self.lock();
        ring.last_seq += 1;
        let span = Arc::new(Span {
            seq: ring.last_seq,
            before: before.clone(),
            after: after.clone(),
        });
        if ring.spans.len() == KEPT {
            ring.spans.pop_front();
        }
        ring.spans.push_back(Arc::clone(&span));
        span
    }

    /// Records that every change of span `seq` was routed (every frame of it queued).
    pub fn complete(&self, seq: u64) {
        self.completed.fetch_max(seq, Ordering::Release);
    }

    /// The last span routed whole (0 before the first).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Span `seq`, while it is kept.
    pub fn get(&self, seq: u64) -> Option<Arc<Span>> {
        let ring = self.lock();
        let first = ring.spans.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        ring.spans.get(i).filter(|s| s.seq == seq).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(xmax: u64, xip: &[u64], max_id: i64) -> Snapshot {
        Snapshot {
            xmax: xmax.to_string(),
            xip: xip.iter().map(u64::to_string).collect(),
            max_id,
        }
    }

    #[test]
    fn spans_are_found_by_seq_until_they_fall_out() {
        let spans = Spans::default();
        let a = snap(10, &[], 5);
        let first = spans.begin(&a, &a);
        assert_eq!(spans.get(first.seq).as_deref(), Some(&*first));
        for _ in 0..KEPT {
            spans.begin(&a, &a);
        }
        assert!(spans.get(first.seq).is_none());
        assert!(spans.get(first.seq + 1).is_some());
        assert!(spans.get(u64::MAX).is_none());
        spans.complete(7);
        spans.complete(3);
        assert_eq!(spans.completed(), 7);
    }

    #[test]
    fn xmin_is_the_oldest_unseen_transaction() {
        assert_eq!(snap(20, &[12, 15], 0).xmin(), 12);
        assert_eq!(snap(20, &[], 0).xmin(), 20);
    }

    #[test]
    fn a_whole_span_is_its_after_snapshot() {
        let span = Span {
            seq: 1,
            before: snap(10, &[], 5),
            after: snap(12, &[11], 9),
        };
        assert_eq!(
            Position::within(&span, THROUGH),
            Position::at(span.after.clone())
        );
        assert!(Position::within(&span, THROUGH).is_whole());
        let part = Position::within(&span, 7);
        assert!(!part.is_whole());
        assert_eq!(part.before, span.before);
    }
}
