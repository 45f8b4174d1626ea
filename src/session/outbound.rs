//! Stage 4: the per-connection bounded outbound queue and its overflow policy.
//!
//! Fed by the router (changes, broadcasts, presence) and by the session's own replies; drained by
//! the writer (stage 5). The queue is bounded by frame count and by bytes. A push never waits: when
//! either bound would be exceeded the connection is a slow consumer — it is marked, its session is
//! cancelled and then closed with the slow-consumer close code — so one client that does not read
//! never holds up fan-out to the others, and its memory stays bounded.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A frame waiting to be written to the socket.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A text frame (JSON; vsn 1 objects or vsn 2 arrays).
    Text(Utf8Bytes),
    /// A binary frame (vsn 2 kind 4 broadcast).
    Binary(Bytes),
}

impl Frame {
    /// Bytes this frame occupies in the queue.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::Text(Utf8Bytes::from(text))
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue was full: the connection is now closing as a slow consumer.
    #[error("outbound queue full")]
    Full,
    /// The connection is already closing.
    #[error("connection closed")]
    Closed,
}

/// Limits of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most frames queued.
    pub max_frames: usize,
    /// Most bytes queued.
    pub max_bytes: usize,
}

/// The sending side of a connection's queue; cheap to clone, shared with the router.
#[derive(Debug, Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Frame>,
}

#[derive(Debug)]
struct Shared {
    /// Bytes currently queued (added on push, removed by the writer once written).
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Set once the queue overflowed; the session closes with the slow-consumer code.
    slow: AtomicBool,
    /// Cancels the connection's session (slow consumer, kick, shutdown).
    token: CancellationToken,
}

/// The receiving side, owned by the writer.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Frame>,
}

/// Creates a queue whose overflow cancels `token`.
pub fn channel(limits: Limits, token: CancellationToken) -> (Outbound, Receiver) {
    let (tx, rx) = mpsc::channel(limits.max_frames.max(1));
    let shared = Arc::new(Shared {
        queued_bytes: AtomicUsize::new(0),
        max_bytes: limits.max_bytes,
        slow: AtomicBool::new(false),
        token,
    });
    (
        Outbound {
            shared: Arc::clone(&shared),
            tx,
        },
        Receiver { shared, rx },
    )
}

impl Outbound {
    /// Queues `frame` without waiting.
    ///
    /// # Errors
    /// [`PushError::Full`] when the queue is over its frame or byte bound (the connection is
    /// then marked slow and its session cancelled); [`PushError::Closed`] after close.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        if self.shared.token.is_cancelled() {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // A single frame larger than the byte bound is still accepted into an empty queue, so
        // that a large row reaches a client that keeps up.
        if before > 0 && before + len > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return Err(PushError::Full);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow();
                Err(PushError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(PushError::Closed)
            }
        }
    }

    fn overflow(&self) {
        if !self.shared.slow.swap(true, Ordering::AcqRel) {
            metrics::counter!("gateway_session_slow_consumers_total").increment(1);
            tracing::warn!(
                queued_bytes = self.shared.queued_bytes.load(Ordering::Relaxed),
                queued_frames = self.queued_frames(),
                "closing slow consumer"
            );
        }
        self.shared.token.cancel();
    }

    /// Whether the queue overflowed.
    pub fn is_slow(&self) -> bool {
        self.shared.slow.load(Ordering::Acquire)
    }

    /// Frames waiting.
    pub fn queued_frames(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Most frames the queue holds.
    pub fn max_frames(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Whether this and `other` are the same connection's queue.
    pub fn same_queue(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Receiver {
    /// The next frame, or `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }

    /// A frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.rx.try_recv().ok()
    }

    /// Records that `bytes` of dequeued frames were written.
    pub fn written(&self, bytes: usize) {
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether the queue overflowed.
    pub fn is_slow(&self) -> bool {
        self.shared.slow.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(n: usize) -> Frame {
        Frame::from("x".repeat(n))
    }

    #[test]
    fn overflow_by_count_marks_slow_and_cancels() {
        let token = CancellationToken::new();
        let (tx, _rx) = channel(
            Limits {
                max_frames: 2,
                max_bytes: 1 << 20,
            },
            token.clone(),
        );
        tx.push(text(1)).unwrap();
        tx.push(text(1)).unwrap();
        assert_eq!(tx.push(text(1)), Err(PushError::Full));
        assert!(tx.is_slow());
        assert!(token.is_cancelled());
        assert_eq!(tx.push(text(1)), Err(PushError::Closed));
    }

    #[test]
    fn overflow_by_bytes_but_a_large_frame_fits_an_empty_queue() {
        let (tx, mut rx) = channel(
            Limits {
                max_frames: 100,
                max_bytes: 10,
            },
            CancellationToken::new(),
        );
        tx.push(text(50)).unwrap();
        let f = rx.try_recv().unwrap();
        rx.written(f.len());
        tx.push(text(6)).unwrap();
        assert_eq!(tx.push(text(6)), Err(PushError::Full));
    }

    proptest! {
        /// The queue never holds more than its bounds, and every refused push closed it.
        #[test]
        fn queue_never_exceeds_its_bounds(ops in proptest::collection::vec((any::<bool>(), 1usize..64), 1..300)) {
            let token = CancellationToken::new();
            let limits = Limits { max_frames: 8, max_bytes: 256 };
            let (tx, mut rx) = channel(limits, token.clone());
            for (push, n) in ops {
                if push {
                    match tx.push(text(n)) {
                        Ok(()) => {}
                        Err(_) => { prop_assert!(token.is_cancelled()); break; }
                    }
                } else if let Some(f) = rx.try_recv() {
                    rx.written(f.len());
                }
                prop_assert!(tx.queued_frames() <= limits.max_frames);
                prop_assert!(tx.queued_bytes() <= limits.max_bytes + 64);
            }
        }
    }
}
