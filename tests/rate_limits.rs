//! Rate limits (docs/protocol.md 10): failed authentications per client address across nodes,
//! connections per address, joins and client events per connection, and the client address
//! from `X-Forwarded-For` behind a trusted proxy (every test client is 127.0.0.1, the trusted
//! proxy, so the header gives each one its own address).

mod common;

use std::time::Duration;

use common::{eventually, token, GatewayProcess, TestDb, TestGateway, WsClient};
use realtime_gateway::config::Cidr;
use serde_json::json;

/// Settings every gateway here shares: 127.0.0.1 is a trusted proxy.
fn behind_proxy(config: &mut realtime_gateway::Config) {
    config.trusted_proxies = vec![Cidr::parse("127.0.0.1").unwrap()];
}

/// Upgrades to `gw` with `apikey` as the client at `addr`; `Err((status, body))` when refused.
async fn upgrade(gw: &TestGateway, apikey: &str, addr: &str) -> Result<WsClient, (u16, String)> {
    upgrade_url(&gw.ws_url(apikey, "2.0.0"), addr).await
}

/// Upgrades to the socket URL `url` as the client at `addr`.
async fn upgrade_url(url: &str, addr: &str) -> Result<WsClient, (u16, String)> {
    WsClient::try_connect(url, Some(addr)).await
}

/// A token signed with the wrong secret.
fn bad_token() -> String {
    realtime_gateway::auth::sign("not-the-secret-of-the-test-gateway", "anon", None, 3600).unwrap()
}

const BLOCKED: &str = r#"{"error":"Too many failed authentication attempts"}"#;

/// How many `rate_limited` audit records of `kind` the database holds.
async fn audited(db: &TestDb, kind: &str) -> i64 {
    let pool = db.pool().await;
    let count: i64 = sqlx::query_scalar(
        "select count(*) from realtime.audit_log \
          where kind = 'rate_limited' and detail->>'kind' = $1",
    )
    .bind(kind)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    count
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address_across_nodes() {
    let db = TestDb::new().await;
    let a = TestGateway::start_with(&db, behind_proxy).await;
    let b = TestGateway::start_with(&db, behind_proxy).await;
    let bad = bad_token();
    // Five failures from 10.0.0.1, spread over both nodes: each an ordinary 401.
    for gw in [&a, &b, &a, &b, &a] {
        let (status, _) = upgrade(gw, &bad, "10.0.0.1").await.err().unwrap();
        assert_eq!(status, 401);
    }
    // The sixth attempt is refused on either node, even with a good token.
    for gw in [&b, &a] {
        let refused = upgrade(gw, &bad, "10.0.0.1").await.err().unwrap();
        assert_eq!(refused, (429, BLOCKED.to_owned()));
    }
    let good = token("anon", None);
    let refused = upgrade(&b, &good, "10.0.0.1").await.err().unwrap();
    assert_eq!(refused, (429, BLOCKED.to_owned()));
    // Another address is not affected, on either node.
    for gw in [&a, &b] {
        let mut client = upgrade(gw, &good, "10.0.0.2").await.expect("admitted");
        let reply = client.join("realtime:room", json!({})).await;
        assert_eq!(reply["status"], "ok", "{reply}");
    }
    let (status, _) = upgrade(&a, &bad, "10.0.0.2").await.err().unwrap();
    assert_eq!(status, 401, "one failure of another address is a 401");
    eventually(Duration::from_secs(10), "refusals audited", || async {
        audited(&db, "auth_failures").await >= 3
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Upgrades arriving together have their addresses looked up together, in one statement per
/// batch: each gets its own address's answer, whether its window is running and at the limit
/// (blocked), running and under it, over, or never started, for IPv4 and IPv6 alike, and an
/// address asked twice in one batch twice. A blocked address is then known to the node: it is
/// refused without its row.
#[tokio::test]
async fn upgrades_arriving_together_each_get_their_own_address_answer() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, behind_proxy).await;
    let pool = db.pool().await;
    sqlx::query(
        "insert into realtime.auth_failures (addr, window_start, failures) \
         select '10.1.0.' || i, now(), 5 from generate_series(1, 20) i \
         union all select '2001:db8::' || i, now(), 5 from generate_series(1, 5) i \
         union all select '10.2.0.' || i, now() - interval '1 hour', 9 from generate_series(1, 20) i \
         union all select '10.4.0.' || i, now(), 4 from generate_series(1, 20) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let good = token("anon", None);
    let mut addrs: Vec<String> = (1..=20)
        .flat_map(|i| ["10.1.0", "10.2.0", "10.3.0", "10.4.0"].map(|net| format!("{net}.{i}")))
        .chain((1..=5).map(|i| format!("2001:db8::{i}")))
        .chain((1..=5).map(|i| format!("10.1.0.{i}")))
        .chain((1..=5).map(|i| format!("10.3.0.{i}")))
        .collect();
    addrs.push("2001:db8::99".to_owned());
    let blocked = |addr: &str| {
        addr.starts_with("10.1.") || (addr.starts_with("2001:") && addr != "2001:db8::99")
    };
    let results =
        futures_util::future::join_all(addrs.iter().map(|addr| upgrade(&gw, &good, addr))).await;
    for (addr, result) in addrs.iter().zip(results) {
        if blocked(addr) {
            let refused = result.err();
            assert_eq!(refused, Some((429, BLOCKED.to_owned())), "{addr}");
        } else {
            assert!(result.is_ok(), "{addr}: {:?}", result.err());
        }
    }
    sqlx::query("delete from realtime.auth_failures")
        .execute(&pool)
        .await
        .unwrap();
    for addr in ["10.1.0.7", "2001:db8::3"] {
        let refused = upgrade(&gw, &good, addr).await.err();
        assert_eq!(refused, Some((429, BLOCKED.to_owned())), "{addr} again");
    }
    pool.close().await;
    gw.stop().await.unwrap();
}

/// The check fails open: while the database cannot answer it in time (here its table is locked),
/// upgrades are admitted unchecked, as their slots are still taken.
#[tokio::test]
async fn an_upgrade_is_admitted_when_its_address_cannot_be_checked() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, behind_proxy).await;
    let pool = db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table realtime.auth_failures in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let good = token("anon", None);
    let mut client = upgrade(&gw, &good, "10.6.0.1")
        .await
        .expect("admitted unchecked");
    let reply = client.join("realtime:room", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    lock.rollback().await.unwrap();
    pool.close().await;
    gw.stop().await.unwrap();
}

/// The same, with the gateways as two separate processes of the binary.
#[tokio::test]
async fn failed_authentications_are_limited_across_gateway_processes() {
    let db = TestDb::new().await;
    let env = [("TRUSTED_PROXIES", "127.0.0.1")];
    let mut a = GatewayProcess::spawn(&db, "node-a", &env).await;
    let mut b = GatewayProcess::spawn(&db, "node-b", &env).await;
    let bad = bad_token();
    for gw in [&a, &b, &a, &b, &a] {
        let (status, _) = upgrade_url(&gw.ws_url(&bad), "10.0.5.1")
            .await
            .err()
            .unwrap();
        assert_eq!(status, 401);
    }
    let good = token("anon", None);
    for gw in [&b, &a] {
        let refused = upgrade_url(&gw.ws_url(&good), "10.0.5.1")
            .await
            .err()
            .unwrap();
        assert_eq!(
            refused,
            (429, BLOCKED.to_owned()),
            "the 6th attempt, on {}",
            gw.node_id
        );
    }
    upgrade_url(&b.ws_url(&good), "10.0.5.2")
        .await
        .expect("another address is admitted");
    a.terminate();
    b.terminate();
}

#[tokio::test]
async fn a_blocked_address_is_admitted_after_the_window() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        behind_proxy(c);
        c.max_auth_failures = 2;
        c.auth_failure_window = Duration::from_secs(1);
    })
    .await;
    let bad = bad_token();
    for _ in 0..2 {
        let (status, _) = upgrade(&gw, &bad, "10.0.1.1").await.err().unwrap();
        assert_eq!(status, 401);
    }
    let good = token("anon", None);
    let refused = upgrade(&gw, &good, "10.0.1.1").await.err().unwrap();
    assert_eq!(refused, (429, BLOCKED.to_owned()));
    // The window (1 s from the first failure) passes: admitted again.
    let gw_ref = &gw;
    let good_ref = &good;
    eventually(
        Duration::from_secs(10),
        "admitted after the window",
        || async move { upgrade(gw_ref, good_ref, "10.0.1.1").await.is_ok() },
    )
    .await;
    // And a new window starts with the next failure: a 401, not a 429.
    let (status, _) = upgrade(&gw, &bad, "10.0.1.1").await.err().unwrap();
    assert_eq!(status, 401);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        behind_proxy(c);
        c.max_connections_per_addr = 2;
    })
    .await;
    let good = token("anon", None);
    let first = upgrade(&gw, &good, "10.0.2.1").await.expect("first");
    let _second = upgrade(&gw, &good, "10.0.2.1").await.expect("second");
    let refused = upgrade(&gw, &good, "10.0.2.1").await.err().unwrap();
    assert_eq!(
        refused,
        (
            429,
            r#"{"error":"Too many connections from this address"}"#.to_owned()
        )
    );
    let _other = upgrade(&gw, &good, "10.0.2.2")
        .await
        .expect("another address");
    drop(first);
    let good_ref = &good;
    let gw_ref = &gw;
    eventually(
        Duration::from_secs(10),
        "a freed place is reused",
        || async move { upgrade(gw_ref, good_ref, "10.0.2.1").await.is_ok() },
    )
    .await;
    eventually(Duration::from_secs(10), "refusal audited", || async {
        audited(&db, "connections_per_addr").await >= 1
    })
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn joins_over_the_rate_get_the_documented_error() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.joins_per_second = 1;
        c.join_burst = 2;
    })
    .await;
    let mut client = WsClient::anon(&gw).await;
    for i in 0..4 {
        let topic = format!("realtime:room{i}");
        client.send(Some("1"), &topic, "phx_join", json!({})).await;
    }
    let mut reasons = Vec::new();
    while reasons.len() < 4 {
        let m = client.next().await.expect("a reply");
        if m.event == "phx_reply" {
            reasons.push(m.payload["response"]["reason"].clone());
        }
    }
    let limited = json!("ClientJoinRateLimitReached: Too many joins per second");
    assert!(reasons[..2].iter().all(|r| r.is_null()), "{reasons:?}");
    assert!(reasons.contains(&limited), "{reasons:?}");
    // Another connection has its own bucket.
    let mut other = WsClient::anon(&gw).await;
    let reply = other.join("realtime:room0", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    eventually(Duration::from_secs(10), "refusal audited", || async {
        audited(&db, "joins").await == 1
    })
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn events_over_the_rate_get_an_error_and_are_not_relayed() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.events_per_second = 1;
        c.event_burst = 2;
    })
    .await;
    let config = json!({"broadcast": {"ack": true, "self": true}});
    let mut sender = WsClient::anon(&gw).await;
    let mut listener = WsClient::anon(&gw).await;
    assert_eq!(
        sender.join("realtime:room", config.clone()).await["status"],
        "ok"
    );
    assert_eq!(listener.join("realtime:room", config).await["status"], "ok");
    let payload = json!({"type": "broadcast", "event": "msg", "payload": {}});
    let mut refs = Vec::new();
    for _ in 0..4 {
        refs.push(
            sender
                .send(Some("1"), "realtime:room", "broadcast", payload.clone())
                .await,
        );
    }
    let mut statuses = Vec::new();
    while statuses.len() < 4 {
        let m = sender.next().await.expect("a frame");
        if m.event == "phx_reply" {
            assert_eq!(m.msg_ref.as_deref(), Some(refs[statuses.len()].as_str()));
            statuses.push(m.payload.clone());
        }
    }
    let ok = statuses.iter().filter(|s| s["status"] == "ok").count();
    assert!((2..4).contains(&ok), "{statuses:?}");
    let refused = statuses.iter().find(|s| s["status"] == "error").unwrap();
    assert_eq!(
        refused["response"]["reason"],
        "Too many messages per second"
    );
    // The listener's own bucket is full: its broadcast, after the sender's, is relayed and
    // marks the end of what the sender's pushes relayed.
    let marker = json!({"type": "broadcast", "event": "marker", "payload": {}});
    listener
        .send(Some("1"), "realtime:room", "broadcast", marker)
        .await;
    let mut relayed = 0;
    loop {
        let m = listener.next().await.expect("a frame");
        if m.event != "broadcast" {
            continue;
        }
        if m.payload["event"] == "marker" {
            break;
        }
        relayed += 1;
    }
    assert_eq!(relayed, ok, "refused pushes are not relayed");
    eventually(Duration::from_secs(10), "refusal audited once", || async {
        audited(&db, "events").await == 1
    })
    .await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn failed_rest_authentications_count_for_the_address() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, behind_proxy).await;
    let body = r#"{"messages":[]}"#;
    let post = |addr: &'static str, key: &'static str| {
        let headers = [
            ("x-forwarded-for", addr),
            ("apikey", key),
            ("content-type", "application/json"),
        ];
        async move {
            common::http_request(gw.addr, "POST", "/api/broadcast", &headers, body)
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        assert_eq!(post("10.0.3.1", "not-a-jwt").await.0, 401);
    }
    let (status, text) = post("10.0.3.1", "not-a-jwt").await;
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        json!({"message": "Too many failed authentication attempts"})
    );
    // The address's upgrades are refused too; another address is served.
    let good = token("anon", None);
    let refused = upgrade(&gw, &good, "10.0.3.1").await.err().unwrap();
    assert_eq!(refused, (429, BLOCKED.to_owned()));
    assert_eq!(post("10.0.3.2", "not-a-jwt").await.0, 401);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn failed_join_tokens_count_for_the_address() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, behind_proxy).await;
    let good = token("anon", None);
    let mut client = upgrade(&gw, &good, "10.0.4.1").await.expect("admitted");
    for i in 0..5 {
        let topic = format!("realtime:room{i}");
        let r = client
            .send(
                Some("1"),
                &topic,
                "phx_join",
                json!({"access_token": "not-a-jwt"}),
            )
            .await;
        let reply = client.expect_event(&topic, "phx_reply").await;
        assert_eq!(reply.msg_ref.as_deref(), Some(r.as_str()));
        assert_eq!(reply.payload["status"], "error");
    }
    // The failures are counted in the background; then the address is blocked.
    let (gw_ref, good_ref) = (&gw, &good);
    eventually(Duration::from_secs(10), "address blocked", || async move {
        upgrade(gw_ref, good_ref, "10.0.4.1").await.is_err()
    })
    .await;
    let refused = upgrade(&gw, &good, "10.0.4.1").await.err().unwrap();
    assert_eq!(refused, (429, BLOCKED.to_owned()));
    gw.stop().await.unwrap();
}

/// Connections per address and per user are counted across every node of the database: the
/// limit's connections spread over two nodes leave no room on either.
#[tokio::test]
async fn connections_per_address_and_user_are_capped_across_nodes() {
    let db = TestDb::new().await;
    let limits = |c: &mut realtime_gateway::Config| {
        behind_proxy(c);
        c.max_connections_per_addr = 2;
        c.max_connections_per_user = 2;
    };
    let a = TestGateway::start_with(&db, limits).await;
    let b = TestGateway::start_with(&db, limits).await;
    let anon = token("anon", None);
    let first = upgrade(&a, &anon, "10.0.3.1").await.expect("first, on a");
    let _second = upgrade(&b, &anon, "10.0.3.1").await.expect("second, on b");
    for gw in [&a, &b] {
        let refused = upgrade(gw, &anon, "10.0.3.1").await.err().unwrap();
        assert_eq!(
            refused,
            (
                429,
                r#"{"error":"Too many connections from this address"}"#.to_owned()
            )
        );
    }
    let user = token(
        "authenticated",
        Some("dddddddd-0000-4000-8000-000000000004"),
    );
    let _u1 = upgrade(&a, &user, "10.0.4.1").await.expect("user on a");
    let _u2 = upgrade(&b, &user, "10.0.4.2").await.expect("user on b");
    let refused = upgrade(&b, &user, "10.0.4.3").await.err().unwrap();
    assert_eq!(
        refused,
        (
            429,
            r#"{"error":"Too many connections for this user"}"#.to_owned()
        )
    );
    // A connection closed on one node makes room on the other.
    drop(first);
    let (b_ref, anon_ref) = (&b, &anon);
    eventually(
        Duration::from_secs(10),
        "the freed place is taken on the other node",
        || async move { upgrade(b_ref, anon_ref, "10.0.3.1").await.is_ok() },
    )
    .await;
    eventually(Duration::from_secs(10), "refusals audited", || async {
        audited(&db, "connections_per_addr").await >= 2
            && audited(&db, "connections_per_user").await >= 1
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
