//! Tokens expire while joined: a channel whose token expires receives a `system` error with a
//! machine-readable reason and `phx_close`, and its registry row ends `token_expired`; an
//! `access_token` push with a fresh token before expiry keeps the channel; a socket whose own
//! token expired cannot join with it. The same with the real realtime-js client: it reports the
//! `system` message and `CLOSED`, keeps receiving after `setAuth` past the first token's
//! expiry, and gets `CHANNEL_ERROR` for `alg: none`, unknown-`kid` and forged tokens.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{eventually, Client, Driver, TestDb, TestGateway, WsClient, JWT_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime_gateway::auth::now_secs;
use serde_json::json;

fn token_for(secs: i64) -> String {
    realtime_gateway::auth::sign(JWT_SECRET, "authenticated", None, secs).unwrap()
}

/// Regression: a channel joined with a token that expired 5 s later was still joined and
/// streaming 25 s after.
#[tokio::test]
async fn a_channel_ends_when_its_token_expires_unless_refreshed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    let short = token_for(2);
    for topic in ["realtime:expiring", "realtime:refreshed"] {
        let reply = c
            .send(
                Some(topic),
                topic,
                "phx_join",
                json!({"config": {"broadcast": {"self": true}}, "access_token": short}),
            )
            .await;
        let m = c.expect_event(topic, "phx_reply").await;
        assert_eq!(m.msg_ref.as_deref(), Some(reply.as_str()));
        assert_eq!(m.payload["status"], "ok", "{}", m.payload);
    }
    // The second channel gets a fresh token before the first expires (never replied to).
    c.send(
        Some("realtime:refreshed"),
        "realtime:refreshed",
        "access_token",
        json!({"access_token": token_for(600)}),
    )
    .await;
    let system = c.expect_event("realtime:expiring", "system").await;
    assert_eq!(system.payload["status"], "error");
    assert_eq!(system.payload["reason"], "token_expired");
    assert_eq!(system.payload["channel"], "expiring");
    assert!(
        system.payload["message"]
            .as_str()
            .unwrap()
            .starts_with("Token has expired"),
        "{}",
        system.payload
    );
    let close = c.expect_event("realtime:expiring", "phx_close").await;
    assert_eq!(close.join_ref.as_deref(), Some("realtime:expiring"));
    // The refreshed channel is still joined: its broadcast comes back to it.
    c.send(
        Some("realtime:refreshed"),
        "realtime:refreshed",
        "broadcast",
        json!({"type": "broadcast", "event": "still", "payload": {}}),
    )
    .await;
    let m = c.expect_event("realtime:refreshed", "broadcast").await;
    assert_eq!(m.payload["event"], "still");
    eventually(Duration::from_secs(10), "the registry row ends token_expired", || {
        let db = &db;
        async move {
            let mut conn = db.connect().await;
            sqlx::query_scalar::<_, i64>(
                "select count(*) from public.realtime_subscription_registry \
                 where channel_name = 'expiring' and not is_active and close_reason = 'token_expired'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
    gw.stop().await.unwrap();
}

/// A socket whose own token has expired since it connected cannot join with it.
#[tokio::test]
async fn a_socket_token_that_expired_cannot_join() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    // Two seconds, not one: `exp` has whole seconds, so a one-second token signed late in a
    // second has expired a few milliseconds later, before a loaded machine upgrades the socket.
    let mut c = WsClient::connect(&gw.ws_url(&token_for(2), "2.0.0")).await;
    let reply = c.join("realtime:first", json!({})).await;
    assert_eq!(reply["status"], "ok");
    // The first channel ends when the socket's token expires ...
    let system = c.expect_event("realtime:first", "system").await;
    assert_eq!(system.payload["reason"], "token_expired");
    // ... and a join with the expired token is refused.
    let reply = c.join("realtime:second", json!({})).await;
    assert_eq!(reply["status"], "error");
    assert!(
        reply["response"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("InvalidJWTToken: Token has expired"),
        "{reply}"
    );
    gw.stop().await.unwrap();
}

/// When `token` expires (seconds since the epoch).
fn exp_of(token: &str) -> i64 {
    realtime_gateway::auth::Verifier::new(JWT_SECRET)
        .verify(token)
        .unwrap()
        .exp
}

/// realtime-js, joined with a token that expires 2 s later, hands its `system` listener the
/// error with `reason: "token_expired"` and then reports the channel `CLOSED`.
#[tokio::test]
async fn realtime_js_sees_the_expiry_and_the_channel_closed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    let short = token_for(2);
    let exp = exp_of(&short);
    js.send(
        json!({"cmd": "subscribe", "id": "s", "channel": "expiring-js",
                   "access_token": short}),
    )
    .await;
    js.expect(|e| e["ev"] == "status" && e["id"] == "s" && e["status"] == "SUBSCRIBED")
        .await;
    let system = js
        .expect(|e| e["ev"] == "system" && e["channel"] == "expiring-js")
        .await;
    assert!(now_secs() >= exp, "ended before its token expired");
    let payload = &system["payload"];
    assert_eq!(payload["status"], "error", "{system}");
    assert_eq!(payload["reason"], "token_expired", "{system}");
    assert_eq!(payload["channel"], "expiring-js", "{system}");
    assert!(
        payload["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Token has expired")),
        "{system}"
    );
    js.expect(|e| e["ev"] == "status" && e["id"] == "s" && e["status"] == "CLOSED")
        .await;
    js.exit().await;
    gw.stop().await.unwrap();
}

/// realtime-js `setAuth(fresh)` before the channel's token expires pushes `access_token`: the
/// channel stays joined and still receives a broadcast sent after the first token's `exp`.
#[tokio::test]
async fn realtime_js_set_auth_before_expiry_keeps_the_channel() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    let short = token_for(3);
    let exp = exp_of(&short);
    js.send(
        json!({"cmd": "subscribe", "id": "s", "channel": "refreshed-js",
                   "access_token": short, "broadcast": {"self": true, "ack": true},
                   "listen_broadcast": ["ev"]}),
    )
    .await;
    js.expect(|e| e["ev"] == "status" && e["id"] == "s" && e["status"] == "SUBSCRIBED")
        .await;
    js.send(json!({"cmd": "set_auth", "token": token_for(600)}))
        .await;
    js.expect(|e| e["ev"] == "auth_set").await;
    // What is under test is the clock: wait until the first token is a whole second past its
    // `exp` (the gateway ends channels at `exp`, in whole seconds).
    eventually(
        Duration::from_secs(10),
        "the first token expired",
        || async move { now_secs() > exp },
    )
    .await;
    js.send(
        json!({"cmd": "send", "channel": "refreshed-js", "event": "ev",
                   "payload": {"after_exp": true}}),
    )
    .await;
    let sent = js.expect(|e| e["ev"] == "sent").await;
    assert_eq!(sent["result"], "ok", "{sent}");
    // The echo and the ack come in either order.
    let delivery = |e: &serde_json::Value| e["ev"] == "broadcast" && e["channel"] == "refreshed-js";
    let got = match js.log.iter().find(|e| delivery(e)).cloned() {
        Some(got) => got,
        None => js.expect(delivery).await,
    };
    assert_eq!(got["payload"]["payload"]["after_exp"], true, "{got}");
    let ended = js.log.iter().find(|e| {
        (e["ev"] == "system" && e["payload"]["status"] == "error")
            || (e["ev"] == "status" && e["status"] != "SUBSCRIBED")
    });
    assert!(ended.is_none(), "the channel ended: {ended:?}");
    js.exit().await;
    gw.stop().await.unwrap();
}

/// realtime-js joins with an `alg: none` token, a token naming a `kid` the JWKS does not have,
/// and tokens whose signature does not verify (HS256 of another secret, RS256 of another key):
/// each is refused with `CHANNEL_ERROR` and the signature text, and audited with its reason.
#[tokio::test]
async fn realtime_js_joins_with_forged_tokens_are_refused() {
    use base64::Engine as _;
    const RSA: &str = include_str!("fixtures/jwks/rsa_private.pem");
    const RSA_OTHER: &str = include_str!("fixtures/jwks/rsa_other_private.pem");
    let rs256 = |kid: &str, pem: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let claims = json!({"role": "authenticated", "exp": now_secs() + 600});
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"role": "service_role", "exp": now_secs() + 600}))
    );
    let other_secret =
        realtime_gateway::auth::sign("another-secret-of-32-characters!!", "anon", None, 600)
            .unwrap();
    let forged = [
        ("none", alg_none),
        ("kid", rs256("rotated-away", RSA)),
        ("hs", other_secret),
        ("rs", rs256("rsa-test-1", RSA_OTHER)),
    ];

    let db = TestDb::new().await;
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks/jwks.json");
    let gw = TestGateway::start_with(&db, |c| {
        c.jwt.jwks = Some(jwks.to_owned());
        // The client rejoins refused channels: those retries must not block the address.
        c.max_auth_failures = 0;
    })
    .await;
    let mut js = Driver::start(Client::Js, &gw, json!({})).await;
    for (name, token) in &forged {
        js.send(
            json!({"cmd": "subscribe", "id": name, "channel": format!("forged-{name}"),
                       "access_token": token}),
        )
        .await;
        let status = js.expect(|e| e["ev"] == "status" && e["id"] == *name).await;
        assert_eq!(status["status"], "CHANNEL_ERROR", "{name}: {status}");
        assert_eq!(
            status["error"], "JwtSignatureError: Failed to validate JWT signature",
            "{name}: {status}"
        );
    }
    js.exit().await;
    let expected: BTreeSet<&str> = ["alg_not_allowed", "unknown_kid", "bad_signature"].into();
    eventually(
        Duration::from_secs(10),
        "each refusal audited with its reason",
        || {
            let (db, expected) = (&db, &expected);
            async move {
                let mut conn = db.connect().await;
                let reasons: Vec<String> = sqlx::query_scalar(
                    "select distinct detail->>'reason' from realtime.audit_log \
                 where kind = 'auth_refused' and detail->>'stage' = 'join'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                reasons.iter().map(String::as_str).collect::<BTreeSet<_>>() == *expected
            }
        },
    )
    .await;
    gw.stop().await.unwrap();
}
