//! Private channels (README "Private channels", docs/protocol.md 7.5): joins, broadcasts,
//! presence, REST and `realtime.send` authorized by row-level-security policies on
//! `realtime.messages`, against the real PostgreSQL the harness starts.

mod common;

use std::time::Duration;

use common::{eventually, http_request, token, Client, Driver, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

const TOPIC: &str = "room-x";
const CHANNEL: &str = "realtime:room-x";

/// User A may read and write `room-x`; user C may only read it; nobody else has a policy.
async fn policies(db: &TestDb, a: &str, c: &str) {
    let mut conn = db.connect().await;
    for sql in [
        format!(
            "create policy \"a and c read\" on realtime.messages for select to authenticated \
             using (realtime.topic() = '{TOPIC}' and auth.uid() in ('{a}', '{c}') \
                    and realtime.messages.extension in ('broadcast', 'presence'))"
        ),
        format!(
            "create policy \"a writes\" on realtime.messages for insert to authenticated \
             with check (realtime.topic() = '{TOPIC}' and auth.jwt()->>'sub' = '{a}' \
                         and realtime.messages.extension in ('broadcast', 'presence'))"
        ),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
}

fn user_token(sub: &str) -> String {
    token("authenticated", Some(sub))
}

async fn socket(gw: &TestGateway, key: &str) -> WsClient {
    WsClient::connect(&gw.ws_url(key, "2.0.0")).await
}

/// The next `broadcast` frame on `topic`, skipping replies and presence.
async fn next_broadcast(ws: &mut WsClient, topic: &str) -> Value {
    ws.expect_event(topic, "broadcast").await.payload
}

async fn rest(gw: &TestGateway, key: &str, private: bool, event: &str) -> (u16, String) {
    let body = json!({"messages": [{"topic": TOPIC, "event": event, "payload": {"n": 1},
                                     "private": private}]});
    let auth = format!("Bearer {key}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    http_request(
        gw.addr,
        "POST",
        "/api/broadcast",
        &headers,
        &body.to_string(),
    )
    .await
    .unwrap()
}

async fn sql_send(db: &TestDb, event: &str, private: bool) {
    let mut conn = db.connect().await;
    sqlx::query("select realtime.send('{}', $1, $2, $3)")
        .bind(event)
        .bind(TOPIC)
        .bind(private)
        .execute(&mut conn)
        .await
        .unwrap();
}

fn reason(reply: &Value) -> &str {
    reply["response"]["reason"].as_str().unwrap_or_default()
}

/// A user without the policy cannot join, read, send to or see the presence of a private
/// channel; the public channel of the same name hears none of it; a new token without rights
/// ends the channel, one without the write right restricts it.
#[tokio::test]
async fn a_user_without_the_policy_cannot_join_read_send_or_see_presence() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let (ua, ub, uc) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    policies(&db, &ua, &uc).await;
    let service = token("service_role", None);

    // A joins privately, with presence; the service role too (it passes every policy).
    let mut a = socket(&gw, &user_token(&ua)).await;
    let reply = a
        .join(
            CHANNEL,
            json!({"private": true, "presence": {"enabled": true, "key": "a"},
                   "broadcast": {"ack": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    a.expect_event(CHANNEL, "presence_state").await;
    let mut s = socket(&gw, &service).await;
    let reply = s
        .join(
            CHANNEL,
            json!({"private": true, "presence": {"enabled": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");

    // B (no policy), anon, and tokens naming a superuser role (which would pass every policy
    // if the gateway acted as it) are refused at join.
    for key in [
        user_token(&ub),
        token("anon", None),
        token("postgres", Some(&ua)),
    ] {
        let mut b = socket(&gw, &key).await;
        let reply = b.join(CHANNEL, json!({"private": true})).await;
        assert_eq!(reply["status"], "error", "{reply}");
        assert_eq!(
            reason(&reply),
            "Unauthorized: You do not have permissions to read from this Channel topic: room-x"
        );
    }

    // The public channel of the same name.
    let mut public = WsClient::anon(&gw).await;
    let reply = public
        .join(CHANNEL, json!({"presence": {"enabled": true}}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    public.expect_event(CHANNEL, "presence_state").await;

    // A tracks; the private members see it.
    let r = a
        .send(
            Some("1"),
            CHANNEL,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"name": "A"}}),
        )
        .await;
    let reply = a.expect_event(CHANNEL, "phx_reply").await;
    assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()));
    assert_eq!(reply.payload["status"], "ok", "{:?}", reply.payload);
    let diff = s.expect_event(CHANNEL, "presence_diff").await;
    assert!(diff.payload["joins"]["a"].is_object(), "{:?}", diff.payload);

    // A sends (ack); the service member receives it.
    a.send(
        Some("1"),
        CHANNEL,
        "broadcast",
        json!({"type": "broadcast", "event": "from_a", "payload": {}}),
    )
    .await;
    let reply = a.expect_event(CHANNEL, "phx_reply").await;
    assert_eq!(reply.payload["status"], "ok", "{:?}", reply.payload);
    assert_eq!(next_broadcast(&mut s, CHANNEL).await["event"], "from_a");

    // REST: anon may not post to the private topic; the service role may.
    let (status, body) = rest(&gw, &token("anon", None), true, "anon_private").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("You do not have permissions to write to this Channel topic: room-x"),
        "{body}"
    );
    let (status, body) = rest(&gw, &service, true, "rest_private").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        next_broadcast(&mut a, CHANNEL).await["event"],
        "rest_private"
    );

    // SQL: private => true reaches the private members only.
    sql_send(&db, "sql_private", true).await;
    assert_eq!(
        next_broadcast(&mut a, CHANNEL).await["event"],
        "sql_private"
    );
    sql_send(&db, "sql_public", false).await;
    // The public member's first frame is the public marker: no presence diff, no private
    // message came before it.
    let first = public.next().await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.payload["event"].as_str()),
        ("broadcast", Some("sql_public")),
        "{first:?}"
    );
    // And the private member never got the public one: its next broadcast is a later marker.
    let (status, _) = rest(&gw, &service, true, "private_marker").await;
    assert_eq!(status, 202);
    assert_eq!(
        next_broadcast(&mut a, CHANNEL).await["event"],
        "private_marker"
    );

    // C may read but not write: its join succeeds, its sends and tracks are refused.
    let mut c = socket(&gw, &user_token(&uc)).await;
    let reply = c
        .join(
            CHANNEL,
            json!({"private": true, "broadcast": {"ack": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    c.send(
        Some("1"),
        CHANNEL,
        "broadcast",
        json!({"type": "broadcast", "event": "from_c", "payload": {}}),
    )
    .await;
    let reply = c.expect_event(CHANNEL, "phx_reply").await;
    assert_eq!(reply.payload["status"], "error");
    assert_eq!(
        reason(&reply.payload),
        "Unauthorized: You do not have permissions to write to this Channel topic: room-x"
    );
    c.send(
        Some("1"),
        CHANNEL,
        "presence",
        json!({"type": "presence", "event": "track", "payload": {}}),
    )
    .await;
    let reply = c.expect_event(CHANNEL, "phx_reply").await;
    assert_eq!(reply.payload["status"], "error", "{:?}", reply.payload);
    let (status, _) = rest(&gw, &service, true, "after_c").await;
    assert_eq!(status, 202);
    let mut before_marker = Vec::new();
    loop {
        let event = next_broadcast(&mut s, CHANNEL).await["event"].clone();
        if event == "after_c" {
            break;
        }
        before_marker.push(event);
    }
    assert!(
        !before_marker.contains(&json!("from_c")),
        "C's refused broadcast reached no one: {before_marker:?}"
    );

    // A pushes C's token: reads kept, write lost; later sends are refused.
    a.send(
        Some("1"),
        CHANNEL,
        "access_token",
        json!({"access_token": user_token(&uc)}),
    )
    .await;
    a.send(
        Some("1"),
        CHANNEL,
        "broadcast",
        json!({"type": "broadcast", "event": "after_restrict", "payload": {}}),
    )
    .await;
    let reply = a.expect_event(CHANNEL, "phx_reply").await;
    assert_eq!(reply.payload["status"], "error", "{:?}", reply.payload);
    // Then B's token: no read right, the channel ends.
    a.send(
        Some("1"),
        CHANNEL,
        "access_token",
        json!({"access_token": user_token(&ub)}),
    )
    .await;
    let system = a.expect_event(CHANNEL, "system").await;
    assert_eq!(system.payload["status"], "error", "{:?}", system.payload);
    assert_eq!(system.payload["reason"], "unauthorized");
    a.expect_event(CHANNEL, "phx_close").await;

    // Every refusal is audited.
    let pool = db.pool().await;
    eventually(Duration::from_secs(10), "refusals audited", || {
        let pool = pool.clone();
        async move {
            let causes: Vec<String> = sqlx::query_scalar(
                "select distinct detail->>'kind' from realtime.audit_log \
                 where kind = 'private_refused'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            ["join", "rest", "broadcast", "track", "token"]
                .iter()
                .all(|k| causes.iter().any(|c| c == k))
        }
    })
    .await;
    gw.stop().await.unwrap();
}

/// realtime-js with `config: {private: true}`: the user with the policy subscribes and
/// receives `realtime.send(..., private => true)`; another user's channel errors with the
/// reason.
#[tokio::test]
async fn realtime_js_private_channel_follows_the_policies() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let (ua, ub) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    policies(&db, &ua, &ua).await;
    let mut a = Driver::start(Client::Js, &gw, json!({})).await;
    a.send(
        json!({"cmd": "subscribe", "channel": TOPIC, "private": true,
                  "access_token": user_token(&ua), "listen_broadcast": ["*"]}),
    )
    .await;
    let status = a
        .expect(|e| e["ev"] == "status" && e["channel"] == TOPIC)
        .await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
    let mut b = Driver::start(Client::Js, &gw, json!({})).await;
    b.send(
        json!({"cmd": "subscribe", "channel": TOPIC, "private": true,
                  "access_token": user_token(&ub), "listen_broadcast": ["*"]}),
    )
    .await;
    let status = b
        .expect(|e| e["ev"] == "status" && e["channel"] == TOPIC)
        .await;
    assert_eq!(status["status"], "CHANNEL_ERROR", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("You do not have permissions to read from this Channel topic: room-x"),
        "{status}"
    );
    sql_send(&db, "for_a", true).await;
    let got = a.expect(|e| e["ev"] == "broadcast").await;
    assert_eq!(got["payload"]["event"], "for_a", "{got}");
    a.exit().await;
    b.exit().await;
    gw.stop().await.unwrap();
}

/// With `--private-channels-only`, public joins are refused with `PrivateOnly`.
#[tokio::test]
async fn private_only_refuses_public_joins() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.private.private_channels_only = true).await;
    let mut ws = socket(&gw, &token("service_role", None)).await;
    let reply = ws.join("realtime:open", json!({})).await;
    assert_eq!(
        reason(&reply),
        "PrivateOnly: This project only allows private channels"
    );
    let reply = ws.join("realtime:open", json!({"private": true})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    gw.stop().await.unwrap();
}

/// A policy that raises refuses the join (closed by default), and a slow check does not hold
/// up other clients.
#[tokio::test]
async fn a_check_that_cannot_be_evaluated_refuses_and_blocks_no_one_else() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut conn = db.connect().await;
    sqlx::query(
        "create policy boom on realtime.messages for select to anon \
         using (realtime.topic() = 'boom' and (length(realtime.topic()) / 0) = 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "create policy slow on realtime.messages for select to anon \
         using (realtime.topic() = 'slow' and pg_sleep(1) is not null)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let mut ws = WsClient::anon(&gw).await;
    let reply = ws.join("realtime:boom", json!({"private": true})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    assert!(reason(&reply).starts_with("Unauthorized: "), "{reply}");

    // While one socket waits on a slow policy, another joins and broadcasts at once.
    let mut slow = WsClient::anon(&gw).await;
    slow.send(
        Some("1"),
        "realtime:slow",
        "phx_join",
        json!({"config": {"private": true}}),
    )
    .await;
    let mut other = WsClient::anon(&gw).await;
    let started = tokio::time::Instant::now();
    let reply = other
        .join(
            "realtime:fast",
            json!({"broadcast": {"ack": true, "self": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let reply = slow.expect_event("realtime:slow", "phx_reply").await;
    assert_eq!(reply.payload["status"], "ok", "{:?}", reply.payload);

    let pool = db.pool().await;
    eventually(Duration::from_secs(10), "policy error audited", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from realtime.audit_log where kind = 'private_refused' \
                 and detail->>'cause' = 'policy_error' and detail->>'channel' = 'boom'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
    gw.stop().await.unwrap();
}
