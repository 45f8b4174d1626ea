//! Bounds on what a client controls: an over-long topic, a join with thousands of
//! `postgres_changes` entries, long filters, component names and event names are refused with
//! the documented reply, nothing of them is kept, and other clients keep being served.

mod common;

use std::time::Duration;

use common::{eventually, http_request, realtime_table, token, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

/// Inserts a row into `feed` and waits until `bystander` receives it: the bystander is served.
async fn bystander_is_served(db: &TestDb, bystander: &mut WsClient, label: &str) {
    let mut conn = db.connect().await;
    sqlx::query("insert into feed (label) values ($1)")
        .bind(label)
        .execute(&mut conn)
        .await
        .unwrap();
    loop {
        let m = bystander
            .next_within(Duration::from_secs(5))
            .await
            .expect("the bystander's socket stays open");
        if m.event == "postgres_changes" {
            assert_eq!(m.payload["data"]["record"]["label"], label);
            return;
        }
    }
}

async fn subscribed_bystander(gw: &TestGateway) -> WsClient {
    let mut c = WsClient::anon(gw).await;
    c.subscribe(
        "realtime:bystander",
        json!([{"event": "INSERT", "schema": "public", "table": "feed"}]),
    )
    .await;
    c
}

async fn registry_rows_like(db: &TestDb, pattern: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "select count(*) from public.realtime_subscription_registry where channel_name like $1",
    )
    .bind(pattern)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Regression: a multi-megabyte topic was accepted and copied into memory, the registry and
/// the audit log; tens of thousands of `postgres_changes` entries were all kept and compiled.
/// Both are refused now, while a bystander keeps receiving its changes.
#[tokio::test]
async fn oversized_joins_are_refused_and_others_keep_being_served() {
    let db = TestDb::new().await;
    realtime_table(&db, "feed", "label text").await;
    let gw = TestGateway::start(&db).await;
    let mut bystander = subscribed_bystander(&gw).await;

    let mut c = WsClient::anon(&gw).await;
    let long = format!("realtime:{}", "x".repeat(20_000));
    let reply = c.join(&long, json!({})).await;
    assert_eq!(reply["status"], "error");
    assert_eq!(
        reply["response"]["reason"],
        "InvalidJoinPayload: topic is longer than 1024 bytes"
    );
    bystander_is_served(&db, &mut bystander, "after the long topic").await;

    // A join of 20,000 entries: refused as a whole, sent while the bystander is served.
    let entries: Vec<Value> = (0..20_000)
        .map(|i| json!({"event": "*", "schema": "public", "table": "feed", "filter": format!("label=eq.{i}")}))
        .collect();
    let huge = tokio::spawn({
        let mut c = WsClient::anon(&gw).await;
        async move {
            c.join("realtime:huge", json!({"postgres_changes": entries}))
                .await
        }
    });
    bystander_is_served(&db, &mut bystander, "while the huge join runs").await;
    let reply = huge.await.unwrap();
    assert_eq!(
        reply["response"]["reason"],
        "InvalidPostgresChangesParams: at most 100 postgres_changes entries per join"
    );

    let reply = c
        .join(
            "realtime:long-filter",
            json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "feed",
                                         "filter": format!("label=eq.{}", "y".repeat(9000))}]}),
        )
        .await;
    assert_eq!(
        reply["response"]["reason"],
        "InvalidJoinPayload: filter is longer than 8192 bytes"
    );
    // A field other than `filter` cannot carry megabytes either: the whole entry is bounded.
    let reply = c
        .join(
            "realtime:long-table",
            json!({"postgres_changes": [{"event": "*", "schema": "public",
                                         "table": "t".repeat(20_000)}]}),
        )
        .await;
    assert_eq!(
        reply["response"]["reason"],
        "InvalidJoinPayload: postgres_changes entry is longer than 9216 bytes"
    );
    // Refs are echoed and kept: a long one is a malformed frame.
    c.send_text(&format!(
        r#"["{}","1","realtime:refs","phx_join",{{}}]"#,
        "r".repeat(300)
    ))
    .await;
    let m = c.expect_event("phoenix", "phx_reply").await;
    assert_eq!(
        m.payload["response"]["reason"],
        "malformed frame: frame field join_ref is longer than 255 bytes"
    );
    let reply = c
        .join(
            "realtime:long-component",
            json!({"component": "c".repeat(300)}),
        )
        .await;
    assert_eq!(
        reply["response"]["reason"],
        "InvalidJoinPayload: component is longer than 255 bytes"
    );
    let reply = c
        .join(
            "realtime:long-key",
            json!({"presence": {"key": "k".repeat(300)}}),
        )
        .await;
    assert_eq!(
        reply["response"]["reason"],
        "InvalidJoinPayload: presence key is longer than 255 bytes"
    );

    // Within the bounds, the same socket still joins; the refused joins were never recorded.
    let reply = c.join("realtime:fine", json!({})).await;
    assert_eq!(reply["status"], "ok");
    eventually(
        Duration::from_secs(10),
        "the good join recorded",
        || async { registry_rows_like(&db, "fine").await == 1 },
    )
    .await;
    for refused in ["xxxxxxxx%", "huge", "long-%"] {
        assert_eq!(registry_rows_like(&db, refused).await, 0, "{refused}");
    }
    bystander_is_served(&db, &mut bystander, "at the end").await;
    gw.stop().await.unwrap();
}

/// A broadcast whose event name is over `--max-event-bytes` is answered with an error and not
/// relayed, over the socket and over REST (422).
#[tokio::test]
async fn long_event_names_are_refused() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut sender = WsClient::anon(&gw).await;
    let reply = sender
        .join(
            "realtime:room",
            json!({"broadcast": {"ack": true, "self": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let long = "e".repeat(256);
    let r = sender
        .send(
            Some("1"),
            "realtime:room",
            "broadcast",
            json!({"type": "broadcast", "event": long, "payload": {}}),
        )
        .await;
    let m = sender.expect_event("realtime:room", "phx_reply").await;
    assert_eq!(m.msg_ref.as_deref(), Some(r.as_str()));
    assert_eq!(
        m.payload,
        json!({"status": "error", "response": {"reason": "event is longer than 255 bytes"}})
    );
    // A short one still goes through, and is the next frame the sender sees.
    sender
        .send(
            Some("1"),
            "realtime:room",
            "broadcast",
            json!({"type": "broadcast", "event": "ok", "payload": {}}),
        )
        .await;
    let m = sender.expect_event("realtime:room", "broadcast").await;
    assert_eq!(m.payload["event"], "ok");

    let key = token("anon", None);
    let body = json!({"messages": [{"topic": "room", "event": long, "payload": {}}]});
    let (status, text) = http_request(
        gw.addr,
        "POST",
        "/api/broadcast",
        &[
            ("apikey", key.as_str()),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("event is longer than 255 bytes"), "{text}");
    gw.stop().await.unwrap();
}

/// A flood of joins naming an unpublished table or an unknown column is answered from the
/// catalog cache: concurrent joins share catalog reads (at most one in flight), so a small pool
/// keeps serving deliveries.
#[tokio::test]
async fn join_floods_do_not_amplify_into_database_load() {
    let db = TestDb::new().await;
    realtime_table(&db, "feed", "label text").await;
    let mut conn = db.connect().await;
    sqlx::query("create table hidden (id bigint primary key, label text)")
        .execute(&mut conn)
        .await
        .unwrap();
    let gw = TestGateway::start_with(&db, |c| c.db_pool_size = 2).await;
    let mut bystander = subscribed_bystander(&gw).await;
    let catalog = std::sync::Arc::clone(&gw.state.session.catalog);
    let before = catalog.reads();
    const CLIENTS: usize = 40;
    const JOINS: usize = 5;
    let mut flood = Vec::new();
    for i in 0..CLIENTS {
        let mut c = WsClient::anon(&gw).await;
        flood.push(tokio::spawn(async move {
            for j in 0..JOINS {
                let entry = if (i + j) % 2 == 0 {
                    json!({"event": "*", "schema": "public", "table": "hidden"})
                } else {
                    json!({"event": "*", "schema": "public", "table": "feed", "filter": "nope=eq.1"})
                };
                let topic = format!("realtime:flood-{j}");
                let reply = c.join(&topic, json!({"postgres_changes": [entry]})).await;
                assert_eq!(reply["status"], "ok");
                let system = c.expect_event(&topic, "system").await;
                assert_eq!(system.payload["status"], "error", "{}", system.payload);
            }
        }));
    }
    bystander_is_served(&db, &mut bystander, "during the flood").await;
    for f in flood {
        f.await.unwrap();
    }
    let reads = catalog.reads() - before;
    let joins = (CLIENTS * JOINS) as u64;
    assert!(
        reads < joins,
        "{joins} joins made {reads} catalog reads: they were not shared"
    );
    bystander_is_served(&db, &mut bystander, "after the flood").await;
    gw.stop().await.unwrap();
}

/// Sends a presence track on `topic` and returns its reply payload.
async fn track(c: &mut WsClient, topic: &str, payload: Value) -> Value {
    let r = c
        .send(
            Some("1"),
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": payload}),
        )
        .await;
    loop {
        let m = c.expect_event(topic, "phx_reply").await;
        if m.msg_ref.as_deref() == Some(r.as_str()) {
            return m.payload;
        }
    }
}

/// A channel holds at most `--max-presence-per-channel` entries and
/// `--max-presence-bytes-per-channel` bytes of presence: a track past either gets an error
/// reply; members already tracked can still update, and room comes back as they leave.
#[tokio::test]
async fn a_channels_presence_is_bounded() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.max_presence_per_channel = 2;
        c.max_presence_bytes_per_channel = 4096;
    })
    .await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let mut c = WsClient::anon(&gw).await;
        let reply = c
            .join("realtime:lobby", json!({"presence": {"enabled": true}}))
            .await;
        assert_eq!(reply["status"], "ok");
        members.push(c);
    }
    let full = json!({"status": "error", "response": {"reason": "Channel presence limit reached"}});
    assert_eq!(
        track(&mut members[0], "realtime:lobby", json!({"n": 0})).await["status"],
        "ok"
    );
    assert_eq!(
        track(&mut members[1], "realtime:lobby", json!({"n": 1})).await["status"],
        "ok"
    );
    assert_eq!(
        track(&mut members[2], "realtime:lobby", json!({"n": 2})).await,
        full
    );
    // An update of a tracked member is not a new entry.
    assert_eq!(
        track(&mut members[1], "realtime:lobby", json!({"n": 11})).await["status"],
        "ok"
    );
    // Too many bytes, even with room for an entry.
    let r = members[0]
        .send(
            Some("1"),
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    loop {
        let m = members[0].expect_event("realtime:lobby", "phx_reply").await;
        if m.msg_ref.as_deref() == Some(r.as_str()) {
            break;
        }
    }
    let big = json!({"blob": "b".repeat(5000)});
    assert_eq!(track(&mut members[2], "realtime:lobby", big).await, full);
    assert_eq!(
        track(&mut members[2], "realtime:lobby", json!({"n": 2})).await["status"],
        "ok"
    );
    gw.stop().await.unwrap();
}

/// The regex work one connection may ask for is bounded: pattern conditions (`like`,
/// `ilike`, `match`, `imatch`) past `--max-patterns-per-connection` are refused with a
/// `system` error; another connection has a budget of its own.
#[tokio::test]
async fn pattern_filters_per_connection_are_bounded() {
    let db = TestDb::new().await;
    realtime_table(&db, "feed", "label text").await;
    let gw = TestGateway::start_with(&db, |c| c.max_patterns_per_connection = 3).await;
    let entry = |pattern: &str| json!({"event": "*", "schema": "public", "table": "feed", "filter": format!("label=like.{pattern}")});
    let mut c = WsClient::anon(&gw).await;
    c.subscribe("realtime:a", json!([entry("a%"), entry("b%")]))
        .await;
    let reply = c
        .join(
            "realtime:b",
            json!({"postgres_changes": [entry("c%"), entry("d%")]}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let system = c.expect_event("realtime:b", "system").await;
    assert_eq!(system.payload["status"], "error");
    assert_eq!(
        system.payload["message"],
        "Too many pattern filters (like, ilike, match, imatch) on this connection: at most 3"
    );
    c.subscribe("realtime:c", json!([entry("c%")])).await;
    let mut other = WsClient::anon(&gw).await;
    other
        .subscribe("realtime:a", json!([entry("a%"), entry("b%"), entry("c%")]))
        .await;
    gw.stop().await.unwrap();
}

/// What one connection tracks across all its channels is bounded by
/// `--max-presence-bytes-per-connection`.
#[tokio::test]
async fn a_connections_presence_is_bounded_across_its_channels() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.max_presence_bytes_per_connection = 200).await;
    let mut c = WsClient::anon(&gw).await;
    for topic in ["realtime:p1", "realtime:p2"] {
        let reply = c
            .join(topic, json!({"presence": {"key": "k", "enabled": true}}))
            .await;
        assert_eq!(reply["status"], "ok");
    }
    let payload = json!({"blob": "x".repeat(120)});
    assert_eq!(
        track(&mut c, "realtime:p1", payload.clone()).await["status"],
        "ok"
    );
    assert_eq!(
        track(&mut c, "realtime:p2", payload.clone()).await,
        json!({"status": "error", "response": {"reason": "Connection presence limit reached"}})
    );
    // Replacing what a channel tracks is judged without what it replaces.
    assert_eq!(
        track(&mut c, "realtime:p1", json!({"blob": "y".repeat(120)})).await["status"],
        "ok"
    );
    let r = c
        .send(
            Some("1"),
            "realtime:p1",
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    loop {
        let m = c.expect_event("realtime:p1", "phx_reply").await;
        if m.msg_ref.as_deref() == Some(r.as_str()) {
            break;
        }
    }
    assert_eq!(track(&mut c, "realtime:p2", payload).await["status"], "ok");
    gw.stop().await.unwrap();
}
