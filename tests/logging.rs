//! No token reaches the log, at any level: every line the gateway writes at `trace` while a
//! client connects with a good token, another with a bad one, a channel joins with its own
//! token, and an operator calls the admin API, is searched for the tokens. The lines of a
//! connection carry its `connection` span (connection id, `sub`), and those of a join its
//! `channel` span (topic, the channel token's `sub`).

mod common;

use std::sync::{Arc, Mutex};

use common::{token, TestDb, TestGateway, WsClient};
use serde_json::json;

/// A `Write` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_are_never_logged() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    // Everything at trace, through the gateway's own filter.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(realtime_gateway::telemetry::filter("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test's runtime is one thread: everything the gateway does here logs through this.
    let _guard = tracing::subscriber::set_default(subscriber);
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let good = token("anon", Some("eeeeeeee-0000-4000-8000-000000000005"));
    let channel_token = token(
        "authenticated",
        Some("eeeeeeee-0000-4000-8000-000000000006"),
    );
    let bad =
        realtime_gateway::auth::sign("not-the-secret-of-this-gateway", "anon", None, 60).unwrap();
    let mut client = WsClient::connect(&gw.ws_url(&good, "2.0.0")).await;
    let reply = client.join("realtime:room", json!({})).await;
    assert_eq!(reply["status"], "ok");
    client
        .send(
            Some("9"),
            "realtime:private-ish",
            "phx_join",
            json!({"config": {}, "access_token": channel_token}),
        )
        .await;
    client
        .expect_event("realtime:private-ish", "phx_reply")
        .await;
    let refused = tokio_tungstenite::connect_async(gw.ws_url(&bad, "2.0.0")).await;
    assert!(refused.is_err(), "a bad token is refused");
    let operator = token("service_role", None);
    let bearer = format!("Bearer {operator}");
    let (status, listed) = common::http_request(
        gw.addr,
        "GET",
        "/admin/api/connections",
        &[("authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let connection_id = listed["connections"][0]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = common::http_request(
        gw.addr,
        "POST",
        &format!("/admin/api/connections/{connection_id}/disconnect"),
        &[("authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    drop(client);
    gw.stop().await.unwrap();
    let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("/realtime/v1/websocket"),
        "the requests were logged"
    );
    // The connection's lines carry its span; the joins' lines their channel's.
    let connection_span = format!("connection{{connection_id={connection_id}");
    let in_span = |needles: &[&str]| log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        in_span(&[
            &connection_span,
            "sub=eeeeeeee-0000-4000-8000-000000000005",
            "channel joined"
        ]),
        "no join line in its connection span"
    );
    assert!(
        in_span(&[
            &connection_span,
            "channel{topic=realtime:room",
            "channel joined"
        ]),
        "no join line in its channel span"
    );
    assert!(
        in_span(&[
            "channel{topic=realtime:private-ish sub=eeeeeeee-0000-4000-8000-000000000006",
            "channel joined"
        ]),
        "the channel span does not name the channel token's sub"
    );
    assert!(
        in_span(&[&connection_span, "connection closed by an operator"])
            || in_span(&[&connection_id, "connection closed by an operator"]),
        "the kick is not logged with the connection"
    );
    for secret in [&good, &channel_token, &bad, &operator] {
        // A token's signature alone would be enough to replay it.
        let signature = secret.rsplit('.').next().unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(signature)).collect();
        assert!(lines.is_empty(), "a token in the log: {lines:#?}");
    }
    assert!(!log.contains(common::JWT_SECRET), "the secret in the log");
}
