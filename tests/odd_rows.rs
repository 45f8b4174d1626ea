//! Rows that are valid in PostgreSQL but awkward in JSON (numbers beyond double range or
//! precision, deep nesting) are delivered with every digit; an outbox row that cannot be
//! delivered is skipped with a count, an audit record and an error entry, and the rows after
//! it still arrive.

mod common;

use std::time::Duration;

use common::{eventually, realtime_table, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(10);
const FORTY_DIGITS: &str = "12345678901234567890.123456789012345678901234567890";

/// The next `postgres_changes` frame on `topic`, unparsed, and its payload parsed (`null`
/// where serde_json's defaults cannot: numbers beyond double range, nesting beyond 128).
async fn next_change(c: &mut WsClient, topic: &str) -> (String, Value) {
    loop {
        let raw = c.next_raw(PATIENCE).await.expect("socket open");
        let frame: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(&raw).expect("json frame");
        let text = |i: usize| serde_json::from_str::<Value>(frame[i].get()).unwrap();
        if text(2) == topic && text(3) == "postgres_changes" {
            let payload = serde_json::from_str(frame[4].get()).unwrap_or(Value::Null);
            return (raw, payload);
        }
    }
}

/// Ordinary inserts of a `numeric` 1e309, a numeric with 40+ digits and a jsonb nested 1,000
/// deep, between ordinary rows: each arrives, in order, with its exact text; a bystander of
/// another table keeps receiving; a filtered subscriber gets the exact numbers it matches and
/// an error entry for the row its filter cannot be evaluated on.
#[tokio::test]
async fn out_of_range_numbers_and_deep_nesting_are_delivered_exactly() {
    let db = TestDb::new().await;
    realtime_table(&db, "odd", "n numeric, j jsonb").await;
    realtime_table(&db, "other", "title text").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:odd",
        json!([{"event": "INSERT", "schema": "public", "table": "odd"}]),
    )
    .await;
    let mut filtered = WsClient::anon(&gw).await;
    filtered
        .subscribe(
            "realtime:exact",
            json!([{"event": "INSERT", "schema": "public", "table": "odd",
                    "filter": format!("n=eq.{FORTY_DIGITS}")}]),
        )
        .await;
    let mut bystander = WsClient::anon(&gw).await;
    bystander
        .subscribe(
            "realtime:other",
            json!([{"event": "*", "schema": "public", "table": "other"}]),
        )
        .await;
    let mut conn = db.connect().await;
    for sql in [
        "insert into odd (n) values (1)".to_owned(),
        "insert into odd (n) values ('1e309'::numeric)".to_owned(),
        "insert into other (title) values ('between')".to_owned(),
        format!("insert into odd (n) values ({FORTY_DIGITS})"),
        "insert into odd (j) values ((repeat('[', 1000) || repeat(']', 1000))::jsonb)".to_owned(),
        "insert into odd (n) values (2)".to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }

    let (_, first) = next_change(&mut c, "realtime:odd").await;
    assert_eq!(first["data"]["record"], json!({"id": 1, "n": 1, "j": null}));
    let (raw, _) = next_change(&mut c, "realtime:odd").await;
    let huge = format!("\"n\":1{}", "0".repeat(309));
    assert!(raw.contains(&huge), "1e309 with all its digits: {raw}");
    let (raw, _) = next_change(&mut c, "realtime:odd").await;
    assert!(
        raw.contains(&format!("\"n\":{FORTY_DIGITS}")),
        "every digit: {raw}"
    );
    let (raw, _) = next_change(&mut c, "realtime:odd").await;
    assert!(
        raw.contains(&format!("\"j\":{}{}", "[".repeat(1000), "]".repeat(1000))),
        "1,000 levels"
    );
    assert!(raw.contains(r#""errors":null"#), "no error");
    let (_, last) = next_change(&mut c, "realtime:odd").await;
    assert_eq!(last["data"]["record"], json!({"id": 5, "n": 2, "j": null}));

    let (_, between) = next_change(&mut bystander, "realtime:other").await;
    assert_eq!(between["data"]["record"]["title"], "between");

    // The filter compares the numeric exactly, and cannot evaluate the deep row.
    let (raw, exact) = next_change(&mut filtered, "realtime:exact").await;
    assert!(raw.contains(&format!("\"n\":{FORTY_DIGITS}")), "{raw}");
    assert_eq!(exact["data"]["record"]["id"], 3);
    let (_, gap) = next_change(&mut filtered, "realtime:exact").await;
    assert_eq!(gap["data"]["record"], json!({}));
    assert_eq!(gap["data"]["type"], "INSERT");
    let errors = gap["data"]["errors"].as_array().expect("errors listed");
    assert!(
        errors[0].as_str().unwrap().starts_with("Error 422"),
        "{errors:?}"
    );
    gw.stop().await.unwrap();
}

/// An outbox row whose record is not a JSON object (written straight into the outbox, as a
/// corrupted or forged row would be) is skipped: counted, audited, reported to its table's
/// subscribers as an error entry, and the rows after it arrive.
#[tokio::test]
async fn an_undeliverable_row_is_skipped_reported_and_audited() {
    realtime_gateway::admin::metrics::handle();
    let db = TestDb::new().await;
    realtime_table(&db, "odd", "n numeric").await;
    let gw = TestGateway::start(&db).await;
    let failed_before = gw.metric("gateway_capture_rows_failed_total").await;
    let mut c = WsClient::anon(&gw).await;
    let ids = c
        .subscribe(
            "realtime:odd",
            json!([{"event": "*", "schema": "public", "table": "odd"}]),
        )
        .await;
    let mut conn = db.connect().await;
    sqlx::query("insert into odd (n) values (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    let bad_id: i64 = sqlx::query_scalar(
        "insert into realtime.changes (relid, op, record) \
         values ('public.odd'::regclass, 'I', '[1, 2]'::jsonb) \
         returning id",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query("insert into odd (n) values (3)")
        .execute(&mut conn)
        .await
        .unwrap();

    let (_, first) = next_change(&mut c, "realtime:odd").await;
    assert_eq!(first["data"]["record"]["n"], 1);
    let (_, bad) = next_change(&mut c, "realtime:odd").await;
    assert_eq!(bad["ids"], json!(ids));
    assert_eq!(bad["data"]["table"], "odd");
    assert_eq!(bad["data"]["type"], "INSERT");
    assert_eq!(bad["data"]["record"], json!({}));
    let reason = bad["data"]["errors"][0].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("Error 422: Unprocessable Entity, change not delivered"),
        "{reason}"
    );
    assert!(reason.contains("not a json object"), "{reason}");
    let (_, after) = next_change(&mut c, "realtime:odd").await;
    assert_eq!(after["data"]["record"]["n"], 3);

    eventually(PATIENCE, "the failure counted", || async {
        gw.metric("gateway_capture_rows_failed_total").await > failed_before
    })
    .await;
    let pool = db.pool().await;
    eventually(PATIENCE, "the audit record", || {
        let pool = pool.clone();
        async move {
            let detail: Option<Value> = sqlx::query_scalar(
                "select detail from realtime.audit_log where kind = 'change_undeliverable'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            detail.is_some_and(|d| {
                d["id"] == bad_id
                    && d["table"] == "odd"
                    && d["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("json object"))
            })
        }
    })
    .await;
    gw.stop().await.unwrap();
}

/// While the outbox cannot be read (here: renamed away), the listener retries from a timer arm
/// of its loop: once the back-off has grown to seconds, a broadcast sent from SQL (the cluster
/// bus, on the same listener connection) still arrives at once; when the outbox is back, the
/// changes flow again.
#[tokio::test]
async fn a_failing_read_does_not_hold_up_the_bus() {
    realtime_gateway::admin::metrics::handle();
    let db = TestDb::new().await;
    realtime_table(&db, "odd", "n numeric").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:odd",
        json!([{"event": "*", "schema": "public", "table": "odd"}]),
    )
    .await;
    let mut conn = db.connect().await;
    let errors_before = gw.metric("gateway_listener_read_errors_total").await;
    sqlx::query("alter table realtime.changes rename to changes_away")
        .execute(&mut conn)
        .await
        .unwrap();
    // Five failed reads: the next retry is 3.2 s away.
    eventually(Duration::from_secs(20), "failed reads", || async {
        gw.metric("gateway_listener_read_errors_total").await >= errors_before + 5.0
    })
    .await;
    sqlx::query("select realtime.send('{\"x\": 1}', 'ping', 'odd', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    let m = tokio::time::timeout(
        Duration::from_millis(1500),
        c.expect_event("realtime:odd", "broadcast"),
    )
    .await
    .expect("the broadcast is not held up by the read's back-off");
    assert_eq!(m.payload["event"], "ping");

    sqlx::query("alter table realtime.changes_away rename to changes")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("insert into odd (n) values (7)")
        .execute(&mut conn)
        .await
        .unwrap();
    let (_, change) = next_change(&mut c, "realtime:odd").await;
    assert_eq!(change["data"]["record"]["n"], 7);
    gw.stop().await.unwrap();
}
