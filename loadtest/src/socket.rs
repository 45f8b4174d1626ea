//! The clients' WebSocket, kept lighter than what it measures: one read buffer per
//! connection, frames parsed in place, payloads handed out as slices of that buffer.
//!
//! A client task reads with [`Socket::read_more`] (a single `read`, so it can sit in a
//! `select!` and be cancelled without losing bytes), then takes every complete frame out of
//! the buffer with [`Socket::parse`] and looks at its payload with [`Socket::payload`].
//! Nothing is allocated per frame: the buffer grows only for a frame larger than it, and a
//! fragmented message (which the gateway does not send) is assembled in a second buffer.
//! Sends (joins, heartbeats, pongs, the close) are masked as RFC 6455 requires of clients.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Read buffer of a connection: deliveries are a few hundred bytes and a run holds thousands of
/// sockets.
const READ_BUFFER: usize = 8 * 1024;
/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message accepted (as the gateway's own frame limit).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What kind of message a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A text message.
    Text,
    /// A binary message.
    Binary,
    /// A ping (answer it with [`Socket::pong`]).
    Ping,
    /// A pong.
    Pong,
    /// The peer's close; the payload is its code and reason.
    Close,
}

/// A complete message found by [`Socket::parse`]; its payload stays readable through
/// [`Socket::payload`] until the next `parse` or `read_more`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// The message's kind.
    pub(crate) kind: Kind,
    /// Where the payload is: in the read buffer, or assembled from fragments.
    at: Place,
}

#[derive(Debug, Clone, Copy)]
enum Place {
    Buffer { start: usize, end: usize },
    Fragments,
}

/// Why the socket cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Error {
    /// The connection ended without a close frame.
    Ended,
    /// A read or write failed.
    Io(std::io::ErrorKind),
    /// The peer broke the protocol.
    Protocol(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Ended => f.write_str("socket ended"),
            Error::Io(kind) => write!(f, "io {kind:?}"),
            Error::Protocol(what) => write!(f, "protocol: {what}"),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e.kind())
    }
}

/// How the upgrade request ended.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// 101: the socket is open.
    Open(Socket),
    /// Any other status, with the response body.
    Refused {
        /// HTTP status.
        status: u16,
        /// Body, e.g. `{"error":"Too many connected users"}`.
        body: String,
    },
}

/// A client WebSocket over TCP.
#[derive(Debug)]
pub(crate) struct Socket {
    tcp: TcpStream,
    /// Bytes read; `[start, end)` not parsed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes the frame at `start` needs in all (0: unknown); `read_more` makes room for them.
    need: usize,
    /// A fragmented message being assembled, and its kind.
    fragments: Vec<u8>,
    fragment_kind: Option<Kind>,
    /// Frames are masked with keys drawn from this (xorshift).
    mask_state: u64,
    /// Reused for building outgoing frames.
    out: Vec<u8>,
}

/// Opens a WebSocket: sends the upgrade for `path_and_query` to `host` over `tcp` and reads the
/// answer.
pub(crate) async fn handshake(
    mut tcp: TcpStream,
    host: &str,
    path_and_query: &str,
) -> Result<Handshake, Error> {
    let key = generate_key();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut end = 0;
    let head_len = loop {
        if let Some(i) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if end == MAX_HEAD {
            return Err(Error::Protocol("response head too long"));
        }
        if end == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_HEAD), 0);
        }
        match tcp.read(&mut buf[end..]).await? {
            0 => return Err(Error::Ended),
            n => end += n,
        }
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| Error::Protocol("response head is not text"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Error::Protocol("no status in the response"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if status != 101 {
        let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
        let mut body = buf[head_len..end].to_vec();
        while length.is_none_or(|l| body.len() < l) && body.len() < MAX_HEAD {
            let mut chunk = [0u8; 1024];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        if let Some(l) = length {
            body.truncate(l);
        }
        return Ok(Handshake::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(Error::Protocol("wrong Sec-WebSocket-Accept"));
    }
    buf.resize(buf.len().max(READ_BUFFER), 0);
    Ok(Handshake::Open(Socket {
        tcp,
        buf,
        start: head_len,
        end,
        need: 0,
        fragments: Vec::new(),
        fragment_kind: None,
        mask_state: mask_seed(),
        out: Vec::new(),
    }))
}

/// A distinct, unpredictable-enough starting point for each socket's masking keys.
fn mask_seed() -> u64 {
    static SOCKETS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the socket number and the time: never 0, which xorshift cannot leave.
    let mut z = nanos
        ^ SOCKETS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

impl Socket {
    /// Waits for more bytes from the peer. Cancel-safe: it is a single `read`, and the buffer
    /// only changes once that read returned.
    ///
    /// Frames returned earlier by [`Socket::parse`] are no longer readable afterwards.
    pub(crate) async fn read_more(&mut self) -> Result<(), Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let wanted = self.need.max(1);
        if self.buf.len() - self.start < wanted {
            // Move the unparsed tail to the front; grow only for a frame larger than the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < wanted {
                self.buf.resize(wanted, 0);
            }
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Full of one incomplete header: cannot happen with a 10-byte header and an 8 KiB
            // buffer, but a read into no room would look like the end of the connection.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.tcp.read(&mut self.buf[self.end..]).await? {
            0 => Err(Error::Ended),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    /// Takes the next complete message out of what was read; `Ok(None)` when more bytes are
    /// needed.
    pub(crate) fn parse(&mut self) -> Result<Option<Frame>, Error> {
        loop {
            let bytes = &self.buf[self.start..self.end];
            let Some((fin, opcode, header, len)) = frame_header(bytes)? else {
                self.need = 0;
                return Ok(None);
            };
            if len > MAX_MESSAGE {
                return Err(Error::Protocol("frame too large"));
            }
            if bytes.len() < header + len {
                self.need = header + len;
                return Ok(None);
            }
            self.need = 0;
            let (start, end) = (self.start + header, self.start + header + len);
            self.start = end;
            let kind = match opcode {
                0x0 => {
                    let Some(kind) = self.fragment_kind else {
                        return Err(Error::Protocol("continuation without a first fragment"));
                    };
                    if self.fragments.len() + len > MAX_MESSAGE {
                        return Err(Error::Protocol("message too large"));
                    }
                    self.fragments.extend_from_slice(&self.buf[start..end]);
                    if !fin {
                        continue;
                    }
                    self.fragment_kind = None;
                    return Ok(Some(Frame {
                        kind,
                        at: Place::Fragments,
                    }));
                }
                0x1 => Kind::Text,
                0x2 => Kind::Binary,
                0x8 => Kind::Close,
                0x9 => Kind::Ping,
                0xA => Kind::Pong,
                _ => return Err(Error::Protocol("unknown opcode")),
            };
            if !fin {
                if matches!(kind, Kind::Text | Kind::Binary) && self.fragment_kind.is_none() {
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&self.buf[start..end]);
                    self.fragment_kind = Some(kind);
                    continue;
                }
                return Err(Error::Protocol("unexpected fragment"));
            }
            return Ok(Some(Frame {
                kind,
                at: Place::Buffer { start, end },
            }));
        }
    }

    /// The payload of `frame`.
    pub(crate) fn payload(&self, frame: &Frame) -> &[u8] {
        match frame.at {
            Place::Buffer { start, end } => &self.buf[start..end],
            Place::Fragments => &self.fragments,
        }
    }

    /// The next message, reading as needed.
    pub(crate) async fn next(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    /// Sends a text message.
    pub(crate) async fn send_text(&mut self, text: &[u8]) -> Result<(), Error> {
        self.send(0x1, text).await
    }

    /// Answers a ping with its payload (at most 125 bytes, as every control frame).
    pub(crate) async fn pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send(0xA, payload).await
    }

    /// Sends a close frame with status 1000 (normal closure).
    pub(crate) async fn send_close(&mut self) -> Result<(), Error> {
        self.send(0x8, &1000u16.to_be_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Error> {
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 7;
        self.mask_state ^= self.mask_state << 17;
        let mask = (self.mask_state as u32).to_be_bytes();
        self.out.clear();
        self.out.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => self.out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&mask);
        self.out
            .extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.tcp.write_all(&self.out).await?;
        Ok(())
    }
}

/// `(fin, opcode, header length, payload length)` of the frame at the start of `bytes`;
/// `None` while its header is incomplete. Server frames must not be masked.
fn frame_header(bytes: &[u8]) -> Result<Option<(bool, u8, usize, usize)>, Error> {
    let [b0, b1, ..] = *bytes else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Error::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(Error::Protocol("masked frame from the server"));
    }
    let (header, len) = match b1 & 0x7F {
        126 => match bytes.get(2..4) {
            Some(l) => (4, usize::from(u16::from_be_bytes([l[0], l[1]]))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(l) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(l);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                )
            }
            None => return Ok(None),
        },
        len => (2, usize::from(len)),
    };
    Ok(Some((b0 & 0x80 != 0, b0 & 0x0F, header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            l @ 0..=125 => f.push(l as u8),
            l @ 126..=0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(l as u16).to_be_bytes());
            }
            l => {
                f.push(127);
                f.extend_from_slice(&(l as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// A socket pair: our client socket (after a real handshake with tungstenite's server) and
    /// the raw server side, so the test writes exact bytes.
    async fn pair() -> (Socket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                tcp.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = derive_accept_key(key.trim().as_bytes());
            tcp.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            tcp
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let Handshake::Open(socket) = handshake(tcp, &addr.to_string(), "/ws").await.unwrap()
        else {
            panic!("refused");
        };
        (socket, server.await.unwrap())
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_parsed_whole() {
        let (mut socket, mut server) = pair().await;
        let big = vec![b'y'; 70_000];
        let mut wire = unmasked(0x1, true, b"hello");
        wire.extend(unmasked(0x1, false, b"frag"));
        wire.extend(unmasked(0x9, true, b"p"));
        wire.extend(unmasked(0x0, true, b"mented"));
        wire.extend(unmasked(0x2, true, &big));
        wire.extend(unmasked(0x1, true, &[b'z'; 300]));
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(7) {
                server.write_all(chunk).await.unwrap();
            }
            server
        });
        let mut seen = Vec::new();
        while seen.len() < 5 {
            let f = socket.next().await.unwrap();
            seen.push((f.kind, socket.payload(&f).to_vec()));
        }
        assert_eq!(seen[0], (Kind::Text, b"hello".to_vec()));
        assert_eq!(seen[1], (Kind::Ping, b"p".to_vec()));
        assert_eq!(seen[2], (Kind::Text, b"fragmented".to_vec()));
        assert_eq!(seen[3], (Kind::Binary, big));
        assert_eq!(seen[4], (Kind::Text, vec![b'z'; 300]));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn sends_are_masked_frames_a_websocket_server_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use futures_util::StreamExt;
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                let close = m.is_close();
                got.push(m);
                if close {
                    break;
                }
            }
            got
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let Handshake::Open(mut socket) = handshake(tcp, &addr.to_string(), "/ws").await.unwrap()
        else {
            panic!("refused");
        };
        socket.send_text(b"short").await.unwrap();
        socket.send_text(&[b'a'; 1000]).await.unwrap();
        socket.send_close().await.unwrap();
        let got = server.await.unwrap();
        use tokio_tungstenite::tungstenite::Message;
        assert_eq!(got[0], Message::text("short"));
        assert_eq!(got[1], Message::text("a".repeat(1000)));
        assert!(got[2].is_close());
    }

    #[tokio::test]
    async fn refusals_give_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let body = r#"{"error":"Too many connected users"}"#;
            let mut head = [0u8; 512];
            let _request = tcp.read(&mut head).await.unwrap();
            tcp.write_all(
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            // Held open: the body's length, not the end of the connection, ends the read.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        match handshake(tcp, &addr.to_string(), "/ws").await.unwrap() {
            Handshake::Refused { status, body } => {
                assert_eq!(status, 429);
                assert_eq!(body, r#"{"error":"Too many connected users"}"#);
            }
            Handshake::Open(_) => panic!("opened"),
        }
    }

    #[test]
    fn masked_or_reserved_server_frames_are_refused() {
        assert!(frame_header(&[0x81, 0x85]).is_err());
        assert!(frame_header(&[0xC1, 0x05]).is_err());
        assert_eq!(frame_header(&[0x81]).unwrap(), None);
        assert_eq!(frame_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(
            frame_header(&[0x82, 126, 1, 0]).unwrap(),
            Some((true, 2, 4, 256))
        );
    }
}
