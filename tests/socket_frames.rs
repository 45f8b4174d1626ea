//! Client frames as the gateway reads them off a real socket: a frame written one byte at a
//! time, a fragmented message with a ping between its fragments, and the faults that fail the
//! connection with their close code (RFC 6455 7.4.1: 1002, 1007, 1009).

mod common;

use std::time::Duration;

use common::{token, TestDb, TestGateway};
use realtime_gateway::socket::frame::{self, CLOSE, CONTINUATION, PING, PONG, TEXT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(10);
const MASK: [u8; 4] = [0xA1, 0x07, 0x5C, 0xE3];

/// A connection upgraded by hand, so that the test writes the client's frames byte for byte.
struct Raw {
    tcp: TcpStream,
    /// Bytes read and not yet taken as frames.
    got: Vec<u8>,
}

impl Raw {
    async fn open(gw: &TestGateway) -> Raw {
        let path = format!(
            "/realtime/v1/websocket?apikey={}&vsn=2.0.0",
            token("anon", None)
        );
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            gw.addr
        );
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            got: Vec::new(),
        };
        let end = loop {
            if let Some(end) = raw.got.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(raw.fill().await, "closed before the 101");
        };
        let head = String::from_utf8_lossy(&raw.got[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.got.drain(..end + 4);
        raw
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, self.tcp.read(&mut chunk))
            .await
            .expect("bytes or the end in time")
            .unwrap_or(0);
        self.got.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// The next server frame's opcode and payload; `None` once the server closed the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(header) = frame::header(&self.got) {
                assert!(header.mask.is_none() && header.fin, "{header:?}");
                let end = header.size + usize::try_from(header.len).unwrap();
                if self.got.len() >= end {
                    let payload = self.got[header.size..end].to_vec();
                    self.got.drain(..end);
                    return Some((header.opcode, payload));
                }
            }
            if !self.fill().await {
                assert!(self.got.is_empty(), "a cut frame: {:?}", self.got);
                return None;
            }
        }
    }

    /// The next server frame, a text frame, as JSON.
    async fn json(&mut self) -> Value {
        let (opcode, payload) = self.frame().await.expect("a frame");
        assert_eq!(opcode, TEXT);
        serde_json::from_slice(&payload).unwrap()
    }
}

/// A client frame: the first byte as given (FIN, RSV bits, opcode), then the length, the mask
/// when there is one, and the payload masked with it.
fn client_frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(u8::from(fin) << 7 | opcode, Some(MASK), payload)
}

fn heartbeat(reference: &str) -> Vec<u8> {
    json!([null, reference, "phoenix", "heartbeat", {}])
        .to_string()
        .into_bytes()
}

/// A heartbeat written one byte per write is read whole; one sent in three fragments with a
/// ping between them gets the pong first (the ping is answered when it arrives) and then its
/// reply; the client's close is echoed.
#[tokio::test]
async fn frames_cut_anywhere_and_fragmented_messages_are_read() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut raw = Raw::open(&gw).await;

    for byte in masked(true, TEXT, &heartbeat("1")) {
        raw.send(&[byte]).await;
    }
    let reply = raw.json().await;
    assert_eq!(
        (&reply[1], &reply[4]["status"]),
        (&json!("1"), &json!("ok"))
    );

    let text = heartbeat("2");
    let (a, rest) = text.split_at(5);
    let (b, c) = rest.split_at(7);
    let bytes = [
        masked(false, TEXT, a),
        masked(true, PING, b"between"),
        masked(false, CONTINUATION, b),
        masked(true, PONG, b"unasked"),
        masked(true, CONTINUATION, c),
    ]
    .concat();
    // Cut across the frames' boundaries.
    for chunk in bytes.chunks(9) {
        raw.send(chunk).await;
    }
    assert_eq!(raw.frame().await, Some((PONG, b"between".to_vec())));
    let reply = raw.json().await;
    assert_eq!(reply[1], "2");

    let mut close = 4100u16.to_be_bytes().to_vec();
    close.extend_from_slice("fin \u{e9}".as_bytes());
    raw.send(&masked(true, CLOSE, &close)).await;
    assert_eq!(raw.frame().await, Some((CLOSE, close)));
    assert_eq!(raw.frame().await, None);
    gw.stop().await.unwrap();
}

/// Each fault fails the connection: a close frame with its code, then the end of the stream.
/// The socket's other messages are not affected: a heartbeat before the fault is answered.
#[tokio::test]
async fn protocol_faults_fail_the_connection_with_their_close_code() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.max_frame_bytes = 1000).await;
    let text = |payload: &[u8]| masked(true, TEXT, payload);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", client_frame(0x81, None, &heartbeat("x")), 1002),
        ("reserved bit", client_frame(0xC1, Some(MASK), b"{}"), 1002),
        ("reserved opcode", masked(true, 0x3, b""), 1002),
        ("fragmented ping", masked(false, PING, b""), 1002),
        ("lone continuation", masked(true, CONTINUATION, b"x"), 1002),
        (
            "close code 1005",
            masked(true, CLOSE, &1005u16.to_be_bytes()),
            1002,
        ),
        ("text not UTF-8", text(&[b'"', 0xC3, 0x28, b'"']), 1007),
        (
            "fragment not UTF-8",
            [
                masked(false, TEXT, b"ab"),
                masked(false, CONTINUATION, &[0xFF]),
            ]
            .concat(),
            1007,
        ),
        ("frame over the limit", text(&[b' '; 1001]), 1009),
        (
            "message over the limit",
            [
                masked(false, TEXT, &[b' '; 600]),
                masked(true, CONTINUATION, &[b' '; 401]),
            ]
            .concat(),
            1009,
        ),
    ];
    for (name, fault, code) in cases {
        let mut raw = Raw::open(&gw).await;
        raw.send(&text(&heartbeat("ok"))).await;
        assert_eq!(raw.json().await[1], "ok", "{name}");
        raw.send(&fault).await;
        let (opcode, payload) = raw
            .frame()
            .await
            .unwrap_or_else(|| panic!("{name}: no close"));
        assert_eq!(opcode, CLOSE, "{name}");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code, "{name}");
        assert_eq!(raw.frame().await, None, "{name}: the stream ends");
    }
    gw.stop().await.unwrap();
}
