//! What the gateway keeps does not grow without bound: closed registry rows are deleted after
//! `REGISTRY_RETENTION`, open ones stay; a bulk write of thousands of rows reaches a subscriber
//! that keeps up.

mod common;

use std::time::Duration;

use common::{eventually, realtime_table, TestDb, TestGateway, WsClient};
use serde_json::json;

async fn rows(db: &TestDb, channel: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "select count(*) from public.realtime_subscription_registry where channel_name = $1",
    )
    .bind(channel)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Regression: one client joining and leaving in a loop grew the registry by ~17 GB an hour:
/// closed rows were never deleted.
#[tokio::test]
async fn closed_registry_rows_are_deleted_after_the_retention() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.registry_retention = Duration::from_secs(1);
        c.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    let mut c = WsClient::anon(&gw).await;
    assert_eq!(c.join("realtime:kept", json!({})).await["status"], "ok");
    assert_eq!(c.join("realtime:gone", json!({})).await["status"], "ok");
    c.send(Some("1"), "realtime:gone", "phx_leave", json!({}))
        .await;
    c.expect_event("realtime:gone", "phx_close").await;
    eventually(Duration::from_secs(10), "the closed row recorded", || {
        let db = &db;
        async move { rows(db, "gone").await == 1 }
    })
    .await;
    eventually(Duration::from_secs(20), "the closed row deleted", || {
        let db = &db;
        async move { rows(db, "gone").await == 0 }
    })
    .await;
    assert_eq!(rows(&db, "kept").await, 1, "open rows stay");
    gw.stop().await.unwrap();
}

/// Regression: one INSERT of 3,500 rows closed every subscriber of the table as a slow
/// consumer, however fast it read: the queue held 1,024 frames.
#[tokio::test]
async fn a_bulk_insert_reaches_a_subscriber_that_keeps_up() {
    const ROWS: usize = 10_000;
    let db = TestDb::new().await;
    realtime_table(&db, "bulk", "n int4").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:bulk",
        json!([{"event": "INSERT", "schema": "public", "table": "bulk"}]),
    )
    .await;
    let mut conn = db.connect().await;
    sqlx::query("insert into bulk (n) select g from generate_series(1, $1) g")
        .bind(i32::try_from(ROWS).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let mut received = 0;
    while received < ROWS {
        let text = c
            .next_raw(Duration::from_secs(30))
            .await
            .expect("the subscriber is not closed");
        if text.contains("\"postgres_changes\"") {
            received += 1;
        }
    }
    gw.stop().await.unwrap();
}
