//! Several gateway nodes on one database: broadcasts and presence cross nodes over the bus
//! (`NOTIFY realtime_bus`), messages too large for a notification go through the spill table,
//! a killed node's presence is removed within the stale timeout, and a node whose listener
//! connection dropped rebuilds presence and catches up on database broadcasts it missed.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{http_request, token, Client, Driver, GatewayProcess, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

async fn subscribe(d: &mut Driver, channel: &str, key: &str) {
    d.send(json!({"cmd": "subscribe", "id": key, "channel": channel,
                  "listen_broadcast": ["*"], "presence": {"key": key},
                  "listen_presence": true}))
        .await;
    let status = d.expect(|e| e["ev"] == "status").await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
}

async fn next_broadcast(d: &mut Driver) -> Value {
    d.expect(|e| e["ev"] == "broadcast").await["payload"].clone()
}

async fn saw(d: &mut Driver, kind: &str, keys: &[&str]) {
    let mut missing: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    for e in &d.log {
        if e["ev"] == "presence" && e["kind"] == kind {
            missing.remove(e["key"].as_str().unwrap_or_default());
        }
    }
    while !missing.is_empty() {
        let e = d
            .expect(|e| e["ev"] == "presence" && e["kind"] == kind)
            .await;
        missing.remove(e["key"].as_str().unwrap_or_default());
    }
}

async fn presence_keys(d: &mut Driver, channel: &str) -> Vec<String> {
    d.send(json!({"cmd": "presence_state", "channel": channel}))
        .await;
    let e = d.expect(|e| e["ev"] == "presence_state").await;
    let mut keys: Vec<String> = e["state"].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

async fn rest_send(addr: std::net::SocketAddr, channel: &str, event: &str, payload: &Value) {
    let key = token("anon", None);
    let path = format!("/api/broadcast/{channel}/events/{event}");
    let (status, body) = http_request(
        addr,
        "POST",
        &path,
        &[("apikey", &key), ("content-type", "application/json")],
        &payload.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{body}");
}

/// Two gateways on one database: realtime-js clients on node A and node B broadcast to each
/// other, REST on one node reaches the other's clients, `realtime.send` reaches each client
/// exactly once, and presence spans both nodes, leaves included.
#[tokio::test]
async fn broadcast_and_presence_span_two_nodes() {
    let db = TestDb::new().await;
    let node_a = TestGateway::start(&db).await;
    let node_b = TestGateway::start(&db).await;
    assert_ne!(node_a.config.node_id, node_b.config.node_id);
    let mut a = Driver::start(Client::Js, &node_a, json!({})).await;
    let mut b = Driver::start(Client::Js, &node_b, json!({})).await;
    subscribe(&mut a, "cluster", "a").await;
    subscribe(&mut b, "cluster", "b").await;

    a.send(json!({"cmd": "send", "channel": "cluster", "event": "from_a", "payload": {"n": 1}}))
        .await;
    let got = next_broadcast(&mut b).await;
    assert_eq!(
        got,
        json!({"type": "broadcast", "event": "from_a", "payload": {"n": 1}})
    );
    b.send(json!({"cmd": "send", "channel": "cluster", "event": "from_b", "payload": {"n": 2}}))
        .await;
    assert_eq!(next_broadcast(&mut a).await["event"], "from_b");

    rest_send(node_a.addr, "cluster", "via_rest", &json!({"n": 3})).await;
    assert_eq!(next_broadcast(&mut a).await["event"], "via_rest");
    assert_eq!(next_broadcast(&mut b).await["event"], "via_rest");

    let mut conn = db.connect().await;
    sqlx::query("select realtime.send('{\"n\": 4}', 'via_sql', 'cluster', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    // Also through the database, so that it follows `via_sql` on every node.
    sqlx::query("select realtime.send('{}', 'after_sql', 'cluster', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    for d in [&mut a, &mut b] {
        let sql = next_broadcast(d).await;
        assert_eq!(sql["event"], "via_sql");
        assert!(sql["meta"]["id"].is_string(), "{sql}");
        assert_eq!(
            next_broadcast(d).await["event"],
            "after_sql",
            "delivered once per client"
        );
    }

    for (d, key) in [(&mut a, "a"), (&mut b, "b")] {
        d.send(json!({"cmd": "track", "channel": "cluster", "payload": {"name": key}}))
            .await;
        assert_eq!(d.expect(|e| e["ev"] == "tracked").await["result"], "ok");
    }
    saw(&mut a, "join", &["a", "b"]).await;
    saw(&mut b, "join", &["a", "b"]).await;
    assert_eq!(presence_keys(&mut a, "cluster").await, ["a", "b"]);
    assert_eq!(presence_keys(&mut b, "cluster").await, ["a", "b"]);

    // A third client joining node A later gets node B's presence in its state.
    let mut late = Driver::start(Client::Js, &node_a, json!({})).await;
    subscribe(&mut late, "cluster", "late").await;
    saw(&mut late, "join", &["a", "b"]).await;
    assert_eq!(presence_keys(&mut late, "cluster").await, ["a", "b"]);

    b.send(json!({"cmd": "unsubscribe", "channel": "cluster"}))
        .await;
    b.expect(|e| e["ev"] == "unsubscribed").await;
    saw(&mut a, "leave", &["b"]).await;
    assert_eq!(presence_keys(&mut a, "cluster").await, ["a"]);
    saw(&mut late, "leave", &["b"]).await;
    for d in [a, b, late] {
        d.exit().await;
    }
    node_a.stop().await.unwrap();
    node_b.stop().await.unwrap();
}

/// Broadcasts and presence metas over the 8000-byte notification limit still cross nodes:
/// through `realtime.bus_spill`.
#[tokio::test]
async fn large_messages_cross_nodes_through_the_spill_table() {
    let db = TestDb::new().await;
    let node_a = TestGateway::start(&db).await;
    let node_b = TestGateway::start(&db).await;
    let topic = "realtime:big";
    let mut on_a = WsClient::anon(&node_a).await;
    on_a.join(topic, json!({"presence": {"key": "big"}})).await;
    let mut on_b = WsClient::anon(&node_b).await;
    on_b.join(topic, json!({})).await;

    let text = "é".repeat(10_000);
    on_a.send(
        Some("1"),
        topic,
        "broadcast",
        json!({"type": "broadcast", "event": "large", "payload": {"text": text}}),
    )
    .await;
    let got = on_b.expect_event(topic, "broadcast").await;
    assert_eq!(got.payload["payload"]["text"].as_str().unwrap(), text);

    on_a.send(
        Some("1"),
        topic,
        "presence",
        json!({"event": "track", "payload": {"text": text}}),
    )
    .await;
    let diff = on_b.expect_event(topic, "presence_diff").await;
    assert_eq!(
        diff.payload["joins"]["big"]["metas"][0]["text"]
            .as_str()
            .unwrap(),
        text
    );
    let mut conn = db.connect().await;
    let spilled: i64 = sqlx::query_scalar("select count(*) from realtime.bus_spill")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(spilled, 2);
    node_a.stop().await.unwrap();
    node_b.stop().await.unwrap();
}

/// Sends heartbeats and reads frames until a `presence_diff` whose leaves hold `key` arrives.
async fn await_leave(ws: &mut WsClient, topic: &str, key: &str, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leave of {key} within {patience:?}"
        );
        let hb = ws.send(None, "phoenix", "heartbeat", json!({})).await;
        loop {
            let m = ws.next().await.expect("socket open");
            if m.topic == topic
                && m.event == "presence_diff"
                && m.payload["leaves"].get(key).is_some()
            {
                return;
            }
            if m.msg_ref.as_deref() == Some(hb.as_str()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node killed with SIGKILL leaves its presence rows behind; another node removes them
/// (`realtime.presence_prune`) once the dead node's heartbeat is older than the stale timeout,
/// and its clients see the leaves.
#[tokio::test]
async fn a_killed_nodes_presence_is_removed_within_the_stale_timeout() {
    let db = TestDb::new().await;
    let stale = Duration::from_secs(2);
    let node_a = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(250);
        c.heartbeat_timeout = stale;
    })
    .await;
    let mut node_b = GatewayProcess::spawn(
        &db,
        "node-b-killed",
        &[("HEARTBEAT_INTERVAL", "250ms"), ("HEARTBEAT_TIMEOUT", "2s")],
    )
    .await;
    let topic = "realtime:survivors";
    let mut watcher = WsClient::anon(&node_a).await;
    watcher
        .join(
            topic,
            json!({"presence": {"key": "watcher", "enabled": true}}),
        )
        .await;
    watcher.expect_event(topic, "presence_state").await;
    let mut doomed = WsClient::connect(&node_b.ws_url(&token("anon", None))).await;
    doomed
        .join(topic, json!({"presence": {"key": "doomed"}}))
        .await;
    doomed
        .send(
            Some("1"),
            topic,
            "presence",
            json!({"event": "track", "payload": {"n": 1}}),
        )
        .await;
    let diff = watcher.expect_event(topic, "presence_diff").await;
    assert!(
        diff.payload["joins"].get("doomed").is_some(),
        "{}",
        diff.payload
    );
    // Still fresh for node B's reaper when B dies.
    doomed.send(None, "phoenix", "heartbeat", json!({})).await;
    doomed.expect_event("phoenix", "phx_reply").await;

    node_b.kill9();
    let killed_at = tokio::time::Instant::now();
    await_leave(&mut watcher, topic, "doomed", Duration::from_secs(15)).await;
    let took = killed_at.elapsed();
    assert!(
        took >= stale - Duration::from_millis(500),
        "removed after {took:?}: before the node was stale"
    );
    let mut conn = db.connect().await;
    let left: i64 = sqlx::query_scalar(
        "select count(*) from realtime.presences where node_id = 'node-b-killed'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(left, 0);
    // Someone joining now does not see the dead node's presence.
    let mut newcomer = WsClient::anon(&node_a).await;
    newcomer
        .join(
            topic,
            json!({"presence": {"key": "newcomer", "enabled": true}}),
        )
        .await;
    let state = newcomer.expect_event(topic, "presence_state").await;
    assert_eq!(state.payload, json!({}));
    node_a.stop().await.unwrap();
}

/// After its listener connection drops, a node reloads other nodes' presence from
/// `realtime.presences` and delivers the `realtime.send` messages it missed, without
/// delivering again what it had delivered. (It does so on the listener's gap signal and, should
/// that signal be lost, at its next periodic audit: one heartbeat interval here.)
#[tokio::test]
async fn a_node_catches_up_after_its_listener_reconnects() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.heartbeat_interval = Duration::from_secs(1)).await;
    let mut d = Driver::start(Client::Js, &gw, json!({})).await;
    subscribe(&mut d, "gap", "me").await;
    let mut conn = db.connect().await;
    sqlx::query("select realtime.send('{}', 'before', 'gap', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(next_broadcast(&mut d).await["event"], "before");

    // What a node misses while its listener is away: another node's presence change and a
    // database broadcast, written without their notifications.
    sqlx::query("insert into realtime.nodes (node_id) values ('ghost-node')")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "insert into realtime.presences (phx_ref, topic, key, meta, node_id) \
         values ('ghostref', 'gap', 'ghost', '{\"phx_ref\": \"ghostref\", \"name\": \"GHOST\"}', 'ghost-node')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "insert into realtime.messages (topic, extension, event, payload, private) \
         values ('gap', 'broadcast', 'missed', '{\"n\": 1}', false)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
         where application_name = $1 and datname = current_database()",
    )
    .bind(realtime_gateway::capture::listener::APPLICATION_NAME)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one listener connection per node");

    // The ghost's join and the missed message arrive in either order.
    let (mut joined, mut missed) = (false, false);
    while !(joined && missed) {
        let e = d
            .expect(|e| e["ev"] == "broadcast" || (e["ev"] == "presence" && e["kind"] == "join"))
            .await;
        if e["ev"] == "broadcast" {
            assert_eq!(e["payload"]["event"], "missed", "{e}");
            missed = true;
        } else {
            assert_eq!(e["key"], "ghost", "{e}");
            joined = true;
        }
    }
    assert_eq!(presence_keys(&mut d, "gap").await, ["ghost"]);
    rest_send(gw.addr, "gap", "marker", &json!({})).await;
    assert_eq!(
        next_broadcast(&mut d).await["event"],
        "marker",
        "`before` is not delivered again"
    );
    d.exit().await;
    gw.stop().await.unwrap();
}

/// A node whose rows were removed as if it were lost (its heartbeat lagged) writes them again
/// when it hears about it, and the other nodes get its presence back.
#[tokio::test]
async fn a_node_taken_for_lost_writes_its_presence_again() {
    let db = TestDb::new().await;
    let node_a = TestGateway::start(&db).await;
    let node_b = TestGateway::start(&db).await;
    let topic = "realtime:phoenix";
    let mut on_a = WsClient::anon(&node_a).await;
    on_a.join(topic, json!({"presence": {"key": "alive"}}))
        .await;
    on_a.send(
        Some("1"),
        topic,
        "presence",
        json!({"event": "track", "payload": {}}),
    )
    .await;
    on_a.expect_event(topic, "phx_reply").await;
    let mut on_b = WsClient::anon(&node_b).await;
    on_b.join(topic, json!({"presence": {"key": "b", "enabled": true}}))
        .await;
    let state = on_b.expect_event(topic, "presence_state").await;
    if state.payload.get("alive").is_none() {
        // Node A's track had not crossed the bus yet when B's member joined.
        let diff = on_b.expect_event(topic, "presence_diff").await;
        assert!(
            diff.payload["joins"].get("alive").is_some(),
            "{}",
            diff.payload
        );
    }

    let mut conn = db.connect().await;
    sqlx::query(
        "with gone as (delete from realtime.presences where node_id = $1 returning 1) \
         select pg_notify('realtime_bus', json_build_object('k', 'sync', 'node', $1::text)::text)",
    )
    .bind(&node_a.config.node_id)
    .execute(&mut conn)
    .await
    .unwrap();
    // The rows are back only if node A wrote them again.
    let pool = db.pool().await;
    let node = node_a.config.node_id.clone();
    common::eventually(
        Duration::from_secs(10),
        "node A's rows written again",
        || {
            let (pool, node) = (pool.clone(), node.clone());
            async move {
                sqlx::query_scalar::<_, i64>(
                    "select count(*) from realtime.presences where node_id = $1",
                )
                .bind(node)
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 1
            }
        },
    )
    .await;
    // A bus message sent now reaches node B after both syncs: by then B's members have seen
    // whatever leave and join the syncs caused, and must end with `alive` present.
    sqlx::query("select realtime.send('{}', 'marker', 'phoenix', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut present = true;
    loop {
        let m = on_b.next().await.unwrap();
        match m.event.as_str() {
            "presence_diff" => {
                if m.payload["leaves"].get("alive").is_some() {
                    present = false;
                }
                if m.payload["joins"].get("alive").is_some() {
                    present = true;
                }
            }
            "broadcast" => break,
            _ => {}
        }
    }
    assert!(present, "node B's members lost node A's presence");
    node_a.stop().await.unwrap();
    node_b.stop().await.unwrap();
}
