//! The write side of an upgraded connection: pre-encoded frames ([`super::frame`]) written with
//! vectored writes, straight from the shared bytes fan-out built.
//!
//! Frames handed over ([`Outlet::feed`]) wait in a list of references, not copied into a
//! buffer; [`Outlet::flush`] writes them with as few system calls as the kernel allows (up to
//! [`MAX_SLICES`] frames per `writev`). The state is kept between calls, so a flush cancelled
//! halfway (a slow consumer's) leaves the rest of a partly written frame at the front: a later
//! flush, the close frame's, completes it before anything else and the stream stays whole.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;

/// Most frames given to one `writev` (the kernel takes up to 1024 slices).
pub const MAX_SLICES: usize = 64;

/// A list of frames kept after a flush is dropped when it can hold more than this: an idle
/// connection holds no write room.
const KEPT_CAPACITY: usize = 8;

/// The write half of the connection.
#[derive(Debug)]
pub enum Half {
    /// A TCP connection's own write half (no lock shared with the reader).
    Tcp(OwnedWriteHalf),
    /// Any other upgraded connection, split with a lock.
    Other(WriteHalf<TokioIo<Upgraded>>),
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Half::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Half::Other(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Half::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Half::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Half::Tcp(io) => io.is_write_vectored(),
            Half::Other(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Half::Tcp(io) => Pin::new(io).poll_flush(cx),
            Half::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Half::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Half::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// Writes pre-encoded frames to `W` (the connection's [`Half`], or anything else that writes).
#[derive(Debug)]
pub struct Outlet<W = Half> {
    io: W,
    /// Frames handed over and not yet written; the first may be partly written (its written
    /// bytes already advanced past).
    pending: VecDeque<Bytes>,
    /// Nothing more is written after the close frame.
    closed: bool,
}

impl<W: AsyncWrite + Unpin> Outlet<W> {
    /// An outlet writing to `io`.
    pub fn new(io: W) -> Outlet<W> {
        Outlet {
            io,
            pending: VecDeque::new(),
            closed: false,
        }
    }

    /// Hands `frame` over: it is written by the next [`Outlet::flush`], after what was handed
    /// over before it. Nothing is handed over after the close frame.
    pub fn feed(&mut self, frame: Bytes) {
        if self.closed || frame.is_empty() {
            return;
        }
        self.pending.push_back(frame);
    }

    /// Bytes handed over and not written yet.
    #[cfg(test)]
    fn pending_bytes(&self) -> usize {
        self.pending.iter().map(Bytes::len).sum()
    }

    /// Writes everything handed over. Cancel-safe: what a cancelled flush did not write stays
    /// handed over, a partly written frame first.
    ///
    /// # Errors
    /// When the socket fails, or takes no more bytes.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            // The slices are built on each poll's stack, never kept in the future: a future
            // that held them would hold 1 KiB in every connection's task.
            let written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (slice, frame) in slices.iter_mut().zip(&self.pending) {
                    *slice = IoSlice::new(frame);
                    n += 1;
                }
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(written);
        }
        if self.pending.capacity() > KEPT_CAPACITY {
            self.pending = VecDeque::new();
        }
        self.io.flush().await
    }

    /// Hands over the close frame (after everything handed over before it), writes it all and
    /// shuts the write direction down; nothing is written after it.
    ///
    /// # Errors
    /// When the socket fails.
    pub async fn close(&mut self, frame: Bytes) -> io::Result<()> {
        self.feed(frame);
        self.closed = true;
        self.flush().await?;
        self.io.shutdown().await
    }

    /// The writer, and with it what was written to it.
    pub fn into_inner(self) -> W {
        self.io
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if front.len() <= written {
                written -= front.len();
                self.pending.pop_front();
            } else {
                front.advance(written);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `step` bytes per call and records them.
    struct Trickle {
        step: usize,
        out: Vec<u8>,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut room = self.step;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(room);
                self.out.extend_from_slice(&buf[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_are_written_whole_and_in_order_whatever_each_write_takes() {
        for step in [1, 3, 7, 64, 10_000] {
            let mut outlet = Outlet::new(Trickle {
                step,
                out: Vec::new(),
                calls: 0,
            });
            let mut expected = Vec::new();
            for i in 0..200u32 {
                let frame = Bytes::from(format!("frame {i};").repeat(i as usize % 5 + 1));
                expected.extend_from_slice(&frame);
                outlet.feed(frame);
            }
            outlet.close(Bytes::from_static(b"end")).await.unwrap();
            outlet.feed(Bytes::from_static(b"after the close"));
            outlet.flush().await.unwrap();
            expected.extend_from_slice(b"end");
            assert_eq!(outlet.io.out, expected, "step {step}");
            assert_eq!(outlet.pending_bytes(), 0);
        }
    }

    /// Many frames go out in one write when the socket takes them.
    #[tokio::test]
    async fn one_write_carries_many_frames() {
        let mut outlet = Outlet::new(Trickle {
            step: usize::MAX,
            out: Vec::new(),
            calls: 0,
        });
        for _ in 0..MAX_SLICES * 2 {
            outlet.feed(Bytes::from_static(b"0123456789"));
        }
        outlet.flush().await.unwrap();
        assert_eq!(outlet.io.calls, 2);
        assert_eq!(outlet.io.out.len(), MAX_SLICES * 2 * 10);
    }

    /// A flush cancelled with a frame partly written resumes inside that frame.
    #[tokio::test]
    async fn a_cancelled_flush_leaves_the_rest_of_a_partly_written_frame_first() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut outlet = Outlet::new(client);
        outlet.feed(Bytes::from(vec![1u8; 40]));
        outlet.feed(Bytes::from(vec![2u8; 40]));
        // The pipe takes 16 bytes and then blocks: one poll writes them, and the flush is
        // dropped unfinished.
        let cancelled = futures_util::FutureExt::now_or_never(outlet.flush());
        assert!(cancelled.is_none());
        assert_eq!(outlet.pending_bytes(), 80 - 16);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut all)
                .await
                .unwrap();
            all
        });
        outlet.close(Bytes::from(vec![3u8; 5])).await.unwrap();
        drop(outlet);
        let all = reader.await.unwrap();
        let mut expected = vec![1u8; 40];
        expected.extend(vec![2u8; 40]);
        expected.extend(vec![3u8; 5]);
        assert_eq!(all, expected);
    }
}
