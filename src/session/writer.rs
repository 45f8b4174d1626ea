//! Stage 5: drains a connection's outbound queue to its socket.
//!
//! Everything already queued is written with one flush (one write per message costs five times
//! the throughput). On close it writes the close frame, with the code and reason chosen by the
//! session, after what was queued before it — bounded in time, because a slow consumer may never
//! read them.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt};
use tokio_util::sync::CancellationToken;

use crate::outbound::{Frame, Receiver};

/// Most frames written before one flush.
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

/// Writes queued frames to `sink` until `token` is cancelled, the queue closes or the socket
/// fails.
pub async fn run<S>(sink: &mut S, queue: &mut Receiver, token: &CancellationToken) -> Ended
where
    S: Sink<Message> + Unpin,
{
    loop {
        let first = tokio::select! {
            biased;
            () = token.cancelled() => return Ended::Cancelled,
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => return Ended::QueueClosed,
            },
        };
        // The rest of the batch under one lock; a fresh vector each time, so an idle
        // connection holds no batch room.
        let mut batch = vec![first];
        queue.take_batch(&mut batch, MAX_BATCH - 1);
        let frames = batch.len();
        let bytes: usize = batch.iter().map(Frame::len).sum();
        let write = async {
            for frame in batch {
                sink.feed(to_message(frame)).await?;
            }
            sink.flush().await
        };
        let result = tokio::select! {
            biased;
            // A slow consumer's flush may never finish: cancellation wins.
            () = token.cancelled() => return Ended::Cancelled,
            result = write => result,
        };
        queue.written(bytes);
        metrics::counter!("gateway_writer_frames_total").increment(frames as u64);
        metrics::counter!("gateway_writer_flushes_total").increment(1);
        if result.is_err() {
            return Ended::SocketError;
        }
    }
}

/// Sends the close frame (after anything the socket still buffers) and flushes, giving up after
/// `patience`.
pub async fn close<S>(sink: &mut S, code: u16, reason: &str, patience: Duration)
where
    S: Sink<Message> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let sent = tokio::time::timeout(patience, async {
        sink.send(frame).await?;
        sink.close().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!(code, "close frame not delivered");
    }
}

fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text),
        Frame::Binary(bytes) => Message::Binary(bytes),
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
            tx.push(Frame::from(format!("m{i}"))).unwrap();
        }
        let writer_token = token.clone();
        let writer = tokio::spawn(async move {
            let mut sink: Vec<Message> = Vec::new();
            let ended = run(&mut sink, &mut rx, &writer_token).await;
            (ended, sink)
        });
        while tx.queued_bytes() > 0 {
            tokio::task::yield_now().await;
        }
        token.cancel();
        let (ended, sink) = writer.await.unwrap();
        assert_eq!(ended, Ended::Cancelled);
        let expected: Vec<Message> = (0..10)
            .map(|i| Message::Text(format!("m{i}").into()))
            .collect();
        assert_eq!(sink, expected);
    }
}
