//! Broadcast from the database (README "Broadcast and presence", docs/protocol.md 7.4):
//! `realtime.broadcast_changes` in a user trigger and `realtime.send_binary` reach unmodified
//! realtime-js clients, and no failing call ever fails the writer's transaction.

mod common;

use std::time::Duration;

use common::{eventually, token, Client, Driver, TestDb, TestGateway};
use serde_json::{json, Value};
use sqlx::Connection;

/// Lets `authenticated` read the broadcasts of private channel `topic`.
async fn readable(db: &TestDb, topic: &str) {
    let mut conn = db.connect().await;
    sqlx::query(&format!(
        "create policy \"read {topic}\" on realtime.messages for select to authenticated \
         using (realtime.topic() = '{topic}' and realtime.messages.extension = 'broadcast')"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// A realtime-js client subscribed to `channel` (private when `private`), listening to every
/// broadcast event.
async fn subscriber(gw: &TestGateway, channel: &str, private: bool) -> Driver {
    let mut js = Driver::start(Client::Js, gw, json!({})).await;
    let user = token("authenticated", Some(&uuid::Uuid::new_v4().to_string()));
    js.send(
        json!({"cmd": "subscribe", "channel": channel, "private": private,
                   "access_token": user, "listen_broadcast": ["*"]}),
    )
    .await;
    let status = js
        .expect(|e| e["ev"] == "status" && e["channel"] == channel)
        .await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
    js
}

/// The payload of the next broadcast the client receives.
async fn next_broadcast(js: &mut Driver) -> Value {
    js.expect(|e| e["ev"] == "broadcast").await["payload"].clone()
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

/// Guards the trigger helper's contract: a row-level trigger calling
/// `realtime.broadcast_changes` sends `{record, old_record, operation, table, schema}` to the
/// private channel, and realtime-js hands it over with `meta.id`.
#[tokio::test]
async fn broadcast_changes_from_a_user_trigger_reaches_realtime_js() {
    let db = TestDb::new().await;
    readable(&db, "notes").await;
    let mut conn = db.connect().await;
    for sql in [
        "create table public.notes (id int primary key, body text)",
        "create function public.notes_changed() returns trigger language plpgsql as $$ \
         begin \
             perform realtime.broadcast_changes('notes', tg_op, tg_op, tg_table_name, \
                                                tg_table_schema, new, old, tg_level); \
             return null; \
         end $$",
        "create trigger notes_changed after insert or update or delete on public.notes \
         for each row execute function public.notes_changed()",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let gw = TestGateway::start(&db).await;
    let mut js = subscriber(&gw, "notes", true).await;

    sqlx::query("insert into public.notes values (1, 'first')")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("update public.notes set body = 'second' where id = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("delete from public.notes where id = 1")
        .execute(&mut conn)
        .await
        .unwrap();

    let first = json!({"id": 1, "body": "first"});
    let second = json!({"id": 1, "body": "second"});
    for (op, record, old_record) in [
        ("INSERT", first.clone(), Value::Null),
        ("UPDATE", second.clone(), first),
        ("DELETE", Value::Null, second),
    ] {
        let got = next_broadcast(&mut js).await;
        assert_eq!(got["type"], "broadcast", "{got}");
        assert_eq!(got["event"], op, "{got}");
        let payload = &got["payload"];
        assert_eq!(payload["operation"], op, "{got}");
        assert_eq!(payload["table"], "notes", "{got}");
        assert_eq!(payload["schema"], "public", "{got}");
        assert_eq!(payload["record"], record, "{got}");
        assert_eq!(payload["old_record"], old_record, "{got}");
        assert!(is_uuid(&got["meta"]["id"]), "{got}");
        assert_eq!(
            payload["id"], got["meta"]["id"],
            "as realtime.send, the id is added"
        );
        assert!(got["meta"].get("replayed").is_none(), "{got}");
    }
    js.exit().await;
    gw.stop().await.unwrap();
}

/// Guards `realtime.send_binary`: realtime-js (vsn 2) receives the bytes as an `ArrayBuffer`
/// with `meta.id`; the same channel's JSON messages are unchanged.
#[tokio::test]
async fn send_binary_reaches_realtime_js_as_bytes() {
    let db = TestDb::new().await;
    readable(&db, "bytes").await;
    let gw = TestGateway::start(&db).await;
    let mut private = subscriber(&gw, "bytes", true).await;
    let mut public = subscriber(&gw, "bytes", false).await;
    let mut conn = db.connect().await;
    let bytes: &[u8] = &[0, 1, 2, 0xfe, 0xff, b'{'];
    sqlx::query("select realtime.send_binary($1, 'blob', 'bytes')")
        .bind(bytes)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("select realtime.send_binary($1, 'public_blob', 'bytes', private => false)")
        .bind(&bytes[..2])
        .execute(&mut conn)
        .await
        .unwrap();
    let encode = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let got = next_broadcast(&mut private).await;
    assert_eq!(got["event"], "blob", "{got}");
    assert_eq!(got["payload"]["$binary_base64"], encode(bytes), "{got}");
    assert!(is_uuid(&got["meta"]["id"]), "{got}");
    let got = next_broadcast(&mut public).await;
    assert_eq!(got["event"], "public_blob", "{got}");
    assert_eq!(
        got["payload"]["$binary_base64"],
        encode(&bytes[..2]),
        "{got}"
    );
    private.exit().await;
    public.exit().await;
    gw.stop().await.unwrap();
}

/// Regression guard: a broadcast function that raised inside a trigger rolled back the user's
/// own write. Bad arguments, a statement-level call, a refused insert and an oversize payload
/// each fail the send only: the transaction commits, the failure is recorded, nothing of it is
/// delivered.
#[tokio::test]
async fn failing_calls_never_fail_the_writers_transaction() {
    let db = TestDb::new().await;
    readable(&db, "orders").await;
    let mut conn = db.connect().await;
    for sql in [
        "create table public.orders (id int primary key)",
        "create function public.orders_changed() returns trigger language plpgsql as $$ \
         begin \
             perform realtime.broadcast_changes('orders', tg_op, tg_op, tg_table_name, \
                                                tg_table_schema, new, old, tg_level); \
             return null; \
         end $$",
        // A statement-level trigger: broadcast_changes refuses it (upstream raises).
        "create trigger orders_changed after insert on public.orders \
         for each statement execute function public.orders_changed()",
        "grant insert on public.orders to authenticated",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let gw = TestGateway::start(&db).await;
    let mut js = subscriber(&gw, "orders", true).await;

    let mut tx = conn.begin().await.unwrap();
    for sql in [
        "insert into public.orders values (1)",
        "select realtime.send('{}', null, 'orders')",
        "select realtime.send('{}', 'no_topic', null)",
        "select realtime.send_binary(null, 'no_payload', 'orders')",
        "select realtime.send_binary('\\x00', repeat('e', 256), 'orders')",
        "select realtime.broadcast_changes('orders', 'e', 'TRUNCATE', 'orders', 'public', \
                                           null::record, null::record)",
        // Over --max-message-bytes: stored, then refused by the gateway.
        "select realtime.send(jsonb_build_object('blob', repeat('x', 3100000)), 'huge', 'orders')",
        // authenticated has no insert policy on realtime.messages: the insert is refused.
        "set local role authenticated",
        "insert into public.orders values (2)",
        "select realtime.send('{}', 'refused', 'orders')",
        "reset role",
    ] {
        sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    tx.commit().await.unwrap();

    let ids: Vec<i32> = sqlx::query_scalar("select id from public.orders order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, [1, 2], "the writer's rows committed");
    let failed: Vec<(String, i64, String)> = sqlx::query_as(
        "select detail->>'function', (detail->>'failures')::int8, detail->>'error' \
         from realtime.audit_log where kind = 'send_failed' order by detail->>'function'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let summary: Vec<(&str, i64)> = failed.iter().map(|(f, n, _)| (f.as_str(), *n)).collect();
    assert_eq!(
        summary,
        [("broadcast_changes", 3), ("send", 3), ("send_binary", 2)],
        "one audit row per function and transaction, counting its failures: {failed:?}"
    );
    assert!(
        failed[0].2.contains("for each row only"),
        "the first failure's error is kept: {failed:?}"
    );

    // Nothing of it reached the channel: the first broadcast is a later, good one.
    sqlx::query("select realtime.send('{\"ok\": true}', 'good', 'orders')")
        .execute(&mut conn)
        .await
        .unwrap();
    let got = next_broadcast(&mut js).await;
    assert_eq!(got["event"], "good", "{got}");
    // The oversize one is accounted for.
    eventually(
        Duration::from_secs(10),
        "the oversize message audited",
        || {
            let db = &db;
            async move {
                let mut conn = db.connect().await;
                sqlx::query_scalar::<_, i64>(
                "select count(*) from realtime.audit_log where kind = 'broadcast_undeliverable' \
                 and detail->>'event' = 'huge' and (detail->>'size')::int8 > 3000000",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap()
                == 1
            }
        },
    )
    .await;
    js.exit().await;
    gw.stop().await.unwrap();
}
