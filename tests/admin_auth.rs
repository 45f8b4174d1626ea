//! Operator surfaces behind a credential: with `--metrics-auth`, `/metrics` answers only a
//! `service_role` JWT or the `--admin-token`; `/health` and `/ready` stay open.

mod common;

use common::{http_get, http_request, token, TestDb, TestGateway};

const ADMIN_TOKEN: &str = "static-admin-token-for-tests";

async fn metrics_with(gw: &TestGateway, authorization: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| vec![("Authorization", value)])
        .unwrap_or_default();
    http_request(gw.addr, "GET", "/metrics", &headers, "")
        .await
        .unwrap()
}

fn assert_refused((status, body): (u16, String), what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["error"], "unauthorized", "{what}");
}

#[tokio::test]
async fn metrics_requires_a_service_role_jwt_or_the_admin_token() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.metrics_auth = true;
        c.admin_token = Some(ADMIN_TOKEN.to_owned());
    })
    .await;
    assert_refused(metrics_with(&gw, None).await, "no credential");
    let anon = format!("Bearer {}", token("anon", None));
    assert_refused(metrics_with(&gw, Some(&anon)).await, "anon JWT");
    let user = format!(
        "Bearer {}",
        token("authenticated", Some(&uuid::Uuid::new_v4().to_string()))
    );
    assert_refused(metrics_with(&gw, Some(&user)).await, "authenticated JWT");
    let forged = format!(
        "Bearer {}",
        realtime_gateway::auth::sign(
            "another-secret-of-32-characters!!",
            "service_role",
            None,
            60
        )
        .unwrap()
    );
    assert_refused(
        metrics_with(&gw, Some(&forged)).await,
        "JWT of another secret",
    );
    assert_refused(
        metrics_with(&gw, Some("Bearer static-admin-token-for-testZ")).await,
        "wrong token",
    );
    assert_refused(
        metrics_with(&gw, Some(ADMIN_TOKEN)).await,
        "token without scheme",
    );

    let service = format!("Bearer {}", token("service_role", None));
    let (status, body) = metrics_with(&gw, Some(&service)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gateway_sessions"), "{body}");
    let (status, body) = metrics_with(&gw, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(http_get(gw.addr, "/health").await.unwrap().0, 200);
    assert_eq!(http_get(gw.addr, "/ready").await.unwrap().0, 200);
    gw.stop().await.unwrap();
}

/// Without a token configured, a service_role JWT is still the credential.
#[tokio::test]
async fn metrics_auth_without_an_admin_token_takes_jwts() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.metrics_auth = true).await;
    assert_refused(
        metrics_with(&gw, Some("Bearer anything-at-all")).await,
        "no token set",
    );
    let service = format!("Bearer {}", token("service_role", None));
    assert_eq!(metrics_with(&gw, Some(&service)).await.0, 200);
    gw.stop().await.unwrap();
}

/// By default `/metrics` stays open, as before.
#[tokio::test]
async fn metrics_is_open_by_default() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    assert_eq!(metrics_with(&gw, None).await.0, 200);
    gw.stop().await.unwrap();
}
