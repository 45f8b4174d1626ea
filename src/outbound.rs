//! Stage 4: the per-connection bounded outbound queue and its overflow policy.
//!
//! Fed by the router (changes, broadcasts, presence) and by the session's own replies; drained by
//! the writer (stage 5). The queue is bounded by frame count and by bytes. A push never waits: when
//! either bound would be exceeded the connection is a slow consumer — it is marked, its session is
//! cancelled and then closed with the slow-consumer close code — so one client that does not read
//! never holds up fan-out to the others, and its memory stays bounded.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

use crate::position::Stamp;
use crate::socket::frame;

/// What a frame carries, for the delivery metrics (`gateway_messages_delivered_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Postgres Changes delivery.
    Changes,
    /// A broadcast.
    Broadcast,
    /// Presence state or a presence diff.
    Presence,
    /// A `system` message, or a channel's close or error.
    System,
    /// A reply to a client's push (`phx_reply`).
    Reply,
}

impl Kind {
    /// Every kind, in [`Kind::index`] order.
    pub const ALL: [Kind; 5] = [
        Kind::Changes,
        Kind::Broadcast,
        Kind::Presence,
        Kind::System,
        Kind::Reply,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Changes => "changes",
            Kind::Broadcast => "broadcast",
            Kind::Presence => "presence",
            Kind::System => "system",
            Kind::Reply => "reply",
        }
    }

    /// Whether frames of this kind carry an origin, so their delivery latency is measured.
    pub fn is_timed(self) -> bool {
        matches!(self, Kind::Changes | Kind::Broadcast | Kind::Presence)
    }

    /// Position in [`Kind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind of a frame the session writes for protocol event `event`.
    pub fn of_event(event: &str) -> Kind {
        match event {
            "phx_reply" => Kind::Reply,
            "postgres_changes" => Kind::Changes,
            "broadcast" => Kind::Broadcast,
            "presence_state" | "presence_diff" => Kind::Presence,
            _ => Kind::System,
        }
    }
}

/// The bytes of a frame.
#[derive(Debug, Clone)]
pub enum Body {
    /// A whole WebSocket frame, header included ([`crate::socket::frame`]): a text frame (JSON;
    /// vsn 1 objects or vsn 2 arrays) or a binary one (vsn 2 kind 4 broadcast).
    Wire(Bytes),
    /// A whole control frame (a pong answering the client's ping): written like the others,
    /// not counted as a delivery.
    Control(Bytes),
    /// Nothing to write: a marker that only moves the connection's position in the change
    /// stream ([`crate::position`]) when the writer reaches it.
    Marker,
}

/// A frame waiting to be written to the socket. Fan-out builds one per distinct payload, encoded
/// down to the WebSocket header, and gives each recipient a clone: the bytes are shared, and the
/// kind and origin are copied with them (no allocation, no copy).
#[derive(Debug, Clone)]
pub struct Frame {
    /// The bytes.
    pub body: Body,
    /// What it carries.
    pub kind: Kind,
    /// When what it carries entered the system (a change's capture at commit, a broadcast's
    /// arrival at this gateway); the writer measures delivery latency from it.
    pub origin: Option<SystemTime>,
    /// Where a change frame (or a marker) stands in the change stream; read by the writers of
    /// connections that can resume.
    pub stamp: Option<Stamp>,
}

impl Frame {
    /// A text frame of `kind`.
    pub fn text(kind: Kind, text: impl AsRef<str>) -> Frame {
        Frame {
            body: Body::Wire(frame::text(text.as_ref())),
            kind,
            origin: None,
            stamp: None,
        }
    }

    /// A binary frame of `kind`.
    pub fn binary(kind: Kind, bytes: &[u8]) -> Frame {
        Frame {
            body: Body::Wire(frame::binary(bytes)),
            kind,
            origin: None,
            stamp: None,
        }
    }

    /// A pong answering a ping that carried `payload`.
    pub fn pong(payload: &[u8]) -> Frame {
        Frame {
            body: Body::Control(frame::pong(payload)),
            kind: Kind::System,
            origin: None,
            stamp: None,
        }
    }

    /// A marker: nothing is written, the connection's position moves to `stamp`.
    pub fn marker(stamp: Stamp) -> Frame {
        Frame {
            body: Body::Marker,
            kind: Kind::System,
            origin: None,
            stamp: Some(stamp),
        }
    }

    /// The same frame, its delivery latency measured from `origin`.
    #[must_use]
    pub fn since(mut self, origin: SystemTime) -> Frame {
        self.origin = Some(origin);
        self
    }

    /// Bytes this frame occupies in the queue (and on the wire).
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Wire(b) | Body::Control(b) => b.len(),
            Body::Marker => 0,
        }
    }

    /// The payload: what the client's WebSocket reader hands to its application (nothing for a
    /// marker).
    #[cfg(test)]
    pub fn payload(&self) -> &[u8] {
        match &self.body {
            Body::Wire(b) | Body::Control(b) => frame::parse(b).map_or(&[], |(_, payload)| payload),
            Body::Marker => &[],
        }
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// What one fan-out did, counted the same way by both fan-out engines (the change router and
/// the broadcast hub): a push that a queue refused is dropped for that recipient only — a full
/// queue has already marked its connection slow, which closes it — and fan-out goes on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Recipients whose queue took the frame.
    pub delivered: u64,
    /// Recipients whose queue refused it (full, or closing).
    pub dropped: u64,
}

impl Tally {
    /// Counts the outcome of one push; returns its value when the frame was queued.
    pub fn count<T>(&mut self, pushed: Result<T, PushError>) -> Option<T> {
        match pushed {
            Ok(value) => {
                self.delivered += 1;
                Some(value)
            }
            Err(PushError::Full | PushError::Closed) => {
                self.dropped += 1;
                None
            }
        }
    }

    /// Adds this tally to the `<stage>_deliveries_total` and `<stage>_dropped_total` counters
    /// (`gateway_router_…` for changes, `gateway_broadcast_…` for broadcast and presence).
    pub fn record(&self, deliveries: &'static str, dropped: &'static str) {
        metrics::counter!(deliveries).increment(self.delivered);
        if self.dropped > 0 {
            metrics::counter!(dropped).increment(self.dropped);
        }
    }
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
#[derive(Debug)]
pub struct Outbound {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The frames. A plain deque, empty (no allocation) while the connection is idle, so an
    /// idle connection costs nothing here; the writer takes a whole batch under one lock.
    frames: Mutex<VecDeque<Frame>>,
    /// Wakes the writer.
    waker: AtomicWaker,
    max_frames: usize,
    /// Bytes currently queued (added on push, removed by the writer once written).
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// Live [`Outbound`] handles; the queue ends for the writer when none is left.
    senders: AtomicUsize,
    /// The [`Receiver`] is gone: pushes are refused.
    receiver_gone: AtomicBool,
    /// Frames were queued by [`Outbound::push_deferred`] and the writer not yet woken.
    wake_pending: AtomicBool,
    /// Set once the queue overflowed; the session closes with the slow-consumer code.
    slow: AtomicBool,
    /// Cancels the connection's session (slow consumer, kick, shutdown).
    token: CancellationToken,
}

impl Shared {
    fn frames(&self) -> MutexGuard<'_, VecDeque<Frame>> {
        // A panic while holding the lock leaves a valid deque: keep using it.
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The receiving side, owned by the writer.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
}

/// Creates a queue whose overflow cancels `token`.
pub fn channel(limits: Limits, token: CancellationToken) -> (Outbound, Receiver) {
    let shared = Arc::new(Shared {
        frames: Mutex::new(VecDeque::new()),
        waker: AtomicWaker::new(),
        max_frames: limits.max_frames.max(1),
        queued_bytes: AtomicUsize::new(0),
        max_bytes: limits.max_bytes,
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        wake_pending: AtomicBool::new(false),
        slow: AtomicBool::new(false),
        token,
    });
    (
        Outbound {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl Clone for Outbound {
    fn clone(&self) -> Outbound {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbound {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.waker.wake();
        }
    }
}

impl Outbound {
    /// Queues `frame` without waiting.
    ///
    /// # Errors
    /// [`PushError::Full`] when the queue is over its frame or byte bound (the connection is
    /// then marked slow and its session cancelled); [`PushError::Closed`] once the queue
    /// overflowed or its writer is gone.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.enqueue(frame)?;
        self.shared.waker.wake();
        Ok(())
    }

    /// Queues `frame` like [`Outbound::push`] but leaves the writer asleep until
    /// [`Outbound::wake`]: the router queues a whole read of changes first, so a writer that
    /// keeps up still writes them in one flush. `Ok(true)` when this is the first deferred
    /// frame since the last wake (the caller must then wake this queue later).
    ///
    /// # Errors
    /// As [`Outbound::push`].
    pub fn push_deferred(&self, frame: Frame) -> Result<bool, PushError> {
        self.enqueue(frame)?;
        Ok(!self.shared.wake_pending.swap(true, Ordering::AcqRel))
    }

    /// Wakes the writer for frames queued by [`Outbound::push_deferred`].
    pub fn wake(&self) {
        if self.shared.wake_pending.swap(false, Ordering::AcqRel) {
            self.shared.waker.wake();
        }
    }

    fn enqueue(&self, frame: Frame) -> Result<(), PushError> {
        let shared = &*self.shared;
        // Atomic loads only: this runs once per recipient of every change.
        if shared.slow.load(Ordering::Acquire) || shared.receiver_gone.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        let before = shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // A single frame larger than the byte bound is still accepted into an empty queue, so
        // that a large row reaches a client that keeps up.
        if before > 0 && before + len > shared.max_bytes {
            shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return Err(PushError::Full);
        }
        {
            let mut frames = shared.frames();
            if frames.len() >= shared.max_frames {
                drop(frames);
                shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow();
                return Err(PushError::Full);
            }
            frames.push_back(frame);
        }
        Ok(())
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

    /// Marks the connection a slow consumer and cancels its session, as an overflow of the queue
    /// does: for frames that wait for it outside the queue and went over its bounds (a
    /// replaying channel's held broadcasts, `broadcast::replay`).
    pub fn overflowed(&self) {
        self.overflow();
    }

    /// Whether the queue overflowed.
    pub fn is_slow(&self) -> bool {
        self.shared.slow.load(Ordering::Acquire)
    }

    /// Frames waiting.
    pub fn queued_frames(&self) -> usize {
        self.shared.frames().len()
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// Most frames the queue holds.
    pub fn max_frames(&self) -> usize {
        self.shared.max_frames
    }

    /// Most bytes the queue holds.
    pub fn max_bytes(&self) -> usize {
        self.shared.max_bytes
    }

    /// Whether this and `other` are the same connection's queue.
    pub fn same_queue(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Receiver {
    /// The next frame, or `None` once the queue is empty and every sender is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        poll_fn(|cx| {
            if let Some(frame) = self.try_recv() {
                return Poll::Ready(Some(frame));
            }
            self.shared.waker.register(cx.waker());
            // A push between the first look and the registration woke nobody: look again.
            match self.try_recv() {
                Some(frame) => Poll::Ready(Some(frame)),
                None if self.shared.senders.load(Ordering::Acquire) == 0 => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// A frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let mut frames = self.shared.frames();
        let frame = frames.pop_front();
        give_back_room(&mut frames);
        frame
    }

    /// Moves up to `max` queued frames into `batch` (under one lock), without waiting.
    pub fn take_batch(&mut self, batch: &mut Vec<Frame>, max: usize) {
        let mut frames = self.shared.frames();
        let n = frames.len().min(max);
        batch.extend(frames.drain(..n));
        give_back_room(&mut frames);
    }

    /// Records that `bytes` of dequeued frames were written.
    pub fn written(&self, bytes: usize) {
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether the queue overflowed.
    pub fn is_slow(&self) -> bool {
        self.shared.slow.load(Ordering::Acquire)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.shared.frames().is_empty()
    }
}

/// Once a burst is drained, gives all its room back rather than keep it for an idle connection:
/// most connections are idle most of the time, a frame's room is about 100 bytes, and an
/// allocation per burst costs less than the burst's write.
fn give_back_room(frames: &mut VecDeque<Frame>) {
    if frames.is_empty() && frames.capacity() > 0 {
        *frames = VecDeque::new();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        // Queued frames are never written now: free them with the receiver.
        let dropped = std::mem::take(&mut *self.shared.frames());
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(n: usize) -> Frame {
        Frame::text(Kind::System, "x".repeat(n))
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

    #[tokio::test]
    async fn the_writer_sees_the_end_once_every_sender_is_gone() {
        let (tx, mut rx) = channel(
            Limits {
                max_frames: 4,
                max_bytes: 1 << 10,
            },
            CancellationToken::new(),
        );
        let second = tx.clone();
        tx.push(text(3)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.map(|f| f.payload().len()), Some(3));
        second.push(text(2)).unwrap();
        drop(second);
        assert_eq!(
            rx.recv().await.map(|f| f.payload().len()),
            Some(2),
            "queued frames first"
        );
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn pushes_fail_once_the_writer_is_gone_and_idle_room_is_returned() {
        let (tx, mut rx) = channel(
            Limits {
                max_frames: 1000,
                max_bytes: 1 << 20,
            },
            CancellationToken::new(),
        );
        for _ in 0..500 {
            tx.push(text(1)).unwrap();
        }
        let mut batch = Vec::new();
        rx.take_batch(&mut batch, 200);
        assert_eq!(batch.len(), 200);
        rx.take_batch(&mut batch, 1000);
        assert_eq!(batch.len(), 500);
        assert_eq!(tx.shared.frames().capacity(), 0);
        drop(rx);
        assert_eq!(tx.push(text(1)), Err(PushError::Closed));
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
                // A frame over the bound is taken by an empty queue: 63 bytes and a 2-byte header.
                prop_assert!(tx.queued_bytes() <= limits.max_bytes + 65);
            }
        }
    }
}
