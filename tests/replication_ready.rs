//! `config.broadcast.replication_ready` (docs/protocol.md 6.6): the `system` confirmation once
//! the change stream runs, and, when it does not come up in time, the `system` error and the
//! channel's close.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{eventually, token, Client, Driver, Proxy, TestDb, TestGateway, WsClient};
use serde_json::json;

const ESTABLISHED: &str = "Replication connection established";
const NOT_IN_TIME: &str = "Replication connection was not established in time";

/// realtime-js joining with `replication_ready` hears the confirmation after its join; a join
/// without it hears nothing of the kind.
#[tokio::test]
async fn realtime_js_hears_that_the_change_stream_runs() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    js.send(
        json!({"cmd": "subscribe", "id": "r", "channel": "ready-room",
                   "broadcast": {"replication_ready": true}}),
    )
    .await;
    js.expect(|e| e["ev"] == "status" && e["status"] == "SUBSCRIBED")
        .await;
    let system = js
        .expect(|e| e["ev"] == "system" && e["channel"] == "ready-room")
        .await;
    assert_eq!(
        system["payload"],
        json!({"extension": "system", "status": "ok", "message": ESTABLISHED,
               "channel": "ready-room"}),
        "{system}"
    );

    // The raw frames: the join reply first, then the confirmation with the join ref.
    let mut ws = WsClient::anon(&gw).await;
    let reply = ws
        .join(
            "realtime:raw",
            json!({"broadcast": {"replication_ready": "true"}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let next = ws.next().await.expect("a frame after the join reply");
    assert_eq!(
        (next.topic.as_str(), next.event.as_str()),
        ("realtime:raw", "system")
    );
    assert_eq!(next.payload["message"], ESTABLISHED);
    assert_eq!(next.join_ref.as_deref(), Some("1"));
    assert_eq!(next.msg_ref, None);
    // Without the option, no such message: the heartbeat's reply is the next frame.
    ws.join("realtime:plain", json!({"broadcast": {"self": true}}))
        .await;
    ws.send(None, "phoenix", "heartbeat", json!({})).await;
    let next = ws.next().await.expect("heartbeat reply");
    assert_eq!(
        (next.topic.as_str(), next.event.as_str()),
        ("phoenix", "phx_reply")
    );
    js.exit().await;
}

/// Two gateways whose database link is cut: on the one with a short timeout, a
/// `replication_ready` channel gets the `system` error and `phx_close` (its registry row ends
/// `replication_timeout`) while the socket keeps answering; on the one with the default
/// timeout, the waiting channel hears the confirmation once the link is restored.
#[tokio::test]
async fn without_a_change_stream_the_channel_is_closed_in_time_or_told_when_it_runs() {
    let db = TestDb::new().await;
    let (proxy, via) = Proxy::for_url(&db.url).await;
    let short = TestGateway::start_url(&via, |c| {
        c.replication_ready_timeout = Duration::from_secs(1);
    })
    .await;
    let long = TestGateway::start_url(&via, |_| {}).await;
    let key = token("anon", None);
    let mut on_short = WsClient::connect(&short.ws_url(&key, "2.0.0")).await;
    let mut on_long = WsClient::connect(&long.ws_url(&key, "2.0.0")).await;

    proxy.cut();
    for gw in [&short, &long] {
        let listener = &gw.state.listener;
        eventually(Duration::from_secs(20), "listener down", || async {
            !listener.connected.load(Ordering::Acquire)
        })
        .await;
    }

    let reply = on_short
        .join(
            "realtime:late",
            json!({"broadcast": {"replication_ready": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let joined_at = std::time::Instant::now();
    // The wait holds up nothing: a heartbeat is answered at once.
    on_short.send(None, "phoenix", "heartbeat", json!({})).await;
    let beat = on_short.next().await.expect("heartbeat reply");
    assert_eq!(
        (beat.topic.as_str(), beat.event.as_str()),
        ("phoenix", "phx_reply")
    );
    let system = on_short.expect_event("realtime:late", "system").await;
    assert!(
        joined_at.elapsed() >= Duration::from_millis(900),
        "{:?}",
        joined_at.elapsed()
    );
    assert_eq!(
        system.payload,
        json!({"extension": "system", "status": "error", "message": NOT_IN_TIME,
               "channel": "late"})
    );
    let close = on_short.next().await.expect("phx_close");
    assert_eq!(
        (close.topic.as_str(), close.event.as_str()),
        ("realtime:late", "phx_close")
    );
    assert_eq!(close.join_ref.as_deref(), Some("1"));
    // The channel is gone: a broadcast to it is an unmatched topic.
    on_short
        .send(
            Some("1"),
            "realtime:late",
            "broadcast",
            json!({"event": "e", "payload": {}}),
        )
        .await;
    let unmatched = on_short.expect_event("realtime:late", "phx_reply").await;
    assert_eq!(unmatched.payload["response"]["reason"], "unmatched topic");

    let reply = on_long
        .join(
            "realtime:patient",
            json!({"broadcast": {"replication_ready": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    proxy.restore();
    let system = on_long.expect_event("realtime:patient", "system").await;
    assert_eq!(
        system.payload,
        json!({"extension": "system", "status": "ok", "message": ESTABLISHED,
               "channel": "patient"})
    );
    // Once: the channel stays joined and hears no second confirmation.
    on_long.send(None, "phoenix", "heartbeat", json!({})).await;
    let next = on_long.next().await.expect("heartbeat reply");
    assert_eq!(
        (next.topic.as_str(), next.event.as_str()),
        ("phoenix", "phx_reply")
    );

    eventually(Duration::from_secs(30), "registry row ended", || async {
        let mut conn = db.connect().await;
        let n: i64 = sqlx::query_scalar(
            "select count(*) from realtime_subscription_registry
              where channel_name = 'late' and not is_active
                and close_reason = 'replication_timeout'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        n == 1
    })
    .await;
}
