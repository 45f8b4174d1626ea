//! Conformance with the real, unmodified clients: `@supabase/realtime-js` 2.119.0 (vsn 2.0.0,
//! under Node.js) and supabase-py's `realtime` 2.34.1 (vsn 1.0.0 JSON objects).

mod common;

use common::{realtime_table, Client, Driver, TestDb, TestGateway};
use serde_json::{json, Value};

const BINDINGS: usize = 5;

fn bindings() -> Value {
    json!([
        {"event": "INSERT", "schema": "public", "table": "todos"},
        {"event": "UPDATE", "schema": "public", "table": "todos"},
        {"event": "DELETE", "schema": "public", "table": "todos"},
        {"event": "*", "schema": "public", "table": "todos"},
        {"event": "INSERT", "schema": "public", "table": "todos", "filter": "title=eq.match"},
    ])
}

/// Writes: two inserts, one update, one delete. Returns what each binding must receive, as
/// (eventType, new, old), in order.
async fn write_changes(db: &TestDb) -> Vec<Vec<(&'static str, Value, Value)>> {
    let mut conn = db.connect().await;
    for sql in [
        "insert into todos (title, meta, tags) values ('a', '{\"k\": [1, 2]}', '{x,y}')",
        "insert into todos (title) values ('match')",
        "update todos set done = true where id = 1",
        "delete from todos where id = 2",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let row1 =
        json!({"id": 1, "title": "a", "done": false, "meta": {"k": [1, 2]}, "tags": ["x", "y"]});
    let row2 = json!({"id": 2, "title": "match", "done": false, "meta": null, "tags": null});
    let mut row1_done = row1.clone();
    row1_done["done"] = json!(true);
    let ins1 = ("INSERT", row1, json!({}));
    let ins2 = ("INSERT", row2, json!({}));
    let upd = ("UPDATE", row1_done, json!({"id": 1}));
    let del = ("DELETE", json!({}), json!({"id": 2}));
    vec![
        vec![ins1.clone(), ins2.clone()],
        vec![upd.clone()],
        vec![del.clone()],
        vec![ins1, ins2.clone(), upd, del],
        vec![ins2],
    ]
}

/// A gateway on a fresh database with `todos`, and `client` subscribed to it with [`bindings`].
async fn subscribed(client: Client) -> (TestDb, TestGateway, Driver) {
    let db = TestDb::new().await;
    table(&db).await;
    let gw = TestGateway::start(&db).await;
    let mut d = Driver::start(client, &gw, json!({})).await;
    d.send(json!({"cmd": "subscribe", "id": "s", "channel": "todos", "changes": bindings()}))
        .await;
    let status = d.expect(|e| e["ev"] == "status").await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
    (db, gw, d)
}

/// Collects the `change` events the driver reports, per binding, once `expected` are in.
async fn changes_per_binding(
    d: &mut Driver,
    expected: &[Vec<(&'static str, Value, Value)>],
) -> Vec<Vec<Value>> {
    let total: usize = expected.iter().map(Vec::len).sum();
    let mut got: Vec<Vec<Value>> = vec![Vec::new(); BINDINGS];
    for _ in 0..total {
        let e = d.expect(|e| e["ev"] == "change").await;
        got[e["binding"].as_u64().unwrap() as usize].push(e["payload"].clone());
    }
    for (binding, want) in expected.iter().enumerate() {
        assert_eq!(
            got[binding].len(),
            want.len(),
            "binding {binding}: {:#?}",
            got[binding]
        );
    }
    got
}

async fn table(db: &TestDb) {
    realtime_table(
        db,
        "todos",
        "title text, done bool default false, meta jsonb, tags text[]",
    )
    .await;
}

/// realtime-js hands each callback the right `eventType`, `schema`, `table`,
/// `commit_timestamp`, `new` and `old`, for INSERT, UPDATE, DELETE, `*` and an `eq` filter.
#[tokio::test]
async fn realtime_js_receives_every_change_field_by_field() {
    let (db, gw, mut d) = subscribed(Client::Js).await;
    let expected = write_changes(&db).await;
    let got = changes_per_binding(&mut d, &expected).await;
    for (binding, want) in expected.iter().enumerate() {
        for (payload, (event_type, new, old)) in got[binding].iter().zip(want) {
            assert_eq!(payload["eventType"], *event_type, "binding {binding}");
            assert_eq!(payload["schema"], "public");
            assert_eq!(payload["table"], "todos");
            assert_eq!(payload["new"], *new, "binding {binding} {event_type}");
            assert_eq!(payload["old"], *old, "binding {binding} {event_type}");
            assert_eq!(payload["errors"], Value::Null);
            let ts = payload["commit_timestamp"].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
                "{ts}"
            );
        }
    }
    d.exit().await;
    gw.stop().await.unwrap();
}

/// supabase-py's client (vsn 1.0.0) gets the same changes in its raw `{ids, data}` shape.
#[tokio::test]
async fn realtime_py_receives_every_change_field_by_field() {
    let (db, gw, mut d) = subscribed(Client::Py).await;
    let expected = write_changes(&db).await;
    let got = changes_per_binding(&mut d, &expected).await;
    for (binding, want) in expected.iter().enumerate() {
        for (payload, (event_type, new, old)) in got[binding].iter().zip(want) {
            let data = &payload["data"];
            assert_eq!(data["type"], *event_type, "binding {binding}");
            assert_eq!(data["schema"], "public");
            assert_eq!(data["table"], "todos");
            if *event_type != "DELETE" {
                assert_eq!(data["record"], *new, "binding {binding} {event_type}");
            }
            if *event_type != "INSERT" {
                assert_eq!(data["old_record"], *old, "binding {binding} {event_type}");
            }
            assert_eq!(data["errors"], Value::Null);
        }
    }
    d.exit().await;
    gw.stop().await.unwrap();
}

/// An invalid filter surfaces as a channel error in the real clients: realtime-js when it asks
/// to wait for its subscriptions (otherwise its `system` listener gets the error), supabase-py
/// always.
#[tokio::test]
async fn invalid_filter_is_a_channel_error_in_the_clients() {
    let db = TestDb::new().await;
    table(&db).await;
    let gw = TestGateway::start(&db).await;
    let bad = json!([{"event": "*", "schema": "public", "table": "todos", "filter": "id=foo.1"}]);
    let text = "Error parsing `filter` params";

    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    js.send(
        json!({"cmd": "subscribe", "id": "w", "channel": "bad-wait", "changes": bad,
                   "postgres_changes_options": {"wait": true}}),
    )
    .await;
    let status = js.expect(|e| e["ev"] == "status" && e["id"] == "w").await;
    assert_eq!(status["status"], "CHANNEL_ERROR", "{status}");
    assert!(status["error"].as_str().unwrap().contains(text), "{status}");
    js.send(json!({"cmd": "subscribe", "id": "n", "channel": "bad", "changes": bad}))
        .await;
    let system = js
        .expect(|e| e["ev"] == "system" && e["channel"] == "bad")
        .await;
    assert_eq!(system["payload"]["status"], "error");
    assert!(system["payload"]["message"]
        .as_str()
        .unwrap()
        .contains(text));
    js.exit().await;

    let mut py = Driver::start(Client::Py, &gw, json!({})).await;
    py.send(json!({"cmd": "subscribe", "id": "p", "channel": "bad", "changes": bad}))
        .await;
    let status = py
        .expect(|e| e["ev"] == "status" && e["status"] == "CHANNEL_ERROR")
        .await;
    assert!(status["error"].as_str().unwrap().contains(text), "{status}");
    py.exit().await;
    gw.stop().await.unwrap();
}
