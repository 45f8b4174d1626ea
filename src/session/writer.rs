//! Stage 5: drains a connection's outbound queue to its socket.
//!
//! Frames arrive encoded down to the WebSocket header and shared between recipients; the writer
//! hands everything already queued to the socket's [`Outlet`], which writes it with vectored
//! writes (one system call for many frames, no copy into a per-socket buffer). On close it
//! writes the close frame, with the code and reason chosen by the session, after what was queued
//! before it — bounded in time, because a slow consumer may never read them.
//!
//! Each written batch is counted by kind (`gateway_messages_delivered_total{kind}`), and for
//! each kind that carries an origin the age of the batch's oldest frame at the end of its write
//! is one observation of `gateway_delivery_latency_seconds{kind}`: one clock read and a handful
//! of counter updates per batch, nothing per recipient beyond a comparison.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::resume::track::{ping_payload, Track};
use crate::outbound::{Body, Frame, Kind, Receiver};
use crate::position::Stamp;
use crate::socket::{frame, Outlet};

/// Most frames taken from the queue for one flush.
const MAX_BATCH: usize = 256;

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The session asked it to stop.
    Cancelled,
    /// The socket failed.
    SocketError,
    /// The queue's senders are gone.
    QueueClosed,
}

/// The writers' metric handles, looked up once per process (after the recorder is installed,
/// since no writer runs before the gateway starts), not once per batch, and not held in every
/// connection's task.
static METERS: std::sync::OnceLock<Meters> = std::sync::OnceLock::new();

/// The writers' metric handles.
struct Meters {
    frames: metrics::Counter,
    flushes: metrics::Counter,
    delivered: [metrics::Counter; Kind::ALL.len()],
    /// For the kinds that carry an origin ([`Kind::is_timed`]).
    latency: [Option<metrics::Histogram>; Kind::ALL.len()],
}

impl Meters {
    fn new() -> Meters {
        Meters {
            frames: metrics::counter!("gateway_writer_frames_total"),
            flushes: metrics::counter!("gateway_writer_flushes_total"),
            delivered: Kind::ALL.map(|kind| {
                metrics::counter!("gateway_messages_delivered_total", "kind" => kind.as_str())
            }),
            latency: Kind::ALL.map(|kind| {
                kind.is_timed().then(|| {
                    metrics::histogram!("gateway_delivery_latency_seconds", "kind" => kind.as_str())
                })
            }),
        }
    }
}

/// What one batch holds, by kind: how many frames, and the oldest origin.
#[derive(Default)]
struct Batch {
    frames: [u64; Kind::ALL.len()],
    oldest: [Option<SystemTime>; Kind::ALL.len()],
}

impl Batch {
    fn add(&mut self, frame: &Frame) {
        if !matches!(frame.body, Body::Wire(_)) {
            return;
        }
        let i = frame.kind.index();
        self.frames[i] += 1;
        if let Some(origin) = frame.origin {
            if self.oldest[i].is_none_or(|oldest| origin < oldest) {
                self.oldest[i] = Some(origin);
            }
        }
    }

    /// Records the batch as written at `now`.
    fn record(&self, meters: &Meters, now: SystemTime) {
        for i in 0..Kind::ALL.len() {
            if self.frames[i] > 0 {
                meters.delivered[i].increment(self.frames[i]);
            }
            if let (Some(oldest), Some(latency)) = (self.oldest[i], &meters.latency[i]) {
                // A clock step back (or a database clock ahead of ours) reads as no delay.
                let age = now.duration_since(oldest).unwrap_or_default();
                latency.record(age.as_secs_f64());
            }
        }
    }
}

/// Writes queued frames to `outlet` until `token` is cancelled, the queue closes or the socket
/// fails. A connection that can resume has a `track`: the writer records where each written
/// batch leaves it in the change stream and follows change frames with a ping.
///
/// When the writer ends it cancels `token`, which stops the session's reader.
///
/// Between batches the writer holds only its arguments and two wake-ups (the queue's and the
/// token's). A batch's write is boxed ([`write`]): the batch, its tallies and the flush take
/// room only while they run, not in every idle connection's task. Not an `async fn`: its
/// arguments would take room twice in the future (as arguments, then as the body's bindings).
#[allow(clippy::manual_async_fn)]
pub fn run<'a, W>(
    outlet: &'a mut Outlet<W>,
    queue: &'a mut Receiver,
    token: &'a CancellationToken,
    track: Option<&'a Track>,
) -> impl Future<Output = Ended> + Send + 'a
where
    W: AsyncWrite + Unpin + Send,
{
    async move {
        let ended = loop {
            let first = tokio::select! {
                biased;
                () = token.cancelled() => break Ended::Cancelled,
                frame = queue.recv() => match frame {
                    Some(frame) => frame,
                    None => break Ended::QueueClosed,
                },
            };
            if let Some(ended) = Box::pin(write(first, outlet, queue, token, track)).await {
                break ended;
            }
        };
        token.cancel();
        ended
    }
}

/// Writes `first` and what is queued behind it (up to [`MAX_BATCH`] frames); `Some` when the
/// writer ends.
async fn write<W>(
    first: Frame,
    outlet: &mut Outlet<W>,
    queue: &mut Receiver,
    token: &CancellationToken,
    track: Option<&Track>,
) -> Option<Ended>
where
    W: AsyncWrite + Unpin,
{
    let meters = METERS.get_or_init(Meters::new);
    // The rest of the batch under one lock; a fresh vector each time, so an idle connection
    // holds no batch room.
    let mut batch = vec![first];
    queue.take_batch(&mut batch, MAX_BATCH - 1);
    let frames = batch.len();
    let mut bytes = 0;
    let mut kinds = Batch::default();
    // Stamps of frames for a resumable connection, by their place in the batch, and whether
    // each is a change frame (not a marker).
    let mut stamps = Vec::new();
    for (i, frame) in batch.iter().enumerate() {
        bytes += frame.len();
        if let (Some(stamp), Some(_)) = (frame.stamp, track) {
            stamps.push((i, stamp, !matches!(frame.body, Body::Marker)));
        }
        kinds.add(frame);
    }
    // Every frame is handed over at once; what a cancelled flush leaves goes out with the
    // close frame.
    for frame in batch {
        feed(outlet, frame);
    }
    let result = tokio::select! {
        biased;
        // A slow consumer's flush may never finish: cancellation wins.
        () = token.cancelled() => {
            record(track, &stamps, frames, None);
            return Some(Ended::Cancelled);
        }
        result = outlet.flush() => result,
    };
    queue.written(bytes);
    if result.is_err() {
        return Some(Ended::SocketError);
    }
    meters.frames.increment(frames as u64);
    meters.flushes.increment(1);
    kinds.record(meters, SystemTime::now());
    if let Some(track) = track {
        // Read before looking at the queue: every frame of that span was queued before it was
        // recorded as routed.
        let completed = track.completed();
        let whole = queue.is_empty().then_some(completed);
        record(Some(track), &stamps, frames, whole);
        if let Some(id) = track.ping_due() {
            outlet.feed(frame::ping(&ping_payload(id)));
            let ping = outlet.flush();
            let sent = tokio::select! {
                biased;
                () = token.cancelled() => return Some(Ended::Cancelled),
                sent = ping => sent,
            };
            if sent.is_err() {
                return Some(Ended::SocketError);
            }
        }
    }
    None
}

/// Records on `track` the stamps of the first `fed` frames of a batch, and `completed` (the last
/// span routed whole) when the queue was found empty after it.
fn record(
    track: Option<&Track>,
    stamps: &[(usize, Stamp, bool)],
    fed: usize,
    completed: Option<u64>,
) {
    let Some(track) = track else {
        return;
    };
    let written: Vec<Stamp> = stamps
        .iter()
        .filter(|(i, ..)| *i < fed)
        .map(|(_, stamp, _)| *stamp)
        .collect();
    let frames = stamps
        .iter()
        .filter(|(i, _, change)| *i < fed && *change)
        .count();
    track.wrote(&written, frames as u64, completed);
}

/// Hands what is still queued to `outlet` and writes it, for at most `patience` (what is not
/// written by then goes out ahead of the close frame that follows, if the socket takes it),
/// recording the stamps of what was handed over on `track`.
pub async fn drain<W>(
    outlet: &mut Outlet<W>,
    queue: &mut Receiver,
    track: Option<&Track>,
    patience: Duration,
) where
    W: AsyncWrite + Unpin,
{
    let mut stamps = Vec::new();
    let mut fed = 0;
    while let Some(frame) = queue.try_recv() {
        if let (Some(stamp), Some(_)) = (frame.stamp, track) {
            stamps.push((fed, stamp, !matches!(frame.body, Body::Marker)));
        }
        feed(outlet, frame);
        fed += 1;
    }
    let _written = tokio::time::timeout(patience, outlet.flush()).await;
    if let Some(track) = track {
        let completed = track.completed();
        let whole = queue.is_empty().then_some(completed);
        record(Some(track), &stamps, fed, whole);
    }
}

/// Writes the close frame (after anything handed over before it) and shuts the write direction
/// down, giving up after `patience`.
pub async fn close<W>(outlet: &mut Outlet<W>, code: u16, reason: &str, patience: Duration)
where
    W: AsyncWrite + Unpin,
{
    let sent = tokio::time::timeout(patience, outlet.close(frame::close(code, reason))).await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!(code, "close frame not delivered");
    }
}

/// Hands `frame`'s bytes to `outlet` (nothing for a marker).
fn feed<W: AsyncWrite + Unpin>(outlet: &mut Outlet<W>, frame: Frame) {
    match frame.body {
        Body::Wire(bytes) | Body::Control(bytes) => outlet.feed(bytes),
        Body::Marker => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{channel, Limits};

    #[tokio::test]
    async fn queued_frames_reach_the_sink_in_order() {
        let token = CancellationToken::new();
        let (tx, mut rx) = channel(
            Limits {
                max_frames: 16,
                max_bytes: 1 << 16,
            },
            token.clone(),
        );
        for i in 0..10 {
            tx.push(Frame::text(Kind::System, format!("m{i}"))).unwrap();
        }
        let writer_token = token.clone();
        let writer = tokio::spawn(async move {
            let mut outlet = Outlet::new(Vec::new());
            let ended = run(&mut outlet, &mut rx, &writer_token, None).await;
            (ended, outlet)
        });
        while tx.queued_bytes() > 0 {
            tokio::task::yield_now().await;
        }
        token.cancel();
        let (ended, mut outlet) = writer.await.unwrap();
        assert_eq!(ended, Ended::Cancelled);
        close(&mut outlet, 1000, "bye", Duration::from_secs(1)).await;
        let expected: Vec<u8> = (0..10)
            .map(|i| frame::text(&format!("m{i}")))
            .chain([frame::close(1000, "bye")])
            .flat_map(|b| b.to_vec())
            .collect();
        assert_eq!(outlet.into_inner(), expected);
    }

    /// A batch is counted by kind and measured from the oldest origin of each kind, not the
    /// first or the last frame.
    #[test]
    fn a_batch_counts_each_kind_and_keeps_its_oldest_origin() {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let mut batch = Batch::default();
        for frame in [
            Frame::text(Kind::Changes, "a").since(at(20)),
            Frame::text(Kind::Changes, "b").since(at(10)),
            Frame::text(Kind::Changes, "c").since(at(30)),
            Frame::text(Kind::Reply, "d"),
        ] {
            batch.add(&frame);
        }
        assert_eq!(batch.frames[Kind::Changes.index()], 3);
        assert_eq!(batch.frames[Kind::Reply.index()], 1);
        assert_eq!(batch.frames[Kind::Broadcast.index()], 0);
        assert_eq!(batch.oldest[Kind::Changes.index()], Some(at(10)));
        assert_eq!(batch.oldest[Kind::Reply.index()], None);
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        assert_eq!(Kind::of_event("phx_reply"), Kind::Reply);
        assert_eq!(Kind::of_event("presence_diff"), Kind::Presence);
        assert_eq!(Kind::of_event("system"), Kind::System);
    }
}
