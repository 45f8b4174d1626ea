//! The admin JSON API (`/admin/api/`) against real gateways and PostgreSQL: the credential
//! guards every route, and the statistics and connection lists show the whole cluster.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, http_request, token, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "static-admin-token-for-tests";

/// A request to the admin API with `authorization` (a whole header value), and its JSON body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    let (status, text) = http_request(addr, method, path, &headers, body)
        .await
        .unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// GET with the service-role credential; expects 200.
async fn get(addr: SocketAddr, path: &str) -> Value {
    let service = format!("Bearer {}", token("service_role", None));
    let (status, body) = call(addr, "GET", path, Some(&service), "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A route template with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::new_v4().to_string())
        .replace("{schema}", "public")
        .replace("{table}", "nothing_here")
        .replace("{channel}", "room")
}

/// Every guarded route refuses a request without a credential (401), with a token of a role
/// other than service_role (403), and with a forged one (401), each with a JSON error, and
/// audits the refusal; the admin token and a service_role JWT are let through.
#[tokio::test]
async fn every_route_asks_for_the_operator_credential() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| c.admin_token = Some(ADMIN_TOKEN.to_owned())).await;
    let anon = format!("Bearer {}", token("anon", None));
    let user = format!(
        "Bearer {}",
        token("authenticated", Some(&uuid::Uuid::new_v4().to_string()))
    );
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
    let routes = realtime_gateway::admin::api::routes();
    assert!(
        routes
            .iter()
            .any(|r| r.path == "/admin/api/stats" && r.guarded),
        "{routes:?}"
    );
    for route in routes.iter().filter(|r| r.guarded) {
        let path = concrete(route.path);
        for (credential, status, error) in [
            (None, 401, "unauthorized"),
            (Some(anon.as_str()), 403, "forbidden"),
            (Some(user.as_str()), 403, "forbidden"),
            (Some(forged.as_str()), 401, "unauthorized"),
            (Some("Bearer not-a-token"), 401, "unauthorized"),
        ] {
            let (got, body) = call(gw.addr, route.method, &path, credential, "").await;
            assert_eq!(
                got, status,
                "{} {path} with {credential:?}: {body}",
                route.method
            );
            assert_eq!(body["error"], error, "{body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        }
        for credential in [
            format!("Bearer {ADMIN_TOKEN}"),
            format!("Bearer {}", token("service_role", None)),
        ] {
            let (got, body) = call(gw.addr, route.method, &path, Some(&credential), "").await;
            assert!(
                got != 401 && got != 403,
                "{} {path} refused a good credential: {got} {body}",
                route.method
            );
        }
    }
    // Refusals are audited with the endpoint, never the credential.
    eventually(
        Duration::from_secs(20),
        "admin refusals audited",
        || async {
            let mut conn = db.connect().await;
            let n: i64 = sqlx::query_scalar(
                "select count(*) from realtime.audit_log where kind = 'auth_refused' \
              and detail->>'stage' = 'admin' and detail->>'endpoint' = '/admin/api/stats'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            n >= 5
        },
    )
    .await;
    gw.stop().await.unwrap();
}

/// Parameters that cannot be used get 400 with a JSON body saying which; an unknown
/// connection gets 404.
#[tokio::test]
async fn bad_parameters_get_clear_json_errors() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let service = format!("Bearer {}", token("service_role", None));
    for (method, path, body, status, needle) in [
        ("GET", "/admin/api/connections?limit=0", "", 400, "limit"),
        ("GET", "/admin/api/connections?limit=abc", "", 400, "limit"),
        ("GET", "/admin/api/connections?offset=-1", "", 400, "offset"),
        ("GET", "/admin/api/connections?usr=x", "", 400, "usr"),
        (
            "GET",
            "/admin/api/connections?user=not-a-uuid",
            "",
            400,
            "user",
        ),
        ("GET", "/admin/api/connections/not-a-uuid", "", 400, "UUID"),
        ("GET", "/admin/api/audit?since=yesterday", "", 400, "since"),
        ("GET", "/admin/api/audit?limit=5000", "", 400, "limit"),
        (
            "GET",
            "/admin/api/connections/6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11",
            "",
            404,
            "6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11",
        ),
    ] {
        let (got, answer) = call(gw.addr, method, path, Some(&service), body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    gw.stop().await.unwrap();
}

/// Two nodes on one database: the statistics count every node's connections against the cap
/// and list both nodes live; the connection list filters by node, user, channel and component,
/// pages, and completes this node's connections from its memory.
#[tokio::test]
async fn stats_and_connections_show_the_whole_cluster() {
    let db = TestDb::new().await;
    let a = TestGateway::start_with(&db, |c| c.max_connections = 50).await;
    let b = TestGateway::start_with(&db, |c| c.max_connections = 50).await;
    let user = "7a3c1e52-5a1e-4d6a-9d1a-0c4f4c7e2b12";
    let key = token("authenticated", Some(user));
    let url = |gw: &TestGateway, component: &str| {
        format!(
            "ws://{}/realtime/v1/websocket?apikey={key}&component={component}&vsn=2.0.0",
            gw.addr
        )
    };
    let mut on_a = WsClient::connect(&url(&a, "Dashboard")).await;
    on_a.join("realtime:lobby", json!({})).await;
    on_a.join("realtime:side", json!({"component": "Sidebar"}))
        .await;
    let mut on_b = WsClient::anon(&b).await;
    on_b.join("realtime:lobby", json!({})).await;
    let _idle_on_b = WsClient::anon(&b).await;

    eventually(
        Duration::from_secs(20),
        "three connections, three rows",
        || async {
            let stats = get(a.addr, "/admin/api/stats").await;
            stats["cluster"]["connections"] == 3 && stats["cluster"]["subscriptions"] == 3
        },
    )
    .await;
    let stats = get(a.addr, "/admin/api/stats").await;
    assert_eq!(stats["cluster"]["connections_max"], 50, "{stats}");
    assert_eq!(stats["cluster"]["channels"], 2, "{stats}");
    assert_eq!(stats["node"]["node_id"], a.config.node_id.as_str());
    assert_eq!(stats["node"]["connections"], 1, "{stats}");
    assert_eq!(stats["node"]["channels"]["broadcast"], 2, "{stats}");
    let nodes = stats["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{stats}");
    for node in nodes {
        assert_eq!(node["live"], true, "{node}");
        let expected = if node["node_id"] == a.config.node_id.as_str() {
            1
        } else {
            2
        };
        assert_eq!(node["connections"], expected, "{node}");
    }

    let all = get(a.addr, "/admin/api/connections").await;
    assert_eq!(all["total"], 3, "{all}");
    let mine = get(a.addr, &format!("/admin/api/connections?user={user}")).await;
    assert_eq!(mine["total"], 1, "{mine}");
    let conn = &mine["connections"][0];
    assert_eq!(conn["node_id"], a.config.node_id.as_str());
    assert_eq!(conn["local"], true);
    assert_eq!(conn["component"], "Dashboard", "{conn}");
    assert!(
        conn["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{conn}"
    );
    assert!(conn["last_heartbeat_at"].is_string() && conn["connected_at"].is_string());
    let channels: Vec<&str> = conn["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["lobby", "side"], "{conn}");
    let lobby = get(a.addr, "/admin/api/connections?channel=lobby").await;
    assert_eq!(lobby["total"], 2, "{lobby}");
    let on_node_b = get(
        b.addr,
        &format!("/admin/api/connections?node={}", b.config.node_id),
    )
    .await;
    assert_eq!(on_node_b["total"], 2, "{on_node_b}");
    let sidebar = get(b.addr, "/admin/api/connections?component=Sidebar").await;
    assert_eq!(sidebar["total"], 1, "{sidebar}");
    assert_eq!(
        sidebar["connections"][0]["local"], false,
        "seen from node B: {sidebar}"
    );
    let page = get(a.addr, "/admin/api/connections?limit=2&offset=2").await;
    assert_eq!(
        (
            page["total"].clone(),
            page["connections"].as_array().unwrap().len()
        ),
        (json!(3), 1)
    );

    let id = conn["connection_id"].as_str().unwrap();
    let detail = get(b.addr, &format!("/admin/api/connections/{id}")).await;
    assert_eq!(detail["state"], "open", "{detail}");
    assert_eq!(detail["connection"]["node_id"], a.config.node_id.as_str());
    assert!(
        detail["queue"].is_null(),
        "node B has no queue of it: {detail}"
    );
    let detail = get(a.addr, &format!("/admin/api/connections/{id}")).await;
    assert_eq!(detail["queue"]["closing"], false, "{detail}");
    on_b.join("realtime:late", json!({})).await;
    drop(on_a);
    eventually(
        Duration::from_secs(20),
        "the closed connection's history",
        || async {
            let detail = get(b.addr, &format!("/admin/api/connections/{id}")).await;
            detail["state"] == "closed"
                && detail["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["close_reason"] == "socket_closed")
        },
    )
    .await;
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// The audit endpoint lists every node's records newest first, filtered by kind, user, node
/// and time, and pages back with `before`.
#[tokio::test]
async fn audit_records_are_listed_newest_first_with_filters() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut conn = db.connect().await;
    let user = "8b4d2f63-5a1e-4d6a-9d1a-0c4f4c7e2b13";
    sqlx::query(
        "insert into realtime.audit_log (at, kind, node_id, user_id, detail) values \
           (now() - interval '2 hours', 'reaped', 'n1', $1, '{\"n\": 1}'), \
           (now() - interval '1 hour', 'reaped', 'n2', null, '{\"n\": 2}'), \
           (now(), 'cap_refused', 'n1', $1, '{\"n\": 3}')",
    )
    .bind(uuid::Uuid::parse_str(user).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    let ns = |page: &Value| -> Vec<i64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["detail"]["n"].is_i64())
            .map(|e| e["detail"]["n"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ns(&get(gw.addr, "/admin/api/audit").await), [3, 2, 1]);
    assert_eq!(
        ns(&get(gw.addr, "/admin/api/audit?kind=reaped").await),
        [2, 1]
    );
    assert_eq!(
        ns(&get(gw.addr, &format!("/admin/api/audit?user={user}")).await),
        [3, 1]
    );
    assert_eq!(ns(&get(gw.addr, "/admin/api/audit?node=n2").await), [2]);
    let since = (chrono::Utc::now() - chrono::Duration::minutes(90))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        ns(&get(
            gw.addr,
            &format!("/admin/api/audit?kind=reaped&since={since}")
        )
        .await),
        [2]
    );
    let first = get(gw.addr, "/admin/api/audit?kind=reaped&limit=1").await;
    assert_eq!(ns(&first), [2]);
    let before = first["events"][0]["id"].as_i64().unwrap();
    let next = get(
        gw.addr,
        &format!("/admin/api/audit?kind=reaped&limit=1&before={before}"),
    )
    .await;
    assert_eq!(ns(&next), [1]);
    assert_eq!(next["events"][0]["node_id"], "n1");
    assert!(next["events"][0]["at"].is_string());
    gw.stop().await.unwrap();
}
