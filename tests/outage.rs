//! A node cut from the database for longer than `HEARTBEAT_TIMEOUT` is declared lost by the
//! other node while its sessions stay open; when the database is back it re-registers them, so
//! the registry, the connection slots and the audit log match the sessions really open.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{eventually, token, Proxy, TestDb, TestGateway, WsClient};
use serde_json::json;

const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(1);

async fn node(url: &str, id: &str, cap: u32) -> TestGateway {
    let id = id.to_owned();
    TestGateway::start_url(url, move |c| {
        c.heartbeat_interval = INTERVAL;
        c.heartbeat_timeout = TIMEOUT;
        c.max_connections = cap;
        c.node_id = id;
    })
    .await
}

async fn strings(db: &TestDb, sql: &str) -> BTreeSet<String> {
    let mut conn = db.connect().await;
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Heartbeats every client (the gateways reap a client silent for `TIMEOUT`) and checks the
/// reply.
async fn beat(clients: &mut [&mut WsClient]) {
    for c in clients.iter_mut() {
        c.send(None, "phoenix", "heartbeat", json!({})).await;
        let reply = c.expect_event("phoenix", "phx_reply").await;
        assert_eq!(reply.payload["status"], "ok");
    }
}

/// Keeps `clients` heartbeating until `check` holds, failing after `patience`.
async fn beating_until<F, Fut>(
    clients: &mut [&mut WsClient],
    patience: Duration,
    what: &str,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        beat(clients).await;
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?} waiting for: {what}"
        );
        // Heartbeat pacing, well within the timeout; the check is the synchronization.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// `node/channel` of every active registry row.
const ACTIVE: &str = "select node_id || '/' || channel_name \
                      from public.realtime_subscription_registry where is_active";
/// `node/connection` of every held slot.
const HELD: &str = "select node_id || '/' || connection_id from realtime.connection_slots \
                    where node_id is not null";

/// `node/connection` of every session open on `nodes`.
fn open_sessions(nodes: &[&TestGateway]) -> BTreeSet<String> {
    nodes
        .iter()
        .flat_map(|gw| {
            gw.state
                .session
                .sessions
                .handles()
                .into_iter()
                .map(|h| format!("{}/{}", gw.config.node_id, h.connection_id))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn declared_lost(db: &TestDb, node: &str) -> bool {
    db.count(&format!(
        "select count(*) from realtime.audit_log \
             where kind = 'node_lost' and detail->>'lost_node' = '{node}'"
    ))
    .await
        > 0
        && db
            .count(&format!(
                "select count(*) from realtime.nodes where node_id = '{node}'"
            ))
            .await
            == 0
}

/// Two nodes on one database, one of them through a proxy cut for several heartbeat timeouts:
/// the direct node declares it lost (rows closed, slots freed) while its clients keep
/// exchanging broadcasts and heartbeats, leave and join; once the proxy is restored, the
/// registry's active rows are exactly the channels joined, the held slots exactly the open
/// connections, and the audit log has `node_lost` and `node_reregistered`.
#[tokio::test]
async fn a_node_declared_lost_reregisters_its_live_sessions() {
    let db = TestDb::new().await;
    let (proxy, via) = Proxy::for_url(&db.url).await;
    let direct = node(&db.url, "direct", 50).await;
    let cut = node(&via, "cut", 50).await;
    let key = token("anon", None);
    let mut c1 = WsClient::connect(&cut.ws_url(&key, "2.0.0")).await;
    let mut c2 = WsClient::connect(&cut.ws_url(&key, "2.0.0")).await;
    let mut c3 = WsClient::connect(&cut.ws_url(&key, "2.0.0")).await;
    let mut d1 = WsClient::connect(&direct.ws_url(&key, "2.0.0")).await;
    for (i, c) in [&mut c1, &mut c2, &mut c3].into_iter().enumerate() {
        c.join("realtime:room", json!({})).await;
        c.join(&format!("realtime:c{}", i + 1), json!({})).await;
    }
    d1.join("realtime:d1", json!({})).await;
    let before = set(&[
        "cut/room",
        "cut/room",
        "cut/room",
        "cut/c1",
        "cut/c2",
        "cut/c3",
        "direct/d1",
    ]);
    eventually(
        Duration::from_secs(20),
        "rows and slots written",
        || async {
            strings(&db, ACTIVE).await == before
                && strings(&db, HELD).await == open_sessions(&[&direct, &cut])
        },
    )
    .await;
    assert_eq!(
        db.count("select count(*) from realtime.connection_slots where node_id is not null")
            .await,
        4
    );

    proxy.cut();
    let outage = std::time::Instant::now();
    beating_until(
        &mut [&mut c1, &mut c2, &mut c3, &mut d1],
        Duration::from_secs(20),
        "the direct node declares the cut node lost",
        || declared_lost(&db, "cut"),
    )
    .await;
    // Declared lost: its rows closed and its slots freed by the direct node.
    assert_eq!(
        strings(&db, ACTIVE).await,
        set(&["direct/d1"]),
        "the cut node's rows are closed"
    );
    assert_eq!(
        strings(
            &db,
            "select node_id from realtime.connection_slots where node_id is not null"
        )
        .await,
        set(&["direct"])
    );
    // Its sessions are in fact served: broadcasts among them, leaves and joins.
    for n in 0..3 {
        let message = json!({"type": "broadcast", "event": "tick", "payload": {"n": n}});
        c1.send(None, "realtime:room", "broadcast", message).await;
        for c in [&mut c2, &mut c3] {
            let got = c.expect_event("realtime:room", "broadcast").await;
            assert_eq!(got.payload["payload"]["n"], n);
        }
        beat(&mut [&mut c1, &mut c2, &mut c3, &mut d1]).await;
    }
    drop(c3);
    c2.send(Some("90"), "realtime:c2", "phx_leave", json!({}))
        .await;
    c2.expect_event("realtime:c2", "phx_close").await;
    c1.join("realtime:during", json!({})).await;
    // The outage lasts several timeouts.
    beating_until(
        &mut [&mut c1, &mut c2, &mut d1],
        Duration::from_secs(10),
        "three heartbeat timeouts of outage",
        || async { outage.elapsed() > 3 * TIMEOUT },
    )
    .await;
    let message = json!({"type": "broadcast", "event": "late", "payload": {}});
    c1.send(None, "realtime:room", "broadcast", message).await;
    c2.expect_event("realtime:room", "broadcast").await;

    proxy.restore();
    let after = set(&["cut/room", "cut/room", "cut/c1", "cut/during", "direct/d1"]);
    beating_until(
        &mut [&mut c1, &mut c2, &mut d1],
        Duration::from_secs(40),
        "registry and slots match the open sessions",
        || async {
            strings(&db, ACTIVE).await == after
                && strings(&db, HELD).await == open_sessions(&[&direct, &cut])
        },
    )
    .await;
    assert_eq!(open_sessions(&[&direct, &cut]).len(), 3);
    // The rows are those of the open connections, one per channel.
    assert_eq!(
        db.count(
            "select count(*) from public.realtime_subscription_registry r \
             where r.is_active and not exists (select from realtime.connection_slots s \
                 where s.connection_id = r.connection_id and s.node_id = r.node_id)"
        )
        .await,
        0
    );
    beating_until(
        &mut [&mut c1, &mut c2, &mut d1],
        Duration::from_secs(20),
        "node_reregistered audited",
        || async {
            db.count(
                "select count(*) from realtime.audit_log where kind = 'node_reregistered' \
                 and node_id = 'cut' and (detail->>'connections')::int = 2 \
                 and (detail->>'reclaimed')::int = 0",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        db.count("select count(*) from realtime.audit_log where kind = 'cap_reclaimed'")
            .await,
        0
    );
    // Still served after the re-registration, and what ends now is recorded.
    c2.send(Some("91"), "realtime:room", "phx_leave", json!({}))
        .await;
    c2.expect_event("realtime:room", "phx_close").await;
    let after = set(&["cut/room", "cut/c1", "cut/during", "direct/d1"]);
    beating_until(
        &mut [&mut c1, &mut c2, &mut d1],
        Duration::from_secs(20),
        "a leave after the outage",
        || async { strings(&db, ACTIVE).await == after },
    )
    .await;
    drop((c1, c2, d1));
    cut.stop().await.unwrap();
    direct.stop().await.unwrap();
    assert_eq!(
        db.count("select count(*) from public.realtime_subscription_registry where is_active")
            .await,
        0
    );
}

/// Cap 4: the cut node holds 3 connections; while it is declared lost, the direct node admits 3
/// (the cap counts only those). When the cut node is back only one slot is free: it keeps its
/// oldest connection and closes the two newest with 4004, audited `cap_reclaimed`, so the slots
/// held equal the cap and the open connections.
#[tokio::test]
async fn a_node_back_over_the_cap_closes_its_newest_sessions() {
    let db = TestDb::new().await;
    let (proxy, via) = Proxy::for_url(&db.url).await;
    let direct = node(&db.url, "direct", 4).await;
    let cut = node(&via, "cut", 4).await;
    let key = token("anon", None);
    let mut on_cut = Vec::new();
    for i in 0..3 {
        let mut c = WsClient::connect(&cut.ws_url(&key, "2.0.0")).await;
        c.join(&format!("realtime:k{i}"), json!({})).await;
        // One after another, so that their ages are known.
        eventually(Duration::from_secs(10), "slot recorded", || async {
            db.count("select count(*) from realtime.connection_slots where node_id = 'cut'")
                .await
                == i + 1
        })
        .await;
        on_cut.push(c);
    }
    assert_eq!(cut.state.session.sessions.len(), 3);
    let [k0, k1, k2] = &mut on_cut[..] else {
        unreachable!()
    };
    proxy.cut();
    beating_until(
        &mut [k0, k1, k2],
        Duration::from_secs(20),
        "the cut node declared lost",
        || declared_lost(&db, "cut"),
    )
    .await;
    let mut on_direct = Vec::new();
    for i in 0..3 {
        let mut c = WsClient::connect(&direct.ws_url(&key, "2.0.0")).await;
        c.join(&format!("realtime:d{i}"), json!({})).await;
        on_direct.push(c);
        beat(&mut [k0, k1, k2]).await;
    }
    let [d0, d1, d2] = &mut on_direct[..] else {
        unreachable!()
    };
    proxy.restore();
    // The two newest connections of the cut node are closed; the oldest is kept.
    beating_until(
        &mut [k0, d0, d1, d2],
        Duration::from_secs(40),
        "the cut node re-registered",
        || async {
            db.count("select count(*) from realtime.audit_log where kind = 'node_reregistered'")
                .await
                == 1
        },
    )
    .await;
    assert_eq!(k1.closed_with(Duration::from_secs(5)).await, Some(4004));
    assert_eq!(k2.closed_with(Duration::from_secs(5)).await, Some(4004));
    let expected = set(&["cut/k0", "direct/d0", "direct/d1", "direct/d2"]);
    beating_until(
        &mut [k0, d0, d1, d2],
        Duration::from_secs(20),
        "registry, slots and audit match the cap",
        || async {
            strings(&db, ACTIVE).await == expected
                && strings(&db, HELD).await == open_sessions(&[&direct, &cut])
                && db
                    .count("select count(*) from realtime.audit_log where kind = 'cap_reclaimed'")
                    .await
                    == 2
        },
    )
    .await;
    assert_eq!(open_sessions(&[&direct, &cut]).len(), 4);
    assert_eq!(
        db.count("select count(*) from public.realtime_subscription_registry \
             where channel_name in ('k1', 'k2') and not is_active and close_reason = 'cap_reclaimed'"
        )
        .await,
        2
    );
    assert_eq!(
        db.count(
            "select count(*) from realtime.audit_log where kind = 'node_reregistered' \
             and (detail->>'reclaimed')::int = 2 and (detail->>'connections')::int = 1"
        )
        .await,
        1
    );
    // The cap holds: a fifth connection is refused.
    let refused = tokio_tungstenite::connect_async(direct.ws_url(&key, "2.0.0")).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 429),
        "a connection over the cap is refused"
    );
    drop((on_cut, on_direct));
    cut.stop().await.unwrap();
    direct.stop().await.unwrap();
}
