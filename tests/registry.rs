//! The subscription registry, the heartbeat reaper, the cluster-wide connection cap and the
//! audit log, against a real PostgreSQL and real WebSocket clients.

mod common;

use std::time::Duration;

use common::{eventually, token, GatewayProcess, TestDb, TestGateway, WsClient};
use serde_json::json;
use sqlx::Row;

async fn wait_count(db: &TestDb, sql: &str, expected: i64) {
    eventually(Duration::from_secs(20), sql, || async {
        db.count(sql).await == expected
    })
    .await;
}

/// 50 clients join 3 channels each: 150 active rows with the right fields; a leave flips exactly
/// its row, a closed socket flips the rest, and a clean shutdown leaves nothing active.
#[tokio::test]
async fn every_join_is_a_row_and_every_end_closes_it() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut conn = db.connect().await;
    sqlx::query("create table public.todos (id bigint primary key, owner uuid)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("alter publication supabase_realtime add table public.todos")
        .execute(&mut conn)
        .await
        .unwrap();
    let user = "6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11";
    let key = token("authenticated", Some(user));
    let mut clients = Vec::new();
    for i in 0..50 {
        let url = format!(
            "ws://{}/realtime/v1/websocket?apikey={key}&component=Dash{}&vsn=2.0.0",
            gw.addr,
            i % 5
        );
        let mut c = WsClient::connect(&url).await;
        c.subscribe(
            &format!("realtime:changes-{i}"),
            json!([{"event": "INSERT", "schema": "public", "table": "todos", "filter": "id=eq.1"}]),
        )
        .await;
        c.join(&format!("realtime:room-{i}"), json!({"component": "Chat"}))
            .await;
        c.join(&format!("realtime:other-{i}"), json!({})).await;
        clients.push(c);
    }
    let active = "select count(*) from public.realtime_subscription_registry where is_active";
    wait_count(&db, active, 150).await;
    // Row ids are UUIDv7, in the order of the joins (the primary key grows at its end).
    let by_id: Vec<String> = sqlx::query_scalar(
        "select channel_name from public.realtime_subscription_registry \
         where substr(id::text, 15, 1) = '7' order by id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let joined: Vec<String> = (0..50)
        .flat_map(|i| {
            [
                format!("changes-{i}"),
                format!("room-{i}"),
                format!("other-{i}"),
            ]
        })
        .collect();
    assert_eq!(by_id, joined, "registry ids: version 7, in join order");
    let row = sqlx::query(
        "select subscription_id, user_id::text as user_id, component_name, table_filters, \
                node_id, connection_id, remote_addr, last_heartbeat_at is not null as hb \
         from public.realtime_subscription_registry where channel_name = 'changes-7'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("user_id"), user);
    assert_eq!(row.get::<String, _>("component_name"), "Dash2");
    assert_eq!(
        row.get::<serde_json::Value, _>("table_filters"),
        json!([{"event": "INSERT", "schema": "public", "table": "todos", "filter": "id=eq.1"}])
    );
    assert_eq!(row.get::<String, _>("node_id"), gw.config.node_id);
    assert!(row
        .get::<String, _>("remote_addr")
        .starts_with("127.0.0.1:"));
    assert!(row.get::<bool, _>("hb"));
    let sub: String = row.get("subscription_id");
    let conn_id: uuid::Uuid = row.get("connection_id");
    assert_eq!(sub.split(':').next().unwrap(), conn_id.to_string());
    let component: String = sqlx::query_scalar(
        "select component_name from public.realtime_subscription_registry \
         where channel_name = 'room-7'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        component, "Chat",
        "join config component wins over the socket param"
    );
    assert_eq!(
        db.count("select count(*) from realtime.active_subscriptions")
            .await,
        150
    );

    // Leaving one channel flips exactly that row.
    clients[3]
        .send(Some("99"), "realtime:room-3", "phx_leave", json!({}))
        .await;
    let left = "select count(*) from public.realtime_subscription_registry \
                where not is_active and close_reason = 'leave' and channel_name = 'room-3' \
                and closed_at is not null";
    wait_count(&db, left, 1).await;
    assert_eq!(db.count(active).await, 149);

    // Closing the socket flips the rest of that connection.
    drop(clients.remove(3));
    let closed = "select count(*) from public.realtime_subscription_registry \
                  where close_reason = 'socket_closed' and channel_name in ('changes-3', 'other-3')";
    wait_count(&db, closed, 2).await;
    assert_eq!(db.count(active).await, 147);

    // A clean shutdown ends every row with a reason.
    gw.stop().await.unwrap();
    assert_eq!(db.count(active).await, 0);
    assert_eq!(
        db.count(
            "select count(*) from public.realtime_subscription_registry \
             where close_reason is null or closed_at is null"
        )
        .await,
        0
    );
    assert_eq!(
        db.count("select count(*) from public.realtime_subscription_registry where close_reason = 'shutdown'"
        )
        .await,
        147
    );
    assert_eq!(db.count("select count(*) from realtime.nodes").await, 0);
}

/// A client that stops heartbeating is closed (4000) and its rows reaped within interval +
/// timeout; a client that keeps heartbeating is never reaped.
#[tokio::test]
async fn silent_clients_are_reaped_and_live_ones_never() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.heartbeat_timeout = Duration::from_millis(800);
    })
    .await;
    let mut silent = WsClient::anon(&gw).await;
    silent.join("realtime:quiet", json!({})).await;
    let mut live = WsClient::anon(&gw).await;
    live.join("realtime:chatty", json!({})).await;
    let started = std::time::Instant::now();
    // The live client heartbeats like realtime-js, at a quarter of the timeout, for 3 s.
    let beating = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            ticker.tick().await;
            live.send(None, "phoenix", "heartbeat", json!({})).await;
            let reply = live.expect_event("phoenix", "phx_reply").await;
            assert_eq!(reply.payload["status"], "ok");
        }
        live
    });
    assert_eq!(silent.closed_with(Duration::from_secs(5)).await, Some(4000));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(200 + 800 + 600),
        "reaped after {elapsed:?}"
    );
    wait_count(
        &db,
        "select count(*) from public.realtime_subscription_registry \
         where channel_name = 'quiet' and not is_active and close_reason = 'reaped'",
        1,
    )
    .await;
    wait_count(
        &db,
        "select count(*) from realtime.audit_log where kind = 'reaped'",
        1,
    )
    .await;
    let mut live = beating.await.unwrap();
    // Still open and still answered after 3 s of heartbeats: never reaped.
    live.send(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(
        live.expect_event("phoenix", "phx_reply").await.payload["status"],
        "ok"
    );
    assert_eq!(
        db.count(
            "select count(*) from public.realtime_subscription_registry \
             where channel_name = 'chatty' and is_active"
        )
        .await,
        1
    );
    gw.stop().await.unwrap();
}

/// Heartbeats update registry rows in place: a tick sets `last_heartbeat_at`, which no index
/// holds, so on a page with room each of its updates is heap-only (no new index entry, the old
/// version reclaimed at a later visit to the page). Only heartbeats update these rows here, and
/// PostgreSQL's statistics count heap-only updates apart from the others. Ten rows share one
/// page with room to spare, so the room new pages keep for full ones (fillfactor 70, migration
/// 0032) is checked in the catalog.
#[tokio::test]
async fn heartbeats_update_registry_rows_in_place() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.heartbeat_timeout = Duration::from_secs(60);
    })
    .await;
    let options: Vec<String> = sqlx::query_scalar(
        "select unnest(reloptions) from pg_class \
         where oid = 'public.realtime_subscription_registry'::regclass",
    )
    .fetch_all(&mut db.connect().await)
    .await
    .unwrap();
    assert!(
        options.iter().any(|o| o == "fillfactor=70"),
        "registry pages keep room for heartbeats: {options:?}"
    );
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = WsClient::anon(&gw).await;
        c.join(&format!("realtime:beating-{i}"), json!({})).await;
        clients.push(c);
    }
    wait_count(
        &db,
        "select count(*) from public.realtime_subscription_registry where is_active",
        10,
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = tokio::spawn({
        let stop = std::sync::Arc::clone(&stop);
        async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                ticker.tick().await;
                for c in &mut clients {
                    c.send(None, "phoenix", "heartbeat", json!({})).await;
                    let reply = c.expect_event("phoenix", "phx_reply").await;
                    assert_eq!(reply.payload["status"], "ok");
                }
            }
            clients
        }
    });
    // Three ticks' worth (each updates the ten rows); statistics reach the view within seconds.
    // `db.count` reads on a connection of its own, so each read sees the statistics anew.
    let table = "where relid = 'public.realtime_subscription_registry'::regclass";
    let counted = format!("select count(*) from pg_stat_user_tables {table} and n_tup_upd >= 30");
    wait_count(&db, &counted, 1).await;
    let (updated, in_place): (i64, i64) = sqlx::query_as(&format!(
        "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables {table}"
    ))
    .fetch_one(&mut db.connect().await)
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(
        in_place, updated,
        "every heartbeat update heap-only ({in_place} of {updated}): an index on \
         last_heartbeat_at makes each one a new entry in every index"
    );
    beating.await.unwrap();
    gw.stop().await.unwrap();
}

/// A node killed with SIGKILL: its rows end as `node_lost` and its cap slots are free again
/// within the stale timeout, done by the surviving node.
#[tokio::test]
async fn killed_node_rows_and_slots_are_released() {
    let db = TestDb::new().await;
    let env = [
        ("HEARTBEAT_INTERVAL", "200ms"),
        ("HEARTBEAT_TIMEOUT", "1s"),
        ("MAX_CONNECTIONS", "10"),
    ];
    let mut doomed = GatewayProcess::spawn(&db, "doomed", &env).await;
    let survivor = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.heartbeat_timeout = Duration::from_secs(1);
        c.max_connections = 10;
        c.node_id = "survivor".into();
    })
    .await;
    let mut on_doomed = Vec::new();
    for i in 0..4 {
        let mut c = WsClient::connect(&doomed.ws_url(&token("anon", None))).await;
        c.join(&format!("realtime:d{i}"), json!({})).await;
        on_doomed.push(c);
    }
    let held = "select count(*) from realtime.connection_slots where node_id = 'doomed'";
    wait_count(&db, held, 4).await;
    wait_count(
        &db,
        "select count(*) from public.realtime_subscription_registry where node_id = 'doomed' and is_active",
        4,
    )
    .await;
    doomed.kill9();
    let killed_at = std::time::Instant::now();
    wait_count(&db, held, 0).await;
    wait_count(
        &db,
        "select count(*) from public.realtime_subscription_registry \
         where node_id = 'doomed' and not is_active and close_reason = 'node_lost'",
        4,
    )
    .await;
    assert!(
        killed_at.elapsed()
            < Duration::from_secs(1) + Duration::from_millis(200) + Duration::from_secs(2),
        "released after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        db.count("select count(*) from realtime.audit_log where kind = 'node_lost'")
            .await,
        1
    );
    // All ten slots are usable again.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(WsClient::anon(&survivor).await);
    }
    wait_count(
        &db,
        "select count(*) from realtime.connection_slots where node_id is not null",
        10,
    )
    .await;
    survivor.stop().await.unwrap();
}

/// 300 clients connect at once across 3 gateway processes with cap 200: exactly 200 are
/// admitted, 100 are refused with 429 and the clients' text, and the audit log has 100
/// refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_is_exact_across_nodes() {
    let db = TestDb::new().await;
    let env = [("MAX_CONNECTIONS", "200")];
    let nodes = [
        GatewayProcess::spawn(&db, "n1", &env).await,
        GatewayProcess::spawn(&db, "n2", &env).await,
        GatewayProcess::spawn(&db, "n3", &env).await,
    ];
    let key = token("anon", None);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(300));
    let mut attempts = Vec::new();
    for i in 0..300 {
        let url = nodes[i % 3].ws_url(&key);
        let barrier = std::sync::Arc::clone(&barrier);
        attempts.push(tokio::spawn(async move {
            barrier.wait().await;
            match tokio_tungstenite::connect_async(&url).await {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    let body = response.body().clone().unwrap_or_default();
                    Err((
                        response.status().as_u16(),
                        String::from_utf8_lossy(&body).into_owned(),
                    ))
                }
                Err(e) => panic!("unexpected connect error: {e}"),
            }
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(ws) => admitted.push(ws),
            Err((status, body)) => {
                assert_eq!(status, 429);
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&body).unwrap(),
                    json!({"error": "Too many connected users"})
                );
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (200, 100));
    wait_count(
        &db,
        "select count(*) from realtime.audit_log where kind = 'cap_refused'",
        100,
    )
    .await;
    assert_eq!(
        db.count("select count(*) from realtime.connection_slots where node_id is not null")
            .await,
        200
    );
    drop(admitted);
    wait_count(
        &db,
        "select count(*) from realtime.connection_slots where node_id is not null",
        0,
    )
    .await;
    drop(nodes);
}

/// With the database stopped for 10 s, connected clients keep being served (heartbeats answered,
/// broadcasts delivered, channels joined and left), and the registry is correct once it is back.
#[tokio::test]
async fn database_outage_loses_no_registry_update() {
    use realtime_gateway::pg::embedded::{Cluster, Tuning};
    // A cluster of this test's own: stopping the shared one would hurt the other tests.
    let dir = common::temp_dir("rg-outage");
    let cluster = Cluster::new(&dir.join("pg")).unwrap();
    cluster.init().unwrap();
    let running = cluster.start(&Tuning::for_tests()).unwrap();
    let port = running.port;
    let url = running.url("postgres");
    let gw = TestGateway::start_url(&url, |c| {
        c.heartbeat_interval = Duration::from_millis(500);
        c.heartbeat_timeout = Duration::from_secs(30);
    })
    .await;
    let mut a = WsClient::anon(&gw).await;
    a.join("realtime:before", json!({})).await;
    a.join("realtime:room", json!({})).await;
    let mut b = WsClient::anon(&gw).await;
    b.join("realtime:room", json!({})).await;
    let registry = |sql: &'static str| {
        let url = url.clone();
        async move {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    };
    eventually(Duration::from_secs(10), "first row", || async {
        registry("select count(*) from public.realtime_subscription_registry where is_active").await
            == 3
    })
    .await;
    running.stop().unwrap();
    // The database is down: the session keeps working.
    let outage = std::time::Instant::now();
    a.join("realtime:during", json!({})).await;
    a.send(Some("50"), "realtime:before", "phx_leave", json!({}))
        .await;
    a.expect_event("realtime:before", "phx_close").await;
    let mut n = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        a.send(None, "phoenix", "heartbeat", json!({})).await;
        let reply = a.expect_event("phoenix", "phx_reply").await;
        assert_eq!(reply.payload["status"], "ok");
        // Delivery between the node's clients goes on.
        n += 1;
        let message = json!({"type": "broadcast", "event": "tick", "payload": {"n": n}});
        a.send(None, "realtime:room", "broadcast", message).await;
        let got = b.expect_event("realtime:room", "broadcast").await;
        assert_eq!(got.payload["payload"]["n"], n);
        tokio::time::sleep(Duration::from_millis(500)).await; // heartbeat pacing
    }
    let running = cluster.start_on(Some(port), &Tuning::for_tests()).unwrap();
    let check = "select count(*) from public.realtime_subscription_registry \
                 where (channel_name = 'before' and not is_active and close_reason = 'leave') \
                    or (channel_name = 'during' and is_active)";
    eventually(Duration::from_secs(30), "registry caught up", || async {
        registry(check).await == 2
    })
    .await;
    gw.stop().await.unwrap();
    running.stop().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// Reads the status of the reply to a join sent on `topic`.
async fn join_status(client: &mut WsClient, topic: &str) -> String {
    let reply = client.expect_event(topic, "phx_reply").await;
    reply.payload["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// With a cap of 3, twelve connections one after another each join one well-formed channel and
/// do one thing that used to poison every registry batch (the same join ref twice, no join ref,
/// a user `auth.users` does not know, a 20,000-character topic): every connection is admitted,
/// every slot comes back, every well-formed join has its row, and a client connected throughout
/// keeps being served.
#[tokio::test]
async fn odd_joins_unknown_users_and_long_topics_poison_nothing() {
    // A Supabase-style auth schema before the gateway migrates, so the foreign key exists.
    let db = TestDb::empty().await;
    let mut conn = db.connect().await;
    sqlx::query("create schema auth")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("create table auth.users (id uuid primary key)")
        .execute(&mut conn)
        .await
        .unwrap();
    let known = uuid::Uuid::new_v4();
    sqlx::query("insert into auth.users (id) values ($1)")
        .bind(known)
        .execute(&mut conn)
        .await
        .unwrap();
    let gw = TestGateway::start_with(&db, |c| c.max_connections = 3).await;
    assert_eq!(
        db.count(
            "select count(*) from pg_constraint \
             where conname = 'realtime_subscription_registry_user_id_fkey'"
        )
        .await,
        1,
        "the user foreign key exists"
    );
    let known_key = token("authenticated", Some(&known.to_string()));
    let mut bystander = WsClient::connect(&gw.ws_url(&known_key, "2.0.0")).await;
    bystander.join("realtime:lobby", json!({})).await;

    let unknown = uuid::Uuid::new_v4();
    let unknown_key = token("authenticated", Some(&unknown.to_string()));
    let long_name = "x".repeat(20_000);
    let taken = "select count(*) from realtime.connection_slots where node_id is not null";
    const ROUNDS: usize = 12;
    let mut long_accepted = 0;
    for i in 0..ROUNDS {
        // The previous connection's slot has come back (the bystander holds one).
        eventually(Duration::from_secs(10), "a slot released", || async {
            db.count(taken).await <= 1
        })
        .await;
        let key = if i % 4 == 2 { &unknown_key } else { &known_key };
        // Panics on a refused upgrade (429).
        let mut c = WsClient::connect(&gw.ws_url(key, "2.0.0")).await;
        c.join(&format!("realtime:ok-{i}"), json!({})).await;
        match i % 4 {
            0 => {
                for side in ["a", "b"] {
                    let topic = format!("realtime:dup-{side}-{i}");
                    c.send(Some("7"), &topic, "phx_join", json!({"config": {}}))
                        .await;
                    assert_eq!(join_status(&mut c, &topic).await, "ok");
                }
            }
            1 => {
                for side in ["a", "b"] {
                    let topic = format!("realtime:nullref-{side}-{i}");
                    c.send(None, &topic, "phx_join", json!({"config": {}}))
                        .await;
                    assert_eq!(join_status(&mut c, &topic).await, "ok");
                }
            }
            2 => {
                c.join(&format!("realtime:unknown-{i}"), json!({})).await;
            }
            _ => {
                // Another limit may refuse the topic at join; the registry must cope if not.
                let topic = format!("realtime:{long_name}");
                c.send(Some("9"), &topic, "phx_join", json!({"config": {}}))
                    .await;
                if join_status(&mut c, &topic).await == "ok" {
                    long_accepted += 1;
                }
            }
        }
        drop(c);
    }
    eventually(
        Duration::from_secs(10),
        "every slot but one back",
        || async { db.count(taken).await == 1 },
    )
    .await;
    let rows = |filter: &str| {
        format!("select count(*) from public.realtime_subscription_registry where {filter}")
    };
    wait_count(&db, &rows("channel_name like 'ok-%'"), ROUNDS as i64).await;
    wait_count(&db, &rows("channel_name like 'dup-%'"), 6).await;
    wait_count(&db, &rows("channel_name like 'nullref-%'"), 6).await;
    wait_count(
        &db,
        &rows(&format!(
            "channel_name like 'unknown-%' and user_id is null and claimed_user_id = '{unknown}'"
        )),
        3,
    )
    .await;
    wait_count(
        &db,
        &rows("channel_name like 'xxx%' and octet_length(channel_name) = 1024"),
        long_accepted,
    )
    .await;
    // The well-formed joins of the unknown user's connections are recorded the same way.
    assert_eq!(
        db.count(&rows(&format!(
            "claimed_user_id = '{unknown}' and user_id is null"
        )))
        .await,
        6
    );
    assert_eq!(
        db.count(&rows(&format!(
            "channel_name = 'lobby' and user_id = '{known}'"
        )))
        .await,
        1
    );
    // Every connection that came and went has ended its rows.
    wait_count(&db, &rows("is_active and channel_name <> 'lobby'"), 0).await;
    assert_eq!(
        db.count(
            "select count(*) from realtime.audit_log \
             where kind in ('cap_refused', 'registry_row_failed')"
        )
        .await,
        0
    );
    let ids = db
        .count("select count(distinct subscription_id) from public.realtime_subscription_registry")
        .await;
    assert_eq!(
        ids,
        db.count(&rows("true")).await,
        "subscription ids unique"
    );

    // The bystander is still served: heartbeats answered, a new join recorded.
    bystander
        .send(None, "phoenix", "heartbeat", json!({}))
        .await;
    assert_eq!(
        bystander.expect_event("phoenix", "phx_reply").await.payload["status"],
        "ok"
    );
    bystander.join("realtime:after", json!({})).await;
    wait_count(&db, &rows("channel_name = 'after' and is_active"), 1).await;
    gw.stop().await.unwrap();
}

/// One flush holding rows the database refuses (a check constraint, a duplicate subscription
/// id) and a 20,000-character channel: the refused rows are audited and counted, every other
/// row of the batch lands, and a slot released in the same flush is freed.
#[tokio::test]
async fn one_refused_row_fails_alone_and_its_batch_lands() {
    use realtime_gateway::registry::{store, JoinRow, Registry};
    let db = TestDb::new().await;
    let pool = db.pool().await;
    sqlx::query(
        "alter table public.realtime_subscription_registry \
         add constraint test_no_poison check (channel_name <> 'poison')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let shutdown = realtime_gateway::Shutdown::new();
    let settings = common::registry_settings("batch-node", 4);
    let registry = Registry::start(pool.clone(), settings, &shutdown)
        .await
        .unwrap();
    let holder = uuid::Uuid::new_v4();
    let slot = store::acquire_slots(&pool, "batch-node", &[holder], 4)
        .await
        .unwrap();
    assert_eq!(slot.len(), 1);
    let connection = uuid::Uuid::new_v4();
    let row = |channel: String, subscription_id: String| JoinRow {
        id: uuid::Uuid::new_v4(),
        subscription_id,
        channel_name: channel,
        user_id: None,
        component_name: None,
        table_filters: serde_json::value::to_raw_value(&json!([])).unwrap(),
        connection_id: connection,
        remote_addr: "127.0.0.1:1".into(),
        created_at: chrono::Utc::now(),
    };
    // Reported back to back, so they are pending together (one flush).
    for i in 0..20 {
        let channel = if i == 7 {
            "poison".to_owned()
        } else {
            format!("fine-{i}")
        };
        registry.joined(row(channel, format!("{connection}:{i}")));
    }
    registry.joined(row("fine-dup-a".into(), "dup".into()));
    registry.joined(row("fine-dup-b".into(), "dup".into()));
    registry.joined(row("y".repeat(20_000), format!("{connection}:long")));
    registry.release_slot(slot[0].0, holder);
    registry.audit("test_marker", None, None, json!({}));

    let rows = |filter: &str| {
        format!("select count(*) from public.realtime_subscription_registry where {filter}")
    };
    // 19 of the 20, one of the duplicate pair, and the long channel's prefix.
    wait_count(&db, &rows("channel_name like 'fine-%'"), 20).await;
    wait_count(&db, &rows("channel_name like 'fine-dup-%'"), 1).await;
    wait_count(
        &db,
        &rows("channel_name like 'yyy%' and octet_length(channel_name) = 1024"),
        1,
    )
    .await;
    assert_eq!(db.count(&rows("channel_name = 'poison'")).await, 0);
    wait_count(
        &db,
        "select count(*) from realtime.audit_log where kind = 'registry_row_failed' \
         and detail->>'constraint' = 'test_no_poison' and detail->>'channel' = 'poison' \
         and detail->>'sqlstate' = '23514'",
        1,
    )
    .await;
    wait_count(
        &db,
        "select count(*) from realtime.audit_log where kind = 'registry_row_failed' \
         and detail->>'constraint' = 'realtime_subscription_registry_active_subscription'",
        1,
    )
    .await;
    wait_count(
        &db,
        "select count(*) from realtime.audit_log where kind = 'test_marker'",
        1,
    )
    .await;
    wait_count(
        &db,
        "select count(*) from realtime.connection_slots where node_id is not null",
        0,
    )
    .await;
    registry.shutdown(Duration::from_secs(10)).await;
    shutdown.trigger();
}
