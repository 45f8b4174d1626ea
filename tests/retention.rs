//! What the gateway keeps does not grow without bound: closed registry rows are deleted after
//! `REGISTRY_RETENTION`, open ones stay; stored database messages are deleted after
//! `MESSAGE_RETENTION`; a bulk write of thousands of rows reaches a subscriber that keeps up.

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

async fn stored(db: &TestDb, topic: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select count(*) from realtime.messages where topic = $1")
        .bind(topic)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Stored database messages (what private channels replay) are deleted once older than
/// `MESSAGE_RETENTION`, 72 hours unless set otherwise; younger ones stay.
#[tokio::test]
async fn stored_messages_are_deleted_after_the_message_retention() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    for (topic, age_hours) in [("h73", 73), ("h71", 71), ("fresh", 0)] {
        sqlx::query("select realtime.send('{}', 'e', $1)")
            .bind(topic)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "update realtime.messages set inserted_at = now() - make_interval(hours => $2) \
             where topic = $1",
        )
        .bind(topic)
        .bind(age_hours)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the 73-hour-old message deleted",
        || {
            let db = &db;
            async move { stored(db, "h73").await == 0 }
        },
    )
    .await;
    // The same statement kept the younger ones.
    assert_eq!(stored(&db, "h71").await, 1);
    assert_eq!(stored(&db, "fresh").await, 1);
    gw.stop().await.unwrap();

    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(300);
        c.message_retention = Duration::from_secs(70 * 3600);
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the 71-hour-old message deleted",
        || {
            let db = &db;
            async move { stored(db, "h71").await == 0 }
        },
    )
    .await;
    assert_eq!(stored(&db, "fresh").await, 1);
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
