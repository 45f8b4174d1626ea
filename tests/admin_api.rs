//! The admin JSON API (`/admin/api/`) against real gateways and PostgreSQL: the credential
//! guards every route, the statistics and connection lists show the whole cluster, and an
//! operator's disconnect closes a real realtime-js client (4002) on this node or another one,
//! ending its registry rows as `kicked`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, http_request, token, Client, Driver, TestDb, TestGateway, WsClient};
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

/// POST with the service-role credential; returns status and body.
async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let service = format!("Bearer {}", token("service_role", None));
    call(addr, "POST", path, Some(&service), body).await
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
            "POST",
            "/admin/api/connections/not-a-uuid/disconnect",
            "",
            400,
            "UUID",
        ),
        (
            "POST",
            "/admin/api/connections/6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11/disconnect",
            "{\"why\": 1}",
            400,
            "why",
        ),
        (
            "POST",
            "/admin/api/connections/6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11/disconnect",
            "",
            404,
            "6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11",
        ),
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

/// The active registry rows of connection `id` and how its ended rows ended.
async fn rows_of(db: &TestDb, id: &str) -> (i64, Vec<String>) {
    let mut conn = db.connect().await;
    let id = uuid::Uuid::parse_str(id).unwrap();
    let active: i64 = sqlx::query_scalar(
        "select count(*) from public.realtime_subscription_registry \
          where connection_id = $1 and is_active",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let reasons: Vec<String> = sqlx::query_scalar(
        "select close_reason from public.realtime_subscription_registry \
          where connection_id = $1 and not is_active order by created_at",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    (active, reasons)
}

/// The id of the one open connection that joined `channel`, once the registry has it.
async fn connection_on(addr: SocketAddr, channel: &str) -> String {
    let path = format!("/admin/api/connections?channel={channel}");
    eventually(Duration::from_secs(20), "the connection is listed", || {
        let path = path.clone();
        async move { get(addr, &path).await["total"] == 1 }
    })
    .await;
    get(addr, &path).await["connections"][0]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An operator kicks a real realtime-js client through the API: the client sees its socket
/// closed with 4002, the connection's registry rows end `kicked`, and the kick is audited with
/// the operator's reason (and found by the audit endpoint).
#[tokio::test]
async fn a_kicked_realtime_js_client_sees_the_close_and_its_rows_end_kicked() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut client = Driver::start_with_env(
        Client::Js,
        &gw,
        json!({"component": "KickMe"}),
        &[("REALTIME_SOCKET_EVENTS", "1")],
    )
    .await;
    client
        .send(json!({"cmd": "subscribe", "id": "s", "channel": "kick-room", "listen_broadcast": ["*"]}))
        .await;
    let status = client.expect(|e| e["ev"] == "status").await;
    assert_eq!(status["status"], "SUBSCRIBED", "{status}");
    let id = connection_on(gw.addr, "kick-room").await;

    let (status, answer) = post(
        gw.addr,
        &format!("/admin/api/connections/{id}/disconnect"),
        r#"{"reason": "testing the kick"}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "closing", "{answer}");
    assert_eq!(answer["close_code"], 4002);
    let closed = client
        .expect(|e| e["ev"] == "socket" && e["state"] == "close")
        .await;
    assert_eq!(closed["code"], 4002, "{closed}");
    assert_eq!(closed["reason"], "closed by operator", "{closed}");

    eventually(Duration::from_secs(20), "the row ends kicked", || async {
        rows_of(&db, &id).await == (0, vec!["kicked".to_owned()])
    })
    .await;
    // realtime-js reconnects on its own: a new connection, the old one stays kicked.
    let status = client
        .expect(|e| e["ev"] == "status" && e["status"] == "SUBSCRIBED")
        .await;
    assert_eq!(status["channel"], "kick-room");
    let audit = get(gw.addr, "/admin/api/audit?kind=kicked").await;
    let events = audit["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{audit}");
    assert_eq!(events[0]["detail"]["connection_id"], id.as_str());
    assert_eq!(events[0]["detail"]["reason"], "testing the kick");
    // The old connection is gone: a second disconnect finds nothing.
    let (status, answer) = post(
        gw.addr,
        &format!("/admin/api/connections/{id}/disconnect"),
        "",
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    client.exit().await;
    gw.stop().await.unwrap();
}

/// A connection on another node is closed through the database: the node asked answers 202
/// naming the holder, and the holder closes it with 4002 within a few seconds.
#[tokio::test]
async fn a_connection_on_another_node_is_closed_by_its_own_node() {
    let db = TestDb::new().await;
    let a = TestGateway::start(&db).await;
    let b = TestGateway::start(&db).await;
    let mut on_b = WsClient::anon(&b).await;
    on_b.join("realtime:far-away", json!({})).await;
    let id = connection_on(a.addr, "far-away").await;
    let (status, answer) = post(
        a.addr,
        &format!("/admin/api/connections/{id}/disconnect"),
        "",
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "requested", "{answer}");
    assert_eq!(answer["node_id"], b.config.node_id.as_str(), "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("another node")
            || answer["message"]
                .as_str()
                .unwrap()
                .contains(b.config.node_id.as_str()),
        "{answer}"
    );
    assert_eq!(on_b.closed_with(Duration::from_secs(10)).await, Some(4002));
    eventually(Duration::from_secs(20), "the row ends kicked", || async {
        rows_of(&db, &id).await == (0, vec!["kicked".to_owned()])
    })
    .await;
    let audit = get(a.addr, "/admin/api/audit?kind=kicked").await;
    let event = &audit["events"][0];
    assert_eq!(event["node_id"], b.config.node_id.as_str(), "{audit}");
    assert_eq!(
        event["detail"]["requested_on"],
        a.config.node_id.as_str(),
        "{audit}"
    );
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

/// The OpenAPI document is served without a credential, is a valid OpenAPI 3.1 document (by
/// the `openapi-spec-validator` of PyPI), and lists exactly the routes the API's router serves:
/// the route table the router is built from, each route answered by the running gateway with
/// one of its own JSON answers (not the router's empty 404 or 405).
#[tokio::test]
async fn the_openapi_document_validates_and_lists_every_route() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let (status, text) = common::http_get(gw.addr, "/admin/api/openapi.json")
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");

    let file = std::env::temp_dir().join(format!("openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, &text).unwrap();
    let python = common::clients_dir().join("py/.venv/bin/python");
    let output = tokio::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .await
        .expect("run the validator");
    std::fs::remove_file(&file).unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("valid"),
        "the document does not validate: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let routes = realtime_gateway::admin::api::routes();
    let served: std::collections::BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, served, "documented vs served routes");
    assert!(served.iter().all(|(_, p)| p.starts_with("/admin/api/")));
    let service = format!("Bearer {}", token("service_role", None));
    for route in &routes {
        let path = concrete(route.path);
        // Our own answers are JSON (`call` fails on anything else), success or error.
        let (status, body) = call(gw.addr, route.method, &path, Some(&service), "").await;
        assert!(status != 405, "{} {path}: {status} {body}", route.method);
        if status == 404 {
            assert!(body["error"].is_string(), "{} {path}: {body}", route.method);
        }
        // A guarded route's document names its security, responses and schemas resolve.
        let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            op["responses"]["200"].is_object() || op["responses"]["202"].is_object(),
            "{op}"
        );
    }
    for (name, _) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(
            text.contains(&format!("#/components/schemas/{name}")),
            "{name} unused"
        );
    }
    gw.stop().await.unwrap();
}
