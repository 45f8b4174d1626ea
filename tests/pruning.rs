//! The outbox never drops what someone still needs: rows of a transaction that stays open
//! longer than the retention are still delivered, rows are pruned only below what every live
//! node has read, and a node that was away while its changes were pruned says so to its
//! subscribers.

mod common;

use std::time::Duration;

use common::{eventually, realtime_table, token, GatewayProcess, TestDb, TestGateway, WsClient};
use serde_json::json;
use sqlx::Connection;

async fn horizon(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select pruned_id from realtime.change_horizon")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn outbox_has(db: &TestDb, id: i64) -> bool {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select exists (select from realtime.changes where id = $1)")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The highest outbox id this connection sees.
async fn last_id(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("select max(id) from realtime.changes")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Reads `postgres_changes` deliveries on `topic` until one carries `label`.
async fn receive_label(c: &mut WsClient, topic: &str, label: &str) {
    loop {
        let m = c.expect_event(topic, "postgres_changes").await;
        if m.payload["data"]["record"]["label"] == label {
            return;
        }
    }
}

/// Regression: rows were pruned by their age at capture, so the changes of a transaction
/// that stayed open longer than `CHANGE_RETENTION` before committing could be deleted before
/// any node read them.
#[tokio::test]
async fn a_transaction_open_longer_than_the_retention_is_still_delivered() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "label text").await;
    let gw = TestGateway::start_with(&db, |c| {
        c.change_retention = Duration::from_secs(1);
    })
    .await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:notes",
        json!([{"event": "INSERT", "schema": "public", "table": "notes"}]),
    )
    .await;
    let mut conn = db.connect().await;
    sqlx::query("insert into notes (label) values ('quick')")
        .execute(&mut conn)
        .await
        .unwrap();
    let quick_id = last_id(&mut conn).await;
    receive_label(&mut c, "realtime:notes", "quick").await;
    let mut long = db.connect().await;
    let mut tx = long.begin().await.unwrap();
    sqlx::query("insert into notes (label) values ('slow')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let slow_id = last_id(&mut tx).await;
    // The pruner deletes the committed row once it is older than the retention and read.
    eventually(Duration::from_secs(20), "the committed row pruned", || {
        let db = &db;
        async move { horizon(db).await >= quick_id }
    })
    .await;
    // The open transaction's row grows older than the retention (seen from inside it: no
    // other session can see it yet).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let old: bool = sqlx::query_scalar(
            "select captured_at < clock_timestamp() - interval '2 seconds' \
             from realtime.changes where id = $1",
        )
        .bind(slow_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        if old {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the row never aged");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll pacing
    }
    // It commits, and a prune runs at once, racing the listener: the row is old, but no live
    // node has read past its transaction, so it stays until delivered.
    tx.commit().await.unwrap();
    let _pruned: i64 = sqlx::query_scalar(
        "select realtime.prune_read_changes(interval '1 second', interval '1 minute')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // Still there, unless the node has already read it and recorded that.
    let read_past: bool = sqlx::query_scalar(
        "select coalesce(bool_and(max_id >= $1), false) from realtime.change_readers",
    )
    .bind(slow_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        read_past || outbox_has(&db, slow_id).await,
        "the committed row was pruned before any node read it"
    );
    receive_label(&mut c, "realtime:notes", "slow").await;
    gw.stop().await.unwrap();
}

/// A node frozen (SIGSTOP) while the other node prunes past its position reports the gap to
/// its subscribers when it wakes, instead of skipping silently.
#[tokio::test]
async fn a_node_away_while_its_changes_were_pruned_reports_the_gap() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "label text").await;
    // The live node judges others gone after 2 s, and prunes rows older than 1 s.
    let live = TestGateway::start_with(&db, |c| {
        c.change_retention = Duration::from_secs(1);
        c.heartbeat_interval = Duration::from_millis(500);
        c.heartbeat_timeout = Duration::from_secs(2);
    })
    .await;
    // The frozen node does not reap its own (quiet) client when it wakes.
    let frozen = GatewayProcess::spawn(
        &db,
        "frozen",
        &[("CHANGE_RETENTION", "1s"), ("HEARTBEAT_TIMEOUT", "10m")],
    )
    .await;
    let mut c = WsClient::connect(&frozen.ws_url(&token("anon", None))).await;
    c.subscribe(
        "realtime:notes",
        json!([{"event": "INSERT", "schema": "public", "table": "notes"}]),
    )
    .await;
    let mut conn = db.connect().await;
    sqlx::query("insert into notes (label) values ('before')")
        .execute(&mut conn)
        .await
        .unwrap();
    receive_label(&mut c, "realtime:notes", "before").await;
    frozen.pause(true);
    // A read the node sent just before it froze still runs, and may see a row written right
    // after the freeze. The second row is written once the first was pruned, seconds later:
    // that one the frozen node cannot have read.
    for label in ["missed", "missed later"] {
        sqlx::query("insert into notes (label) values ($1)")
            .bind(label)
            .execute(&mut conn)
            .await
            .unwrap();
        let missed_id = last_id(&mut conn).await;
        eventually(Duration::from_secs(30), "the unread row pruned", || {
            let db = &db;
            async move { horizon(db).await >= missed_id }
        })
        .await;
    }
    frozen.pause(false);
    let system = c.expect_event("realtime:notes", "system").await;
    assert_eq!(system.payload["status"], "error", "{}", system.payload);
    let message = system.payload["message"].as_str().unwrap();
    assert!(message.starts_with("ChangesMissed:"), "{message}");
    // The node goes on delivering.
    sqlx::query("insert into notes (label) values ('after')")
        .execute(&mut conn)
        .await
        .unwrap();
    receive_label(&mut c, "realtime:notes", "after").await;
    eventually(Duration::from_secs(10), "the gap audited", || {
        let db = &db;
        async move {
            let mut conn = db.connect().await;
            sqlx::query_scalar::<_, i64>(
                "select count(*) from realtime.audit_log where kind = 'changes_missed'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap()
                >= 1
        }
    })
    .await;
    drop(frozen);
    live.stop().await.unwrap();
}
