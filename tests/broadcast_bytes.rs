//! Broadcast payloads are relayed byte for byte (docs/protocol.md 7.1): key order, number text
//! (`1.0`, `1e400`, integers wider than 64 bits), `\u` escapes and nesting reach the other
//! members exactly as the sender wrote them, whichever way the broadcast came in (vsn 1 and
//! vsn 2 text pushes, binary kind-3 pushes with a JSON payload, both REST routes) and whichever
//! node the members are on. Each check compares the raw text of the frame received.

mod common;

use std::time::Duration;

use common::{http_request, token, TestDb, TestGateway};
use futures_util::{SinkExt, StreamExt};
use realtime_gateway::protocol;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A payload no parse-and-re-encode keeps: keys out of order, `1.0`, a number beyond `f64`, a
/// 30-digit integer, escapes, nesting, and spaces inside.
const PAYLOAD: &str = r#"{"zeta":1.0,"alpha":1e400,"big":123456789012345678901234567890,"e":"\u00e9\n","nested":{"y":[1.50, -0.0, {"b":true,"a":null}],"x":"é"}}"#;

const TOPIC: &str = "realtime:bytes";

/// The broadcast object, outer keys out of alphabetical order too.
fn message(event: &str, payload: &str) -> String {
    format!(r#"{{"type":"broadcast","event":"{event}","payload":{payload}}}"#)
}

/// What a member on a socket of `vsn` receives for the broadcast `message`.
fn delivered(vsn: &str, message: &str) -> String {
    match vsn {
        "1.0.0" => {
            format!(r#"{{"topic":"{TOPIC}","event":"broadcast","payload":{message},"ref":null}}"#)
        }
        _ => format!(r#"[null,null,"{TOPIC}","broadcast",{message}]"#),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as received.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame");
        match m {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Binary(b) => panic!("expected a text frame, got binary {b:?}"),
            _ => {}
        }
    }
}

/// A socket of `vsn` joined to [`TOPIC`] (no ack, no self, no presence).
async fn joined(gw: &TestGateway, vsn: &str) -> Ws {
    let url = gw.ws_url(&token("anon", None), vsn);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let join = match vsn {
        "1.0.0" => json!({"topic": TOPIC, "event": "phx_join", "payload": {"config": {}},
                          "ref": "1", "join_ref": "1"}),
        _ => json!(["1", "1", TOPIC, "phx_join", {"config": {}}]),
    };
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let status = match vsn {
        "1.0.0" => &reply["payload"]["status"],
        _ => &reply[4]["status"],
    };
    assert_eq!(status, "ok", "{reply}");
    ws
}

/// Sends `message` as a text push on a socket of `vsn`, with whitespace around the payload
/// (which is not part of it).
async fn push_text(ws: &mut Ws, vsn: &str, message: &str) {
    let frame = match vsn {
        "1.0.0" => format!(
            r#"{{"ref":"2", "payload": {message} , "event":"broadcast","topic":"{TOPIC}","join_ref":"1"}}"#
        ),
        _ => format!(r#"["1","2","{TOPIC}","broadcast", {message} ]"#),
    };
    ws.send(Message::Text(frame.into())).await.unwrap();
}

/// POSTs `body` to `path` with the anon key; expects 202.
async fn post(gw: &TestGateway, path: &str, body: &str) {
    let key = token("anon", None);
    let headers = [
        ("apikey", key.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, text) = http_request(gw.addr, "POST", path, &headers, body)
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
}

/// Both members (vsn 1 and vsn 2) receive exactly `message`.
async fn both_receive(v1: &mut Ws, v2: &mut Ws, message: &str) {
    assert_eq!(next_text(v1).await, delivered("1.0.0", message));
    assert_eq!(next_text(v2).await, delivered("2.0.0", message));
}

/// Text pushes from vsn 1 and vsn 2 sockets and binary kind-3 pushes with a JSON payload reach
/// vsn 1 and vsn 2 members with the payload's bytes.
#[tokio::test]
async fn socket_broadcasts_arrive_byte_for_byte() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut send_v1 = joined(&gw, "1.0.0").await;
    let mut send_v2 = joined(&gw, "2.0.0").await;
    let mut v1 = joined(&gw, "1.0.0").await;
    let mut v2 = joined(&gw, "2.0.0").await;

    for (vsn, sender) in [("1.0.0", &mut send_v1), ("2.0.0", &mut send_v2)] {
        let sent = message("from_text", PAYLOAD);
        push_text(sender, vsn, &sent).await;
        both_receive(&mut v1, &mut v2, &sent).await;
    }
    // The outer object's own key order is the sender's too.
    let reordered = format!(r#"{{"payload":{PAYLOAD},"event":"reordered","type":"broadcast"}}"#);
    push_text(&mut send_v2, "2.0.0", &reordered).await;
    both_receive(&mut v1, &mut v2, &reordered).await;
    // Each sender got the other's messages (not its own: no `self`), bytes kept too.
    let from_v2 = message("from_text", PAYLOAD);
    assert_eq!(next_text(&mut send_v2).await, delivered("2.0.0", &from_v2));
    assert_eq!(next_text(&mut send_v1).await, delivered("1.0.0", &from_v2));
    assert_eq!(
        next_text(&mut send_v1).await,
        delivered("1.0.0", &reordered)
    );

    // Binary kind 3, JSON payload with metadata: the frame's payload and metadata bytes.
    let meta = r#"{"persist":false,"a":1.0}"#;
    let push = protocol::encode_binary_push(
        "1",
        "3",
        TOPIC,
        "from_binary",
        Some(meta),
        PAYLOAD.as_bytes(),
        true,
    )
    .unwrap();
    send_v2.send(Message::Binary(push)).await.unwrap();
    let sent = format!(
        r#"{{"type":"broadcast","event":"from_binary","payload":{PAYLOAD},"meta":{meta}}}"#
    );
    both_receive(&mut v1, &mut v2, &sent).await;
    assert_eq!(next_text(&mut send_v1).await, delivered("1.0.0", &sent));
    gw.stop().await.unwrap();
}

/// `POST /api/broadcast` and `POST /api/broadcast/<topic>/events/<event>` deliver the body's
/// payload bytes.
#[tokio::test]
async fn rest_broadcasts_arrive_byte_for_byte() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut v1 = joined(&gw, "1.0.0").await;
    let mut v2 = joined(&gw, "2.0.0").await;

    let body = format!(
        r#"{{"messages":[{{"topic":"bytes","event":"batched","payload": {PAYLOAD} ,"id":"m-1"}},{{"payload":[1.0,1e400],"event":"second","topic":"realtime:bytes"}}]}}"#
    );
    post(&gw, "/api/broadcast", &body).await;
    let first = format!(
        r#"{{"type":"broadcast","event":"batched","payload":{PAYLOAD},"meta":{{"id":"m-1"}}}}"#
    );
    both_receive(&mut v1, &mut v2, &first).await;
    both_receive(&mut v1, &mut v2, &message("second", "[1.0,1e400]")).await;

    post(
        &gw,
        "/realtime/v1/api/broadcast/bytes/events/single",
        &format!("\n {PAYLOAD}\n"),
    )
    .await;
    both_receive(&mut v1, &mut v2, &message("single", PAYLOAD)).await;
    gw.stop().await.unwrap();
}

/// Across two nodes on one database: a socket push and a REST message sent to node A reach
/// node B's members with the same bytes, inline in the notification and through the spill
/// table when the message is over the notification limit.
#[tokio::test]
async fn broadcasts_cross_nodes_byte_for_byte() {
    let db = TestDb::new().await;
    let node_a = TestGateway::start(&db).await;
    let node_b = TestGateway::start(&db).await;
    let mut sender = joined(&node_a, "2.0.0").await;
    let mut v1 = joined(&node_b, "1.0.0").await;
    let mut v2 = joined(&node_b, "2.0.0").await;

    let sent = message("inline", PAYLOAD);
    push_text(&mut sender, "2.0.0", &sent).await;
    both_receive(&mut v1, &mut v2, &sent).await;

    let large = PAYLOAD.replacen('{', &format!(r#"{{"pad":"{}","#, "é".repeat(5000)), 1);
    let sent = message("spilled", &large);
    assert!(sent.len() > 8000);
    push_text(&mut sender, "2.0.0", &sent).await;
    both_receive(&mut v1, &mut v2, &sent).await;

    post(&node_a, "/api/broadcast/bytes/events/via_rest", PAYLOAD).await;
    both_receive(&mut v1, &mut v2, &message("via_rest", PAYLOAD)).await;
    node_a.stop().await.unwrap();
    node_b.stop().await.unwrap();
}
