//! No token reaches the log, at any level: every line the gateway writes at `trace` while a
//! client connects with a good token, another with a bad one, and a channel joins with its own
//! token, is searched for the tokens.

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
    drop(client);
    gw.stop().await.unwrap();
    let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("/realtime/v1/websocket"),
        "the requests were logged"
    );
    for secret in [&good, &channel_token, &bad] {
        // A token's signature alone would be enough to replay it.
        let signature = secret.rsplit('.').next().unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(signature)).collect();
        assert!(lines.is_empty(), "a token in the log: {lines:#?}");
    }
    assert!(!log.contains(common::JWT_SECRET), "the secret in the log");
}
