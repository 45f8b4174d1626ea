//! Every refused token or credential is audited (`auth_refused`, with the stage and a
//! machine-readable reason, never the token) and counted (`gateway_auth_refused_total`): at the
//! upgrade, at a join, on an `access_token` push, on REST broadcast and on `/metrics`; a failed
//! JWKS re-read is audited too. A channel token of another `sub` or role is audited as
//! `token_identity_changed`, moves the registry row to the new user and keeps the channel's
//! Postgres Changes subscription registered, once.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    eventually, http_request, realtime_table, token, TestDb, TestGateway, WsClient, JWT_SECRET,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ADMIN_TOKEN: &str = "static-admin-token-for-tests";
const JWKS: &str = include_str!("fixtures/jwks/jwks.json");
const RSA: &str = include_str!("fixtures/jwks/rsa_private.pem");

/// `(stage, reason, detail as text)` of every `auth_refused` record, oldest first.
async fn refusals(db: &TestDb) -> Vec<(String, String, String)> {
    let mut conn = db.connect().await;
    sqlx::query_as(
        "select detail->>'stage', detail->>'reason', detail::text from realtime.audit_log \
         where kind = 'auth_refused' order by id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn audit_count(db: &TestDb, kind: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select count(*) from realtime.audit_log where kind = $1")
        .bind(kind)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn upgrade_refused(gw: &TestGateway, key: &str) -> u16 {
    let err = tokio_tungstenite::connect_async(gw.ws_url(key, "2.0.0"))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an http refusal, got {err}");
    };
    response.status().as_u16()
}

fn unsigned(claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

fn rs256(kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({"role": "anon", "exp": realtime_gateway::auth::now_secs() + 60});
    let key = EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn signed(role: &str, sub: &str, ttl_secs: i64) -> String {
    realtime_gateway::auth::sign(JWT_SECRET, role, Some(sub), ttl_secs).unwrap()
}

/// Regression: refused `access_token` pushes, REST requests and `/metrics` credentials left no
/// trace in the audit log, and the upgrade and join records gave only the client text, the same
/// for every signature failure.
#[tokio::test]
async fn every_token_refusal_is_audited_without_the_token() {
    let db = TestDb::new().await;
    let jwks_file = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&jwks_file, JWKS).unwrap();
    let gw = TestGateway::start_with(&db, |c| {
        c.jwt.jwks = Some(jwks_file.to_string_lossy().into_owned());
        c.metrics_auth = true;
        c.admin_token = Some(ADMIN_TOKEN.to_owned());
        c.max_auth_failures = 0;
    })
    .await;
    // The JWKS is gone: the re-read asked for by an unknown kid fails.
    std::fs::remove_file(&jwks_file).unwrap();

    let expired = realtime_gateway::auth::sign(JWT_SECRET, "anon", None, -30).unwrap();
    let forged =
        realtime_gateway::auth::sign("another-secret-of-32-characters!!", "anon", None, 60)
            .unwrap();
    let alg_none =
        unsigned(json!({"role": "anon", "exp": realtime_gateway::auth::now_secs() + 60}));
    let unknown_kid = rs256("rotated-away");
    let garbage = "not-a-jwt-but-secret-looking-text";
    let tokens = [
        expired.as_str(),
        forged.as_str(),
        alg_none.as_str(),
        unknown_kid.as_str(),
        garbage,
        ADMIN_TOKEN,
    ];

    for key in [&expired, &alg_none, &unknown_kid] {
        assert_eq!(upgrade_refused(&gw, key).await, 401);
    }
    let mut c = WsClient::anon(&gw).await;
    c.send(
        Some("realtime:forged"),
        "realtime:forged",
        "phx_join",
        json!({"config": {}, "access_token": forged}),
    )
    .await;
    let reply = c.expect_event("realtime:forged", "phx_reply").await;
    assert_eq!(reply.payload["status"], "error", "{}", reply.payload);
    let joined = c.join("realtime:pushed", json!({})).await;
    assert_eq!(joined["status"], "ok");
    c.send(
        Some("realtime:pushed"),
        "realtime:pushed",
        "access_token",
        json!({"access_token": garbage}),
    )
    .await;
    c.expect_event("realtime:pushed", "phx_close").await;

    let bearer = format!("Bearer {expired}");
    let body = r#"{"messages":[{"topic":"t","event":"e","payload":{}}]}"#;
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, _) = http_request(gw.addr, "POST", "/api/broadcast", &headers, body)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let wrong = format!("Bearer {garbage}");
    let (status, _) = http_request(gw.addr, "GET", "/metrics", &[("Authorization", &wrong)], "")
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = http_request(gw.addr, "GET", "/metrics", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 401);

    let expected: BTreeSet<(String, String)> = [
        ("connect", "token_expired"),
        ("connect", "alg_not_allowed"),
        ("connect", "unknown_kid"),
        ("join", "bad_signature"),
        ("access_token", "malformed"),
        ("rest", "token_expired"),
        ("admin", "malformed"),
        ("admin", "credential_missing"),
    ]
    .into_iter()
    .map(|(s, r)| (s.to_owned(), r.to_owned()))
    .collect();
    eventually(Duration::from_secs(10), "every refusal audited", || {
        let (db, expected) = (&db, &expected);
        async move {
            let seen: BTreeSet<(String, String)> = refusals(db)
                .await
                .into_iter()
                .map(|(s, r, _)| (s, r))
                .collect();
            seen == *expected
        }
    })
    .await;
    for (stage, reason, detail) in refusals(&db).await {
        for t in tokens {
            assert!(
                !detail.contains(t),
                "{stage}/{reason} records the token: {detail}"
            );
        }
    }
    eventually(
        Duration::from_secs(10),
        "the failed JWKS re-read audited",
        || {
            let db = &db;
            async move { audit_count(db, "jwks_refresh_failed").await == 1 }
        },
    )
    .await;

    let admin = format!("Bearer {ADMIN_TOKEN}");
    let (status, metrics) =
        http_request(gw.addr, "GET", "/metrics", &[("Authorization", &admin)], "")
            .await
            .unwrap();
    assert_eq!(status, 200);
    for reason in ["unknown_kid", "alg_not_allowed", "credential_missing"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with("gateway_auth_refused_total{") && l.contains(reason));
        assert!(line.is_some(), "no gateway_auth_refused_total for {reason}");
    }
    assert!(metrics.contains("gateway_auth_jwks_failures_total"));
    gw.stop().await.unwrap();
}

/// Regression: a channel whose `access_token` push named another user kept the old user in the
/// registry and left no trace of the change.
#[tokio::test]
async fn a_token_of_another_identity_is_audited_and_keeps_the_subscription() {
    let db = TestDb::new().await;
    realtime_table(&db, "identity_notes", "title text").await;
    let gw = TestGateway::start(&db).await;
    let (alice, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let topic = "realtime:identity";
    let mut c = WsClient::anon(&gw).await;
    let changes = json!([{"event": "INSERT", "schema": "public", "table": "identity_notes"}]);
    c.send(
        Some(topic),
        topic,
        "phx_join",
        json!({"config": {"postgres_changes": changes},
               "access_token": signed("authenticated", &alice.to_string(), 600)}),
    )
    .await;
    let reply = c.expect_event(topic, "phx_reply").await;
    assert_eq!(reply.payload["status"], "ok", "{}", reply.payload);
    let system = c.expect_event(topic, "system").await;
    assert_eq!(system.payload["status"], "ok", "{}", system.payload);

    let bob_token = signed("service_role", &bob.to_string(), 600);
    c.send(
        Some(topic),
        topic,
        "access_token",
        json!({"access_token": bob_token}),
    )
    .await;
    // The subscription was re-registered with Bob's claims: each insert arrives once.
    let mut conn = db.connect().await;
    for title in ["first", "second"] {
        sqlx::query("insert into public.identity_notes (title) values ($1)")
            .bind(title)
            .execute(&mut conn)
            .await
            .unwrap();
        let m = c.expect_event(topic, "postgres_changes").await;
        assert_eq!(m.payload["data"]["record"]["title"], title, "{}", m.payload);
    }

    eventually(
        Duration::from_secs(10),
        "the identity change audited",
        || {
            let db = &db;
            async move { audit_count(db, "token_identity_changed").await == 1 }
        },
    )
    .await;
    let detail: serde_json::Value = sqlx::query_scalar(
        "select detail from realtime.audit_log where kind = 'token_identity_changed'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        detail,
        json!({"channel": "identity", "old_sub": alice.to_string(), "new_sub": bob.to_string(),
               "old_role": "authenticated", "new_role": "service_role"})
    );
    assert!(!detail.to_string().contains(&bob_token));
    eventually(
        Duration::from_secs(10),
        "the registry row names Bob",
        || {
            let db = &db;
            async move {
                let mut conn = db.connect().await;
                let user: Option<uuid::Uuid> = sqlx::query_scalar(
                    "select claimed_user_id from public.realtime_subscription_registry \
                 where channel_name = 'identity' and is_active",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                user == Some(bob)
            }
        },
    )
    .await;

    // A fresh token of the same identity is no identity change; a refused one ends the
    // channel, and is audited after everything before it.
    let fresh = signed("service_role", &bob.to_string(), 900);
    c.send(
        Some(topic),
        topic,
        "access_token",
        json!({"access_token": fresh}),
    )
    .await;
    c.send(
        Some(topic),
        topic,
        "access_token",
        json!({"access_token": token("anon", None) + "x"}),
    )
    .await;
    c.expect_event(topic, "phx_close").await;
    eventually(Duration::from_secs(10), "the refused push audited", || {
        let db = &db;
        async move { audit_count(db, "auth_refused").await == 1 }
    })
    .await;
    assert_eq!(audit_count(&db, "token_identity_changed").await, 1);
    gw.stop().await.unwrap();
}
