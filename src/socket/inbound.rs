//! The read side of an upgraded connection: the client's messages, read with no buffer of the
//! connection's own.
//!
//! Each read goes into a buffer on the stack of the poll that makes it, and the bytes are
//! decoded ([`super::decode`]) before the poll returns. An idle connection therefore holds no
//! read buffer at all: the socket is polled for readiness, the bytes are read once there are
//! some, and all that outlives the poll is a frame cut by the read's end, a fragmented
//! message's first frames, or the bytes that followed a message in the same read.
//!
//! The reader writes nothing: the session answers pings and close frames itself, through the
//! [`super::Outlet`], in order with the frames already queued.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;

use super::decode::{Decoder, Failure, Limits, Message};

/// Most bytes one read takes from the socket (the size of the stack buffer it reads into).
const READ_CHUNK: usize = 8192;

/// The read half of the connection.
#[derive(Debug)]
pub enum Half {
    /// A TCP connection's own read half.
    Tcp(OwnedReadHalf),
    /// Any other upgraded connection, split with a lock.
    Other(ReadHalf<TokioIo<Upgraded>>),
}

impl Half {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            // A TCP stream's read waits for readiness, then reads what the socket has: no
            // buffer but `buf` is involved.
            Half::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Half::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

/// Why a read ended the connection.
#[derive(Debug)]
pub enum Error {
    /// The client broke the protocol: the connection fails with this close frame.
    Failed(Failure),
    /// The socket failed.
    Io(io::Error),
}

/// The client's messages.
#[derive(Debug)]
pub struct Reader {
    half: Half,
    /// Bytes read but not decoded yet: the bytes the HTTP server had read past the upgrade
    /// request (a client may send its first frame without waiting for the 101), or what
    /// followed a message in the same read. Empty, with nothing allocated, most of the time.
    pending: Bytes,
    decoder: Decoder,
    /// Set once the connection ended (end of stream, failure): nothing more is read.
    ended: bool,
}

impl Reader {
    /// The messages of the `early` bytes, then of `half`, decoded up to `limits`.
    pub fn new(early: Bytes, half: Half, limits: Limits) -> Reader {
        Reader {
            half,
            pending: early,
            decoder: Decoder::new(limits),
            ended: false,
        }
    }

    /// The next message; `None` once the stream ended (after the end of the stream, or after
    /// an error). Cancel safe: nothing read is lost when the future is dropped.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Whether the reader holds nothing on the heap but the socket (between messages).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.decoder.is_idle()
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if !self.pending.is_empty() {
                let pending = std::mem::take(&mut self.pending);
                let (message, used) = match self.decoder.decode(&pending) {
                    Ok(decoded) => decoded,
                    Err(failure) => return self.fail(Error::Failed(failure)),
                };
                if used < pending.len() {
                    self.pending = pending.slice(used..);
                }
                if let Some(message) = message {
                    return Poll::Ready(Some(Ok(message)));
                }
                continue;
            }
            // The buffer lives in this call's frame, never in the connection's state.
            let mut space = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut space);
            match self.half.poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return self.fail(Error::Io(e)),
                Poll::Ready(Ok(())) => {}
            }
            let read = buf.filled();
            if read.is_empty() {
                self.ended = true;
                return Poll::Ready(None);
            }
            let (message, used) = match self.decoder.decode(read) {
                Ok(decoded) => decoded,
                Err(failure) => return self.fail(Error::Failed(failure)),
            };
            if used < read.len() {
                self.pending = Bytes::copy_from_slice(&read[used..]);
            }
            if let Some(message) = message {
                return Poll::Ready(Some(Ok(message)));
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Message, Error>>> {
        self.ended = true;
        self.pending = Bytes::new();
        Poll::Ready(Some(Err(error)))
    }
}
