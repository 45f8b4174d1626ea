//! Tokens expire while joined: a channel whose token expires receives a `system` error with a
//! machine-readable reason and `phx_close`, and its registry row ends `token_expired`; an
//! `access_token` push with a fresh token before expiry keeps the channel; a socket whose own
//! token expired cannot join with it.

mod common;

use std::time::Duration;

use common::{eventually, TestDb, TestGateway, WsClient, JWT_SECRET};
use serde_json::json;

fn token_for(secs: i64) -> String {
    realtime_gateway::auth::sign(JWT_SECRET, "authenticated", None, secs).unwrap()
}

/// Regression: a channel joined with a token that expired 5 s later was still joined and
/// streaming 25 s after.
#[tokio::test]
async fn a_channel_ends_when_its_token_expires_unless_refreshed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    let short = token_for(2);
    for topic in ["realtime:expiring", "realtime:refreshed"] {
        let reply = c
            .send(
                Some(topic),
                topic,
                "phx_join",
                json!({"config": {"broadcast": {"self": true}}, "access_token": short}),
            )
            .await;
        let m = c.expect_event(topic, "phx_reply").await;
        assert_eq!(m.msg_ref.as_deref(), Some(reply.as_str()));
        assert_eq!(m.payload["status"], "ok", "{}", m.payload);
    }
    // The second channel gets a fresh token before the first expires (never replied to).
    c.send(
        Some("realtime:refreshed"),
        "realtime:refreshed",
        "access_token",
        json!({"access_token": token_for(600)}),
    )
    .await;
    let system = c.expect_event("realtime:expiring", "system").await;
    assert_eq!(system.payload["status"], "error");
    assert_eq!(system.payload["reason"], "token_expired");
    assert_eq!(system.payload["channel"], "expiring");
    assert!(
        system.payload["message"]
            .as_str()
            .unwrap()
            .starts_with("Token has expired"),
        "{}",
        system.payload
    );
    let close = c.expect_event("realtime:expiring", "phx_close").await;
    assert_eq!(close.join_ref.as_deref(), Some("realtime:expiring"));
    // The refreshed channel is still joined: its broadcast comes back to it.
    c.send(
        Some("realtime:refreshed"),
        "realtime:refreshed",
        "broadcast",
        json!({"type": "broadcast", "event": "still", "payload": {}}),
    )
    .await;
    let m = c.expect_event("realtime:refreshed", "broadcast").await;
    assert_eq!(m.payload["event"], "still");
    eventually(Duration::from_secs(10), "the registry row ends token_expired", || {
        let db = &db;
        async move {
            let mut conn = db.connect().await;
            sqlx::query_scalar::<_, i64>(
                "select count(*) from public.realtime_subscription_registry \
                 where channel_name = 'expiring' and not is_active and close_reason = 'token_expired'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
    gw.stop().await.unwrap();
}

/// A socket whose own token has expired since it connected cannot join with it.
#[tokio::test]
async fn a_socket_token_that_expired_cannot_join() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::connect(&gw.ws_url(&token_for(1), "2.0.0")).await;
    let reply = c.join("realtime:first", json!({})).await;
    assert_eq!(reply["status"], "ok");
    // The first channel ends when the socket's token expires ...
    let system = c.expect_event("realtime:first", "system").await;
    assert_eq!(system.payload["reason"], "token_expired");
    // ... and a join with the expired token is refused.
    let reply = c.join("realtime:second", json!({})).await;
    assert_eq!(reply["status"], "error");
    assert!(
        reply["response"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("InvalidJWTToken: Token has expired"),
        "{reply}"
    );
    gw.stop().await.unwrap();
}
