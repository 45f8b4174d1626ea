//! Presence end to end: real clients tracking, seeing each other join and leave, and
//! `presenceState()` agreeing with who is really there after leaves, killed clients and reaped
//! sessions; plus raw-socket checks of the Phoenix frames and the durable rows.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, Driver, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

async fn subscribe_presence(d: &mut Driver, channel: &str, key: &str) {
    d.send(json!({"cmd": "subscribe", "id": key, "channel": channel,
                  "presence": {"key": key}, "listen_presence": true}))
        .await;
    let status = d.expect(|e| e["ev"] == "status").await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
}

async fn track(d: &mut Driver, channel: &str, payload: Value) {
    d.send(json!({"cmd": "track", "channel": channel, "payload": payload}))
        .await;
    let tracked = d.expect(|e| e["ev"] == "tracked").await;
    assert_eq!(tracked["result"], "ok", "{tracked}");
}

/// Waits until the driver reported a presence `kind` (join/leave) for every key of `keys`.
async fn saw(d: &mut Driver, kind: &str, keys: &[&str]) {
    let mut missing: BTreeSet<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    // Events already seen count too.
    for e in &d.log {
        if e["ev"] == "presence" && e["kind"] == kind {
            if let Some(k) = e["key"].as_str() {
                missing.remove(k);
            }
        }
    }
    while !missing.is_empty() {
        let e = d
            .expect(|e| e["ev"] == "presence" && e["kind"] == kind)
            .await;
        missing.remove(e["key"].as_str().unwrap_or_default());
    }
}

/// `presenceState()`: key -> the `name` of each presence, checking each has a `presence_ref`.
async fn presence_state(d: &mut Driver, channel: &str) -> Vec<(String, Vec<Value>)> {
    d.send(json!({"cmd": "presence_state", "channel": channel}))
        .await;
    let e = d.expect(|e| e["ev"] == "presence_state").await;
    let mut out: Vec<(String, Vec<Value>)> = e["state"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, metas)| {
            let metas = metas.as_array().unwrap();
            for m in metas {
                assert!(m["presence_ref"].is_string(), "{m}");
                assert!(m.get("phx_ref").is_none() && m.get("phx_ref_prev").is_none());
            }
            (k.clone(), metas.iter().map(|m| m["name"].clone()).collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn names(keys: &[&str]) -> Vec<(String, Vec<Value>)> {
    keys.iter()
        .map(|k| ((*k).to_owned(), vec![json!(k.to_uppercase())]))
        .collect()
}

/// Three realtime-js clients track; each sees the other two join, and after one leaves the
/// other two see the leave and agree on who is left.
#[tokio::test]
async fn three_realtime_js_clients_see_each_other_join_and_leave() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut clients = Vec::new();
    for key in ["a", "b", "c"] {
        let mut d = Driver::start(Client::Js, &gw, json!({})).await;
        subscribe_presence(&mut d, "lobby", key).await;
        track(&mut d, "lobby", json!({"name": key.to_uppercase()})).await;
        clients.push(d);
    }
    for d in &mut clients {
        saw(d, "join", &["a", "b", "c"]).await;
        assert_eq!(presence_state(d, "lobby").await, names(&["a", "b", "c"]));
    }
    let mut c = clients.pop().unwrap();
    c.send(json!({"cmd": "unsubscribe", "channel": "lobby"}))
        .await;
    c.expect(|e| e["ev"] == "unsubscribed").await;
    for d in &mut clients {
        saw(d, "leave", &["c"]).await;
        assert_eq!(presence_state(d, "lobby").await, names(&["a", "b"]));
    }
    // Untrack is a leave too, and a new track a join.
    let b = &mut clients[1];
    b.send(json!({"cmd": "untrack", "channel": "lobby"})).await;
    assert_eq!(b.expect(|e| e["ev"] == "untracked").await["result"], "ok");
    saw(&mut clients[0], "leave", &["b"]).await;
    assert_eq!(
        presence_state(&mut clients[0], "lobby").await,
        names(&["a"])
    );
    for d in clients {
        d.exit().await;
    }
    c.exit().await;
    gw.stop().await.unwrap();
}

/// A client killed without leaving (its process dies, its socket drops) leaves everyone's
/// `presenceState()`, and its durable row goes.
#[tokio::test]
async fn presence_state_is_right_after_a_client_is_killed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut a = Driver::start(Client::Js, &gw, json!({})).await;
    let mut b = Driver::start(Client::Js, &gw, json!({})).await;
    let mut c = Driver::start(Client::Js, &gw, json!({})).await;
    for (d, key) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        subscribe_presence(d, "killroom", key).await;
        track(d, "killroom", json!({"name": key.to_uppercase()})).await;
    }
    saw(&mut a, "join", &["a", "b", "c"]).await;
    saw(&mut b, "join", &["a", "b", "c"]).await;
    let pool = db.pool().await;
    let rows = |n: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from realtime.presences where topic = 'killroom'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == n
        }
    };
    // Rows are written by the bus publisher, just after the replies.
    common::eventually(Duration::from_secs(10), "one row per client", || rows(3)).await;
    drop(c); // kill_on_drop: SIGKILL, no leave, no close frame
    for d in [&mut a, &mut b] {
        saw(d, "leave", &["c"]).await;
        assert_eq!(presence_state(d, "killroom").await, names(&["a", "b"]));
    }
    common::eventually(
        Duration::from_secs(10),
        "the killed client's row removed",
        || rows(2),
    )
    .await;
    a.exit().await;
    b.exit().await;
    gw.stop().await.unwrap();
}

/// supabase-py (vsn 1) and realtime-js see each other's presence.
#[tokio::test]
async fn realtime_py_and_realtime_js_share_presence() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    let mut py = Driver::start(Client::Py, &gw, json!({})).await;
    subscribe_presence(&mut js, "mixed", "js").await;
    subscribe_presence(&mut py, "mixed", "py").await;
    track(&mut js, "mixed", json!({"name": "JS"})).await;
    track(&mut py, "mixed", json!({"name": "PY"})).await;
    saw(&mut js, "join", &["js", "py"]).await;
    saw(&mut py, "join", &["js", "py"]).await;
    assert_eq!(presence_state(&mut js, "mixed").await, names(&["js", "py"]));
    assert_eq!(presence_state(&mut py, "mixed").await, names(&["js", "py"]));
    js.send(json!({"cmd": "untrack", "channel": "mixed"})).await;
    saw(&mut py, "leave", &["js"]).await;
    assert_eq!(presence_state(&mut py, "mixed").await, names(&["py"]));
    js.exit().await;
    py.exit().await;
    gw.stop().await.unwrap();
}

/// Reads frames until a `presence_diff` on `topic` for which `pred` holds arrives.
async fn diff_where(ws: &mut WsClient, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let diff = ws.expect_event(topic, "presence_diff").await.payload;
        if pred(&diff) {
            return diff;
        }
    }
}

/// Guards the Phoenix presence frames of docs/protocol.md 9: `presence_state` after the join reply
/// with the membership's join_ref, diffs with null refs to every member, `phx_ref_prev` on
/// update, no diff for an identical track, error replies for bad pushes, presence enabled by a
/// first track, and one durable row per entry.
#[tokio::test]
async fn presence_frames_have_the_phoenix_shapes() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let topic = "realtime:frames";
    let mut a = WsClient::anon(&gw).await;
    let reply = a
        .join(
            topic,
            json!({"presence": {"key": "alice", "enabled": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let state = a.next().await.unwrap();
    assert_eq!(
        (
            state.event.as_str(),
            state.join_ref.as_deref(),
            state.msg_ref.as_deref()
        ),
        ("presence_state", Some("1"), None)
    );
    assert_eq!(state.payload, json!({}));

    let r = a
        .send(
            Some("1"),
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"user": "alice"}}),
        )
        .await;
    let diff = a.next().await.unwrap();
    assert_eq!(
        (
            diff.event.as_str(),
            diff.join_ref.as_deref(),
            diff.msg_ref.as_deref()
        ),
        ("presence_diff", None, None)
    );
    let metas = &diff.payload["joins"]["alice"]["metas"];
    let first_ref = metas[0]["phx_ref"].as_str().unwrap().to_owned();
    assert_eq!(metas[0]["user"], "alice");
    assert_eq!(diff.payload["leaves"], json!({}));
    let reply = a.expect_event(topic, "phx_reply").await;
    assert_eq!(
        (reply.msg_ref.as_deref(), reply.join_ref.as_deref()),
        (Some(r.as_str()), Some("1"))
    );
    assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));

    // A second member, without presence enabled: no state, but diffs; its first track
    // enables presence and brings the state.
    let mut b = WsClient::anon(&gw).await;
    b.join(topic, json!({"presence": {"key": "bob"}})).await;
    a.send(
        Some("1"),
        topic,
        "presence",
        json!({"event": "TRACK", "payload": {"user": "alice"}}),
    )
    .await;
    let hb = a.send(None, "phoenix", "heartbeat", json!({})).await;
    let next = a.next().await.unwrap();
    assert_eq!(next.event, "phx_reply", "identical track: reply only");
    let next = a.next().await.unwrap();
    assert_eq!(
        next.msg_ref.as_deref(),
        Some(hb.as_str()),
        "no diff for an identical track"
    );

    a.send(
        Some("1"),
        topic,
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"user": "alice", "away": true}}),
    )
    .await;
    let update = diff_where(&mut b, topic, |_| true).await;
    assert_eq!(
        update["leaves"]["alice"]["metas"][0]["phx_ref"],
        first_ref.as_str()
    );
    let joined = &update["joins"]["alice"]["metas"][0];
    assert_eq!(joined["phx_ref_prev"], first_ref.as_str());
    assert_eq!(joined["away"], true);

    b.send(
        Some("1"),
        topic,
        "presence",
        json!({"type": "presence", "event": "track", "payload": {"user": "bob"}}),
    )
    .await;
    let reply = b.expect_event(topic, "phx_reply").await;
    assert_eq!(reply.payload["status"], "ok");
    let state = b.expect_event(topic, "presence_state").await;
    assert_eq!(state.join_ref.as_deref(), Some("1"));
    let mut keys: Vec<&String> = state.payload.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["alice", "bob"]);

    // The rows are written by the bus publisher, just after.
    let pool = db.pool().await;
    common::eventually(Duration::from_secs(10), "one row per entry", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, Value)> = sqlx::query_as(
                "select key, meta from realtime.presences where topic = 'frames' order by key",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.len() == 2 && rows[0].1["away"] == true && rows[1].0 == "bob"
        }
    })
    .await;

    for (payload, reason) in [
        (
            json!({"event": "track", "payload": "nope"}),
            "Presence track payload must be a map",
        ),
        (json!({"event": "wave"}), "unknown presence event"),
    ] {
        let r = b.send(Some("1"), topic, "presence", payload).await;
        let reply = b.expect_event(topic, "phx_reply").await;
        assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()));
        assert_eq!(
            reply.payload,
            json!({"status": "error", "response": {"reason": reason}})
        );
    }

    b.send(
        Some("1"),
        topic,
        "presence",
        json!({"type": "presence", "event": "untrack"}),
    )
    .await;
    let leave = diff_where(&mut a, topic, |d| d["leaves"].get("bob").is_some()).await;
    assert_eq!(leave["joins"], json!({}));
    assert_eq!(leave["leaves"]["bob"]["metas"][0]["user"], "bob");
    // Leaving the channel removes the rest.
    a.send(Some("1"), topic, "phx_leave", json!({})).await;
    a.expect_event(topic, "phx_close").await;
    common::eventually(Duration::from_secs(10), "rows removed", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from realtime.presences")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 0
        }
    })
    .await;
    // Nothing of the channel stays in the hub once its members are gone.
    drop(a);
    drop(b);
    let hub = gw.state.session.hub.clone();
    common::eventually(Duration::from_secs(10), "hub empty", || {
        let hub = hub.clone();
        async move { hub.topic_count() == 0 }
    })
    .await;
    gw.stop().await.unwrap();
}

/// A session the reaper closes (no heartbeat within the stale timeout) leaves presence like a
/// client that left.
#[tokio::test]
async fn a_reaped_sessions_presence_leaves() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.heartbeat_timeout = Duration::from_millis(1500);
    })
    .await;
    let topic = "realtime:reaped";
    let mut silent = WsClient::anon(&gw).await;
    silent
        .join(topic, json!({"presence": {"key": "silent"}}))
        .await;
    silent
        .send(
            Some("1"),
            topic,
            "presence",
            json!({"event": "track", "payload": {}}),
        )
        .await;
    silent.expect_event(topic, "phx_reply").await;

    let mut watcher = WsClient::anon(&gw).await;
    watcher
        .join(
            topic,
            json!({"presence": {"key": "watcher", "enabled": true}}),
        )
        .await;
    let state = watcher.expect_event(topic, "presence_state").await;
    assert!(state.payload.get("silent").is_some(), "{}", state.payload);
    // The watcher keeps heartbeating; the silent one is reaped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    'wait: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leave diff for the reaped session"
        );
        let hb = watcher.send(None, "phoenix", "heartbeat", json!({})).await;
        loop {
            let m = watcher.next().await.unwrap();
            if m.event == "presence_diff" && m.payload["leaves"].get("silent").is_some() {
                break 'wait;
            }
            if m.msg_ref.as_deref() == Some(hb.as_str()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(silent.closed_with(Duration::from_secs(5)).await, Some(4000));
    gw.stop().await.unwrap();
}
