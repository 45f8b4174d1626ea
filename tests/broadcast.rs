//! Broadcast end to end: the real clients (`@supabase/realtime-js` 2.119.0 with its binary kind-3
//! pushes, supabase-py's `realtime` 2.34.1 on vsn 1) relaying to each other with `self` and
//! `ack`, the REST endpoints, and `realtime.send` from SQL (after commit only); plus raw-socket
//! checks of the frames themselves.

mod common;

use std::time::Duration;

use common::{http_request, token, Client, Driver, TestDb, TestGateway, WsClient};
use futures_util::{SinkExt, StreamExt};
use realtime_gateway::protocol;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio_tungstenite::tungstenite::Message;

/// Subscribes `channel` listening to every broadcast event; waits for SUBSCRIBED.
async fn subscribe(d: &mut Driver, channel: &str, extra: Value) {
    let mut cmd = json!({"cmd": "subscribe", "id": channel, "channel": channel,
                         "listen_broadcast": ["*"]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        cmd[k] = v.clone();
    }
    d.send(cmd).await;
    let status = d
        .expect(|e| e["ev"] == "status" && e["channel"] == channel)
        .await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
}

/// The next broadcast a driver's callback got.
async fn next_broadcast(d: &mut Driver) -> Value {
    d.expect(|e| e["ev"] == "broadcast").await["payload"].clone()
}

async fn send(d: &mut Driver, channel: &str, event: &str, payload: Value) -> Value {
    d.send(json!({"cmd": "send", "channel": channel, "event": event, "payload": payload}))
        .await;
    d.expect(|e| e["ev"] == "sent").await
}

/// `self: false` is not echoed to the sender, `self: true` is; the other member gets both.
/// realtime-js on vsn 2 sends these as binary kind-3 frames.
#[tokio::test]
async fn realtime_js_self_false_is_not_echoed_and_self_true_is() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut a = Driver::start(Client::Js, &gw, json!({})).await;
    let mut b = Driver::start(Client::Js, &gw, json!({})).await;
    subscribe(&mut a, "room", json!({"broadcast": {"self": false}})).await;
    subscribe(&mut b, "room", json!({"broadcast": {"self": true}})).await;

    let sent = send(&mut a, "room", "from_a", json!({"n": 1, "text": "é"})).await;
    assert_eq!(sent["result"], "ok");
    let got = next_broadcast(&mut b).await;
    assert_eq!(
        got,
        json!({"type": "broadcast", "event": "from_a", "payload": {"n": 1, "text": "é"}})
    );

    send(&mut b, "room", "from_b", json!({"n": 2})).await;
    let echoed = next_broadcast(&mut b).await;
    assert_eq!(echoed["event"], "from_b", "self: true echoes");
    // Had a's own message been echoed, it would have been queued before b's.
    let first_at_a = next_broadcast(&mut a).await;
    assert_eq!(first_at_a["event"], "from_b", "self: false must not echo");
    assert_eq!(first_at_a["payload"], json!({"n": 2}));
    a.exit().await;
    b.exit().await;
    gw.stop().await.unwrap();
}

/// With `ack: true` realtime-js's `send()` resolves only on the server's reply: `ok`, and
/// `error` for a payload over `--max-message-bytes` (which nobody receives). Raw-binary
/// payloads reach a vsn 2 client as an `ArrayBuffer`.
#[tokio::test]
async fn realtime_js_ack_resolves_the_send_and_refuses_oversized_payloads() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.max_message_bytes = 2048).await;
    let mut a = Driver::start(Client::Js, &gw, json!({})).await;
    let mut b = Driver::start(Client::Js, &gw, json!({})).await;
    subscribe(&mut a, "acked", json!({"broadcast": {"ack": true}})).await;
    subscribe(&mut b, "acked", json!({})).await;

    let sent = send(&mut a, "acked", "small", json!({"x": 1})).await;
    assert_eq!(sent["result"], "ok", "{sent}");
    assert_eq!(next_broadcast(&mut b).await["event"], "small");

    let sent = send(&mut a, "acked", "big", json!({"x": "y".repeat(3000)})).await;
    assert_eq!(sent["result"], "error", "{sent}");

    a.send(json!({"cmd": "send", "channel": "acked", "event": "bytes",
                  "payload_base64": "AAEC/w=="}))
        .await;
    let sent = a.expect(|e| e["ev"] == "sent").await;
    assert_eq!(sent["result"], "ok", "{sent}");
    let got = next_broadcast(&mut b).await;
    assert_eq!(
        got["event"], "bytes",
        "the oversized message was never relayed"
    );
    assert_eq!(got["payload"], json!({"$binary_base64": "AAEC/w=="}));
    a.exit().await;
    b.exit().await;
    gw.stop().await.unwrap();
}

/// supabase-py (vsn 1 JSON objects, ack awaited) and realtime-js (vsn 2 binary pushes) broadcast
/// to each other on one channel.
#[tokio::test]
async fn realtime_py_and_realtime_js_broadcast_to_each_other() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    let mut py = Driver::start(Client::Py, &gw, json!({})).await;
    subscribe(&mut js, "mixed", json!({})).await;
    subscribe(
        &mut py,
        "mixed",
        json!({"broadcast": {"ack": true, "self": false}}),
    )
    .await;

    send(&mut js, "mixed", "hello_py", json!({"from": "js"})).await;
    let got = next_broadcast(&mut py).await;
    assert_eq!(got["event"], "hello_py", "{got}");
    assert_eq!(got["payload"], json!({"from": "js"}));

    let sent = send(&mut py, "mixed", "hello_js", json!({"from": "py"})).await;
    assert_eq!(sent["result"], "ok", "{sent}");
    let got = next_broadcast(&mut js).await;
    assert_eq!(
        got,
        json!({"type": "broadcast", "event": "hello_js", "payload": {"from": "py"}})
    );
    js.exit().await;
    py.exit().await;
    gw.stop().await.unwrap();
}

/// realtime-js `httpSend()` (`POST …/api/broadcast/<topic>/events/<event>`) and the batch
/// endpoint its `send()` falls back to reach subscribed clients; bad tokens get 401
/// `{"message":"Unauthorized"}`, bad bodies 422, oversized payloads 413.
#[tokio::test]
async fn rest_endpoints_reach_subscribed_clients() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.max_message_bytes = 2048).await;
    let mut a = Driver::start(Client::Js, &gw, json!({})).await;
    subscribe(&mut a, "rest room", json!({})).await;

    a.send(
        json!({"cmd": "http_send", "channel": "rest room", "event": "via_http",
                  "payload": {"n": 1}}),
    )
    .await;
    let sent = a.expect(|e| e["ev"] == "http_sent").await;
    assert_eq!(sent["ok"], true, "{sent}");
    let got = next_broadcast(&mut a).await;
    assert_eq!(
        got,
        json!({"type": "broadcast", "event": "via_http", "payload": {"n": 1}})
    );

    // The body realtime-js's send() posts when the channel is not joined, with the socket's
    // query string left on the URL.
    let key = token("anon", None);
    let body = json!({"messages": [
        {"topic": "rest room", "event": "batched", "payload": {"n": 2}, "private": false},
        {"topic": "rest room", "event": "with_id", "payload": {"n": 3}, "id": "m-1"},
    ]})
    .to_string();
    let path = format!("/realtime/v1/api/broadcast?apikey={key}&vsn=2.0.0");
    let (status, _) = http_request(
        gw.addr,
        "POST",
        &path,
        &[("apikey", &key), ("content-type", "application/json")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    assert_eq!(next_broadcast(&mut a).await["event"], "batched");
    let with_id = next_broadcast(&mut a).await;
    assert_eq!(with_id["event"], "with_id");
    assert_eq!(with_id["meta"], json!({"id": "m-1"}));

    let bearer = format!("Bearer {key}");
    let auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, _) = http_request(gw.addr, "POST", "/api/broadcast", &auth, &body)
        .await
        .unwrap();
    assert_eq!(status, 202, "root path with a bearer token");
    assert_eq!(next_broadcast(&mut a).await["event"], "batched");
    assert_eq!(next_broadcast(&mut a).await["event"], "with_id");

    for headers in [
        vec![("apikey", "not-a-jwt")],
        vec![("authorization", "Bearer not-a-jwt")],
        vec![],
    ] {
        let (status, text) = http_request(gw.addr, "POST", "/api/broadcast", &headers, &body)
            .await
            .unwrap();
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"message": "Unauthorized"})
        );
    }
    let (status, text) = http_request(
        gw.addr,
        "POST",
        "/api/broadcast",
        &auth,
        r#"{"messages":[{"event":"e"}]}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 422, "{text}");
    let big = json!({"messages": [{"topic": "rest room", "event": "e",
                                   "payload": {"x": "y".repeat(3000)}}]})
    .to_string();
    let (status, _) = http_request(gw.addr, "POST", "/api/broadcast", &auth, &big)
        .await
        .unwrap();
    assert_eq!(status, 413);
    let (status, _) = http_request(
        gw.addr,
        "POST",
        "/realtime/v1/api/broadcast/rest%20room/events/raw",
        &[("apikey", &key), ("content-type", "application/json")],
        "{\"last\":true}",
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    let last = next_broadcast(&mut a).await;
    assert_eq!(last["event"], "raw", "nothing refused was delivered");
    assert_eq!(last["payload"], json!({"last": true}));
    a.exit().await;
    gw.stop().await.unwrap();
}

/// `realtime.send` called by a trigger reaches realtime-js only once the writing transaction
/// commits, with `meta.id`; a rolled-back transaction's message never arrives; the default
/// `private => true` reaches no public channel; a payload too large for a notification still
/// arrives; and a bad call never fails the caller's transaction.
#[tokio::test]
async fn sql_send_from_a_trigger_arrives_after_commit_and_never_on_rollback() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut conn = db.connect().await;
    for sql in [
        "create table public.items (id bigint generated always as identity primary key, title text)",
        "create function public.items_broadcast() returns trigger language plpgsql as $$ \
         begin perform realtime.send(jsonb_build_object('title', new.title), 'item', 'sql room', false); \
         return new; end $$",
        "create trigger items_broadcast after insert on public.items \
         for each row execute function public.items_broadcast()",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let mut a = Driver::start(Client::Js, &gw, json!({})).await;
    subscribe(&mut a, "sql room", json!({})).await;
    // Markers go through the database too: a message the bus had wrongly delivered would
    // arrive before a marker committed after it.
    let marker = |n: u32| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query("select realtime.send('{}', $1, 'sql room', false)")
                .bind(format!("marker{n}"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    };

    let mut rolled_back = db.connect().await;
    sqlx::query("begin")
        .execute(&mut rolled_back)
        .await
        .unwrap();
    sqlx::query("insert into public.items (title) values ('rolled back')")
        .execute(&mut rolled_back)
        .await
        .unwrap();
    sqlx::query("rollback")
        .execute(&mut rolled_back)
        .await
        .unwrap();

    let mut open = db.connect().await;
    sqlx::query("begin").execute(&mut open).await.unwrap();
    sqlx::query("insert into public.items (title) values ('committed')")
        .execute(&mut open)
        .await
        .unwrap();
    marker(1).await;
    // Neither the rolled-back message nor the uncommitted one came before the marker.
    assert_eq!(next_broadcast(&mut a).await["event"], "marker1");
    sqlx::query("commit").execute(&mut open).await.unwrap();
    let item = next_broadcast(&mut a).await;
    assert_eq!(item["event"], "item", "{item}");
    assert_eq!(item["payload"]["title"], "committed");
    let id = item["meta"]["id"].as_str().expect("meta.id").to_owned();
    assert_eq!(
        item["payload"]["id"],
        id.as_str(),
        "payload.id added as upstream"
    );
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from realtime.messages where id = $1::uuid and extension = 'broadcast'",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // private defaults to true: no public channel hears it.
    sqlx::query("select realtime.send('{\"x\": 1}', 'private_one', 'sql room')")
        .execute(&mut conn)
        .await
        .unwrap();
    marker(2).await;
    assert_eq!(next_broadcast(&mut a).await["event"], "marker2");

    // Over the notification size: the gateway reads the row.
    sqlx::query(
        "select realtime.send(jsonb_build_object('big', repeat('x', 20000)), 'big', 'sql room', false)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let big = next_broadcast(&mut a).await;
    assert_eq!(big["event"], "big");
    assert_eq!(big["payload"]["big"].as_str().unwrap().len(), 20000);

    // Bad calls warn and the caller's transaction goes on.
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query("select realtime.send('{}', null, 'sql room', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("select realtime.send('[1, 2]', 'list', 'sql room', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("commit").execute(&mut conn).await.unwrap();
    let list = next_broadcast(&mut a).await;
    assert_eq!(list["event"], "list");
    assert_eq!(list["payload"], json!([1, 2]));
    a.exit().await;
    gw.stop().await.unwrap();
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text or binary frame.
async fn frame(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame");
        if matches!(m, Message::Text(_) | Message::Binary(_)) {
            return m;
        }
    }
}

fn text(m: &Message) -> Value {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn joined(gw: &TestGateway, vsn: &str, topic: &str, config: Value) -> Ws {
    let url = gw.ws_url(&token("anon", None), vsn);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let join = match vsn {
        "1.0.0" => json!({"topic": topic, "event": "phx_join", "payload": {"config": config},
                          "ref": "1", "join_ref": "1"}),
        _ => json!(["1", "1", topic, "phx_join", {"config": config}]),
    };
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let reply = text(&frame(&mut ws).await);
    let status = if vsn == "1.0.0" {
        &reply["payload"]["status"]
    } else {
        &reply[4]["status"]
    };
    assert_eq!(status, "ok", "{reply}");
    ws
}

/// Guards docs/protocol.md 2.3: a kind-3 push with a JSON payload goes out as JSON text (array on
/// vsn 2, object with `ref: null` on vsn 1); a raw-binary payload goes out as kind 4 to vsn 2
/// and never to vsn 1; acks echo the binary push's refs.
#[tokio::test]
async fn binary_pushes_are_relayed_in_each_sockets_framing() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let topic = "realtime:frames";
    let mut sender = joined(&gw, "2.0.0", topic, json!({"broadcast": {"ack": true}})).await;
    let mut v2 = joined(&gw, "2.0.0", topic, json!({})).await;
    let mut v1 = joined(&gw, "1.0.0", topic, json!({})).await;

    let push =
        protocol::encode_binary_push("1", "7", topic, "ev", None, br#"{"a":"\u00e9"}"#, true)
            .unwrap();
    sender.send(Message::Binary(push)).await.unwrap();
    let ack = text(&frame(&mut sender).await);
    assert_eq!(
        ack,
        json!(["1", "7", topic, "phx_reply", {"status": "ok", "response": {}}])
    );
    let got = text(&frame(&mut v2).await);
    assert_eq!(
        got,
        json!([null, null, topic, "broadcast",
               {"type": "broadcast", "event": "ev", "payload": {"a": "é"}}])
    );
    let got = text(&frame(&mut v1).await);
    assert_eq!(
        got,
        json!({"topic": topic, "event": "broadcast", "ref": null,
               "payload": {"type": "broadcast", "event": "ev", "payload": {"a": "é"}}})
    );

    let raw =
        protocol::encode_binary_push("1", "8", topic, "raw", None, &[0, 1, 255], false).unwrap();
    sender.send(Message::Binary(raw)).await.unwrap();
    let ack = text(&frame(&mut sender).await);
    assert_eq!(ack[1], "8");
    let Message::Binary(kind4) = frame(&mut v2).await else {
        panic!("raw bytes go to vsn 2 as a binary frame");
    };
    let decoded = protocol::decode_server_binary(&kind4).unwrap();
    assert_eq!(decoded.topic, topic);
    let protocol::InboundPayload::Binary(b) = decoded.payload else {
        panic!("raw payload expected");
    };
    assert_eq!(
        (b.event.as_str(), &b.payload[..]),
        ("raw", &[0u8, 1, 255][..])
    );

    // vsn 1 never gets the raw one: the next thing it sees is this JSON broadcast.
    let marker = json!(["1", "9", topic, "broadcast",
                        {"type": "broadcast", "event": "after", "payload": {}}]);
    sender
        .send(Message::Text(marker.to_string().into()))
        .await
        .unwrap();
    let got = text(&frame(&mut v1).await);
    assert_eq!(got["payload"]["event"], "after");
    gw.stop().await.unwrap();
}

/// Without `ack` no reply is sent, not even for an oversized message; with it an oversized
/// message gets `payload_size_exceeded`. A broadcast on a topic not joined is unmatched.
#[tokio::test]
async fn acks_only_when_asked_and_oversized_messages_are_errors() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.max_message_bytes = 1024).await;
    let mut quiet = WsClient::anon(&gw).await;
    let topic = "realtime:limits";
    quiet.join(topic, json!({})).await;
    let big = json!({"type": "broadcast", "event": "e", "payload": {"x": "y".repeat(2000)}});
    quiet.send(Some("1"), topic, "broadcast", big.clone()).await;
    quiet
        .send(
            Some("1"),
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": "e"}),
        )
        .await;
    let hb = quiet.send(None, "phoenix", "heartbeat", json!({})).await;
    let next = quiet.next().await.unwrap();
    assert_eq!(
        (next.topic.as_str(), next.msg_ref.as_deref()),
        ("phoenix", Some(hb.as_str())),
        "no reply without ack"
    );

    let mut acked = WsClient::anon(&gw).await;
    acked
        .join(topic, json!({"broadcast": {"ack": "true"}}))
        .await;
    let r = acked.send(Some("1"), topic, "broadcast", big).await;
    let reply = acked.expect_event(topic, "phx_reply").await;
    assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()));
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason": "payload_size_exceeded"}})
    );

    let r = acked
        .send(
            None,
            "realtime:elsewhere",
            "broadcast",
            json!({"event": "e"}),
        )
        .await;
    let reply = acked.expect_event("realtime:elsewhere", "phx_reply").await;
    assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()));
    assert_eq!(reply.payload["response"]["reason"], "unmatched topic");
    gw.stop().await.unwrap();
}
