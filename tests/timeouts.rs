//! Timeouts and bounds of the HTTP phase and of idle sockets: half-sent request heads are
//! closed, connections in their HTTP phase are bounded, a socket without channels is closed,
//! `/ready` does not query the database per request, and an upgrade that cannot check the cap
//! is told to retry. Other clients keep being served throughout.

mod common;

use std::time::Duration;

use common::{eventually, http_get, TestDb, TestGateway, WsClient};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection and sends half a request head.
async fn half_head(gw: &TestGateway) -> TcpStream {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /realtime/v1/websocket HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tcp
}

/// Whether the server closes `tcp` within `patience` (it reads EOF, or a reset).
async fn closed_by_server(tcp: &mut TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 response, then the close
        }
    }
}

/// Regression: sockets that sent half an HTTP request head and waited stayed open for good;
/// enough of them exhausted the process's file descriptors.
#[tokio::test]
async fn half_sent_request_heads_are_closed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.http_header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(half_head(&gw).await);
    }
    // Meanwhile a real client is served.
    let mut c = WsClient::anon(&gw).await;
    assert_eq!(c.join("realtime:room", json!({})).await["status"], "ok");
    for tcp in &mut stalled {
        assert!(closed_by_server(tcp, Duration::from_secs(10)).await);
    }
    gw.stop().await.unwrap();
}

/// At most `--max-pending-connections` connections are in their HTTP phase; the next one is
/// closed at once, and room comes back as they end.
#[tokio::test]
async fn connections_in_their_http_phase_are_bounded() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.http_header_timeout = Duration::from_secs(60);
        c.max_pending_connections = 4;
    })
    .await;
    // An upgraded socket does not hold a place.
    let mut joined = WsClient::anon(&gw).await;
    assert_eq!(
        joined.join("realtime:room", json!({})).await["status"],
        "ok"
    );
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(half_head(&gw).await);
    }
    let mut extra = half_head(&gw).await;
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(10)).await,
        "the fifth connection is closed long before the 60 s head timeout"
    );
    for tcp in &mut stalled {
        assert!(!closed_by_server(tcp, Duration::from_millis(50)).await);
    }
    drop(stalled);
    eventually(Duration::from_secs(10), "room for new connections", || {
        let gw = &gw;
        async move {
            http_get(gw.addr, "/health")
                .await
                .is_ok_and(|(s, _)| s == 200)
        }
    })
    .await;
    // The upgraded socket was served all along.
    let r = joined.send(None, "phoenix", "heartbeat", json!({})).await;
    let m = joined.expect_event("phoenix", "phx_reply").await;
    assert_eq!(m.msg_ref.as_deref(), Some(r.as_str()));
    gw.stop().await.unwrap();
}

/// One address holds at most `--max-pending-per-address` places of the HTTP phase.
#[tokio::test]
async fn one_address_cannot_take_every_http_place() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.http_header_timeout = Duration::from_secs(60);
        c.max_pending_connections = 100;
        c.max_pending_per_address = 3;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(half_head(&gw).await);
    }
    let mut extra = half_head(&gw).await;
    assert!(closed_by_server(&mut extra, Duration::from_secs(10)).await);
    for tcp in &mut stalled {
        assert!(!closed_by_server(tcp, Duration::from_millis(50)).await);
    }
    gw.stop().await.unwrap();
}

/// A socket that joins nothing within `--join-timeout` is closed with 4003; one that joined is
/// not.
#[tokio::test]
async fn sockets_without_channels_are_closed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.join_timeout = Duration::from_millis(500);
    })
    .await;
    let mut member = WsClient::anon(&gw).await;
    let mut idle = WsClient::anon(&gw).await;
    assert_eq!(
        member.join("realtime:room", json!({})).await["status"],
        "ok"
    );
    assert_eq!(idle.closed_with(Duration::from_secs(10)).await, Some(4003));
    let r = member.send(None, "phoenix", "heartbeat", json!({})).await;
    let m = member.expect_event("phoenix", "phx_reply").await;
    assert_eq!(m.msg_ref.as_deref(), Some(r.as_str()));
    // Leaving the last channel starts the clock again.
    member
        .send(Some("1"), "realtime:room", "phx_leave", json!({}))
        .await;
    assert_eq!(
        member.closed_with(Duration::from_secs(10)).await,
        Some(4003)
    );
    gw.stop().await.unwrap();
}

/// `/ready` polled many times at once asks the database once.
#[tokio::test]
async fn ready_does_not_query_the_database_per_request() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    gw.wait_ready().await;
    let before = gw.state.database.queries();
    let polls: Vec<_> = (0..50)
        .map(|_| {
            let addr = gw.addr;
            tokio::spawn(async move { http_get(addr, "/ready").await.unwrap().0 })
        })
        .collect();
    for poll in polls {
        assert_eq!(poll.await.unwrap(), 200);
    }
    let asked = gw.state.database.queries() - before;
    assert!(asked <= 2, "50 polls asked the database {asked} times");
    gw.stop().await.unwrap();
}

/// When the connection cap cannot be checked (the database fails), an upgrade gets 503 with
/// `Retry-After`, open sessions keep their broadcasts, and upgrades succeed again afterwards.
#[tokio::test]
async fn upgrades_are_told_to_retry_when_the_cap_cannot_be_checked() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.connect_error_delay = Duration::ZERO;
    })
    .await;
    let mut a = WsClient::anon(&gw).await;
    let mut b = WsClient::anon(&gw).await;
    for c in [&mut a, &mut b] {
        let reply = c
            .join("realtime:room", json!({"broadcast": {"self": false}}))
            .await;
        assert_eq!(reply["status"], "ok");
    }
    let mut conn = db.connect().await;
    sqlx::query("alter table realtime.connection_slots rename to connection_slots_away")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let key = common::token("anon", None);
    let head = format!(
        "GET /realtime/v1/websocket?apikey={key}&vsn=1.0.0 HTTP/1.1\r\nHost: x\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read_head = async {
        let mut buf = [0u8; 1024];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response head");
            response.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_head)
        .await
        .expect("the refusal is answered");
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 503"), "{response}");
    assert!(response.contains("retry-after: 5"), "{response}");
    // Open sessions keep their broadcasts.
    a.send(
        None,
        "realtime:room",
        "broadcast",
        json!({"type": "broadcast", "event": "still", "payload": {}}),
    )
    .await;
    let m = b.expect_event("realtime:room", "broadcast").await;
    assert_eq!(m.payload["event"], "still");
    sqlx::query("alter table realtime.connection_slots_away rename to connection_slots")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut c = WsClient::anon(&gw).await;
    assert_eq!(c.join("realtime:room", json!({})).await["status"], "ok");
    gw.stop().await.unwrap();
}
