//! The WebSocket connection as the gateway writes it: the handshake and its refusals, frames
//! of every length class, pongs, the close handshake from the client's side, and a first frame
//! that arrives with the upgrade request.

mod common;

use std::time::Duration;

use common::{token, TestDb, TestGateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A tungstenite client's socket to `gw`, with an anon key.
async fn open(gw: &TestGateway) -> Ws {
    let url = gw.ws_url(&token("anon", None), "2.0.0");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a frame in time")
        .expect("the socket is open")
        .expect("a well-formed frame")
}

/// A client's ping is answered with its payload; a client's close frame is answered with its
/// code and reason, and the socket ends.
#[tokio::test]
async fn pings_are_answered_and_a_client_close_is_echoed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut ws = open(&gw).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                (frame.code, frame.reason.as_str()),
                (CloseCode::Library(4001), "bye")
            );
        }
        other => panic!("expected the close reply, got {other:?}"),
    }
    let end = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("the socket ends");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    gw.stop().await.unwrap();
}

/// Broadcasts whose frames need a 1-, 3- and 9-byte length (RFC 6455 5.2) arrive whole, to a
/// member and to the sender (`self`), and the socket stays usable after each.
#[tokio::test]
async fn frames_of_every_length_class_arrive_whole() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut ws = open(&gw).await;
    let join = json!(["1", "1", "realtime:sizes", "phx_join",
                      {"config": {"broadcast": {"self": true}}}]);
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let reply: Value = serde_json::from_str(next(&mut ws).await.to_text().unwrap()).unwrap();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    for (i, size) in [10usize, 200, 70_000, 1_000_000].into_iter().enumerate() {
        let text = "x".repeat(size);
        let push = json!(["1", (i + 2).to_string(), "realtime:sizes", "broadcast",
                          {"type": "broadcast", "event": "big", "payload": {"text": text}}]);
        ws.send(Message::Text(push.to_string().into()))
            .await
            .unwrap();
        let got: Value = serde_json::from_str(next(&mut ws).await.to_text().unwrap()).unwrap();
        assert_eq!(got[3], "broadcast", "{size}");
        assert_eq!(got[4]["payload"]["text"].as_str().map(str::len), Some(size));
    }
    ws.send(Message::Text(
        json!([null, "99", "phoenix", "heartbeat", {}])
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply: Value = serde_json::from_str(next(&mut ws).await.to_text().unwrap()).unwrap();
    assert_eq!(reply[1], "99");
    gw.stop().await.unwrap();
}

/// A client that sends its first frame in the same packet as the upgrade request (before the
/// 101 arrives) has it read: the bytes the HTTP server read past the request are not lost.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let path = format!(
        "/realtime/v1/websocket?apikey={}&vsn=2.0.0",
        token("anon", None)
    );
    let heartbeat = json!([null, "7", "phoenix", "heartbeat", {}]).to_string();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.addr
    )
    .into_bytes();
    request.extend(masked_text(&heartbeat));
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&request).await.unwrap();

    let mut got = Vec::new();
    let reply = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            // The key of RFC 6455's own example, and its answer.
            assert!(
                head.to_ascii_lowercase()
                    .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
                "{head}"
            );
            if let Some(text) = server_text(&got[end + 4..]) {
                return text;
            }
        }
    })
    .await
    .expect("the heartbeat's reply in time");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply[1], "7");
    assert_eq!(reply[4]["status"], "ok");
    gw.stop().await.unwrap();
}

/// A request: method, headers, and the expected status and body.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

/// Requests that are not WebSocket upgrades get the refusals axum's extractor gave.
#[tokio::test]
async fn requests_that_are_not_upgrades_are_refused() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let path = format!(
        "/realtime/v1/websocket?apikey={}&vsn=2.0.0",
        token("anon", None)
    );
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let cases: [Case; 5] = [
        (
            "GET",
            vec![],
            400,
            "Connection header did not include 'upgrade'",
        ),
        // The router answers other methods (the route is GET only).
        ("POST", vec![], 405, ""),
        (
            "GET",
            vec![("Connection", "Upgrade"), ("Upgrade", "h2c")],
            400,
            "`Upgrade` header did not include 'websocket'",
        ),
        (
            "GET",
            [&upgrade[..], &[("Sec-WebSocket-Version", "8")]].concat(),
            400,
            "`Sec-WebSocket-Version` header did not include '13'",
        ),
        (
            "GET",
            [&upgrade[..2], &[("Sec-WebSocket-Version", "13")]].concat(),
            400,
            "`Sec-WebSocket-Key` header missing",
        ),
    ];
    for (method, headers, status, text) in cases {
        let answer = exchange(gw.addr, method, &path, &headers).await;
        assert_eq!(answer, (status, text.to_owned()), "{method} {headers:?}");
    }
    gw.stop().await.unwrap();
}

/// One request with exactly `headers` (and `Host`): the status and body of the answer.
async fn exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                assert!(n > 0, "closed early: {text}");
                continue;
            };
            let length = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.trim().parse::<usize>().unwrap());
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..length].to_owned());
            }
            assert!(n > 0, "closed early: {text}");
        }
    });
    answer.await.expect("an answer in time")
}

/// A client text frame carrying `text`, masked as RFC 6455 5.3 requires.
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let len = text.len();
    assert!(len < 126, "short frames only");
    let mut frame = vec![0x81, 0x80 | len as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The payload of the first whole server text frame in `bytes`, if it is all there.
fn server_text(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 2 {
        return None;
    }
    assert_eq!(bytes[0], 0x81, "a final text frame");
    assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
    let (len, start) = match bytes[1] & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => panic!("no reply is that long"),
        len => (usize::from(len), 2),
    };
    let payload = bytes.get(start..start + len)?;
    Some(String::from_utf8(payload.to_vec()).unwrap())
}
