//! The read side of an upgraded connection, as the byte stream the WebSocket reader
//! (tungstenite) parses client frames from.
//!
//! The reader wants a stream it can also write to: it answers pings and close frames on its own.
//! Its writes are dropped here, because the session writes every server frame itself through the
//! [`super::Outlet`] — pongs and the close reply included (`session`), in order with the
//! frames already queued — and two writers on one stream would interleave their bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;

/// The read half of the connection.
#[derive(Debug)]
pub enum Half {
    /// A TCP connection's own read half.
    Tcp(OwnedReadHalf),
    /// Any other upgraded connection, split with a lock.
    Other(ReadHalf<TokioIo<Upgraded>>),
}

/// What the WebSocket reader reads: the bytes the HTTP server had read past the upgrade request
/// (a client may send its first frame without waiting for the 101), then the connection.
#[derive(Debug)]
pub struct Inbound {
    early: Bytes,
    half: Half,
}

impl Inbound {
    /// The stream of `early` bytes followed by `half`.
    pub fn new(early: Bytes, half: Half) -> Inbound {
        Inbound { early, half }
    }
}

impl AsyncRead for Inbound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if this.early.is_empty() {
                // Nothing of the early bytes' allocation is kept once they are read.
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        match &mut this.half {
            Half::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Half::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

/// The reader's own replies are dropped (see the module's documentation).
impl AsyncWrite for Inbound {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
