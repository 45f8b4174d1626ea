//! Session behaviour over a raw WebSocket: framing, replies, closing, slow consumers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, realtime_table, token, TestDb, TestGateway, WsClient};
use serde_json::json;

/// Heartbeats, leaves, unmatched topics, unknown events and malformed frames each get the
/// reply docs/protocol.md gives; nothing closes the socket.
#[tokio::test]
async fn replies_follow_the_protocol() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    let r = c.send(None, "phoenix", "heartbeat", json!({})).await;
    let m = c.next().await.unwrap();
    assert_eq!(
        (m.topic.as_str(), m.event.as_str()),
        ("phoenix", "phx_reply")
    );
    assert_eq!(m.msg_ref.as_deref(), Some(r.as_str()));
    assert_eq!(m.payload, json!({"status": "ok", "response": {}}));

    c.send(Some("9"), "realtime:nowhere", "broadcast", json!({}))
        .await;
    let m = c.next().await.unwrap();
    assert_eq!(m.payload["response"]["reason"], "unmatched topic");

    c.send_text("{not json").await;
    let m = c.next().await.unwrap();
    assert_eq!(
        (m.topic.as_str(), m.payload["status"].as_str()),
        ("phoenix", Some("error"))
    );

    let reply = c.join("realtime:", json!({})).await;
    assert_eq!(
        reply["response"]["reason"],
        "TopicNameRequired: You must provide a topic name"
    );

    let reply = c.join("realtime:room", json!({})).await;
    assert_eq!(
        reply,
        json!({"status": "ok", "response": {"postgres_changes": []}})
    );
    let r = c
        .send(Some("77"), "realtime:room", "mystery", json!({}))
        .await;
    let m = c.next().await.unwrap();
    assert_eq!(m.msg_ref.as_deref(), Some(r.as_str()));
    assert_eq!(m.payload["status"], "error");

    // Leave: reply ok, then phx_close with the membership's join_ref as both refs.
    let join_ref = "5";
    c.send(Some(join_ref), "realtime:room", "phx_leave", json!({}))
        .await;
    let m = c.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), m.payload["status"].as_str()),
        ("phx_reply", Some("ok"))
    );
    let m = c.next().await.unwrap();
    assert_eq!(m.event, "phx_close");
    // phx_leave on a topic that is not joined is answered ok.
    c.send(Some("6"), "realtime:room", "phx_leave", json!({}))
        .await;
    let m = c.next().await.unwrap();
    assert_eq!(m.payload["status"], "ok");
    gw.stop().await.unwrap();
}

/// vsn 1.0.0 speaks JSON objects; server frames carry `ref` always and never `join_ref`.
#[tokio::test]
async fn vsn_1_speaks_json_objects() {
    use futures_util::{SinkExt, StreamExt};
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(&token("anon", None), "1.0.0"))
        .await
        .unwrap();
    let join = json!({"event":"phx_join","payload":{"config":{"broadcast":null}},"topic":"realtime:r","ref":"1","join_ref":"1"});
    ws.send(join.to_string().into()).await.unwrap();
    let frame = ws.next().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"topic":"realtime:r","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"})
    );
    ws.send(
        json!({"event":"heartbeat","payload":{},"topic":"phoenix","ref":null})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    let frame = ws.next().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(v["ref"], serde_json::Value::Null);
    assert!(v.as_object().unwrap().contains_key("ref"));
    // A binary frame, well formed or not, gets the vsn error, not a decoding one.
    for frame in [vec![0u8], vec![3, 1, 1, 14, 2, 0, 1]] {
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            frame.into(),
        ))
        .await
        .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert_eq!(
            v["payload"]["response"]["reason"],
            "malformed frame: binary frames need vsn 2.0.0"
        );
    }
    gw.stop().await.unwrap();
}

/// Channel tokens are verified at join with the clients' reasons, and a re-join closes the old
/// membership first.
#[tokio::test]
async fn join_tokens_and_rejoins() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    c.send(
        Some("1"),
        "realtime:a",
        "phx_join",
        json!({"access_token": "garbage"}),
    )
    .await;
    let m = c.expect_event("realtime:a", "phx_reply").await;
    assert_eq!(
        m.payload["response"]["reason"],
        "MalformedJWT: The token provided is not a valid JWT"
    );
    let expired = realtime_gateway::auth::sign(common::JWT_SECRET, "anon", None, -30).unwrap();
    c.send(
        Some("2"),
        "realtime:a",
        "phx_join",
        json!({"access_token": expired}),
    )
    .await;
    let m = c.expect_event("realtime:a", "phx_reply").await;
    let reason = m.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("InvalidJWTToken: Token has expired 3"),
        "{reason}"
    );
    // `sb_` keys mean "use the socket's apikey".
    c.send(
        Some("3"),
        "realtime:a",
        "phx_join",
        json!({"access_token": "sb_publishable_x"}),
    )
    .await;
    let m = c.expect_event("realtime:a", "phx_reply").await;
    assert_eq!(m.payload["status"], "ok");
    // Re-join: the old membership is closed with its own join_ref, then the new one joins.
    c.send(Some("4"), "realtime:a", "phx_join", json!({})).await;
    let m = c.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), m.join_ref.as_deref()),
        ("phx_close", Some("3"))
    );
    let m = c.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), m.join_ref.as_deref()),
        ("phx_reply", Some("4"))
    );
    // A bad access_token push closes the channel with a system error and phx_close.
    c.send(
        Some("4"),
        "realtime:a",
        "access_token",
        json!({"access_token": "bad"}),
    )
    .await;
    let m = c.next().await.unwrap();
    assert_eq!(m.event, "system");
    assert_eq!(m.payload["status"], "error");
    let m = c.next().await.unwrap();
    assert_eq!(m.event, "phx_close");
    gw.stop().await.unwrap();
}

/// The per-connection channel cap refuses the join past it.
#[tokio::test]
async fn too_many_channels_is_refused() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.max_channels_per_connection = 2).await;
    let mut c = WsClient::anon(&gw).await;
    assert_eq!(c.join("realtime:1", json!({})).await["status"], "ok");
    assert_eq!(c.join("realtime:2", json!({})).await["status"], "ok");
    let reply = c.join("realtime:3", json!({})).await;
    assert_eq!(
        reply["response"]["reason"],
        "ChannelRateLimitReached: Too many channels"
    );
    gw.stop().await.unwrap();
}

/// Shutdown closes every socket with 1001 (going away), and run() returns.
#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = WsClient::anon(&gw).await;
        c.join("realtime:x", json!({})).await;
        clients.push(c);
    }
    gw.shutdown.trigger();
    for c in &mut clients {
        assert_eq!(c.closed_with(Duration::from_secs(10)).await, Some(1001));
    }
    gw.stop().await.unwrap();
}

/// Guards against one client that stops reading holding up fan-out or growing memory: it is
/// closed with 4001 once its queue is full, its queue never exceeds the bounds, and 50 other
/// clients receive every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    const MAX_ROWS: usize = 4000;
    const MAX_BYTES: usize = 1024 * 1024;
    const MAX_FRAMES: usize = 256;
    let db = TestDb::new().await;
    realtime_table(&db, "feed", "body text").await;
    let gw = TestGateway::start_with(&db, |c| {
        c.outbound_queue_frames = MAX_FRAMES;
        c.outbound_queue_bytes = MAX_BYTES;
    })
    .await;
    // The slow client: a tiny receive buffer, and it does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(gw.addr).await.unwrap());
    let (slow, _) =
        tokio_tungstenite::client_async(gw.ws_url(&token("anon", None), "2.0.0"), stream)
            .await
            .unwrap();
    let mut slow = WsClient::from_stream(slow);
    slow.subscribe(
        "realtime:slow",
        json!([{"event":"INSERT","schema":"public","table":"feed"}]),
    )
    .await;
    let slow_handle = gw.state.session.sessions.handles().pop().unwrap();
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for i in 0..50 {
        let mut c = WsClient::anon(&gw).await;
        let topic = format!("realtime:ok{i}");
        c.subscribe(
            &topic,
            json!([{"event":"INSERT","schema":"public","table":"feed"}]),
        )
        .await;
        let seen = Arc::new(AtomicUsize::new(0));
        progress.push(Arc::clone(&seen));
        readers.push(tokio::spawn(async move {
            loop {
                let text = c
                    .next_raw(Duration::from_secs(60))
                    .await
                    .expect("stays open");
                if text.contains("\"postgres_changes\"") {
                    let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                    if text.contains("\"body\":\"end\"") {
                        return n;
                    }
                }
            }
        }));
    }
    // Write 16 KiB rows until the slow client's queue overflows (kernel socket buffers absorb
    // some first), sampling the queue's depth as we go.
    let body = "x".repeat(16 * 1024);
    let pool = db.pool().await;
    let mut written = 0;
    let mut max_bytes = 0;
    let mut max_frames = 0;
    while !slow_handle.outbound.is_slow() {
        assert!(written < MAX_ROWS, "no overflow after {written} rows");
        // Keep the well-behaved readers (slow in a debug build) close behind the writer.
        eventually(Duration::from_secs(30), "readers keep up", || {
            let behind = progress
                .iter()
                .any(|p| p.load(Ordering::Relaxed) + 8 < written);
            async move { !behind }
        })
        .await;
        sqlx::query("insert into feed (body) values ($1)")
            .bind(&body)
            .execute(&pool)
            .await
            .unwrap();
        written += 1;
        max_bytes = max_bytes.max(slow_handle.outbound.queued_bytes());
        max_frames = max_frames.max(slow_handle.outbound.queued_frames());
    }
    sqlx::query("insert into feed (body) values ('end')")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        max_bytes <= MAX_BYTES + 32 * 1024,
        "queue held {max_bytes} bytes"
    );
    assert!(max_frames <= MAX_FRAMES, "queue held {max_frames} frames");
    // Reading again, the client finds the close frame after what was already on the wire.
    assert_eq!(slow.closed_with(Duration::from_secs(10)).await, Some(4001));
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            written + 1,
            "every change reached every other client"
        );
    }
    eventually(Duration::from_secs(10), "slow session removed", || {
        let slow_left = gw
            .state
            .session
            .sessions
            .handles()
            .iter()
            .any(|h| Arc::ptr_eq(h, &slow_handle));
        async move { !slow_left }
    })
    .await;
    gw.stop().await.unwrap();
}
