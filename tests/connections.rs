//! What one node holds of the database: `--db-pool-size` connections (the row-level security
//! checks' own and a pool) and the listener's LISTEN connection, nothing more, under load that
//! uses every path to the database at once (outbox reads, row-level security checks, the
//! registry, broadcast through the bus and from SQL), counted in `pg_stat_activity` against a
//! real PostgreSQL. And a slow row-level security policy holds neither capture nor the pool:
//! past the check's timeout its page goes to `service_role` only; and the checks' connection,
//! lost between two checks, costs no change; and a pool connection ended while idle is replaced
//! before use.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{token, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

const POOL: u32 = 2;
const WRITERS: i32 = 4;
const ROWS_PER_WRITER: i32 = 150;
const SUBSCRIBERS: usize = 6;

async fn sql(db: &TestDb, statements: &[&str]) {
    let pool = db.pool().await;
    for s in statements {
        sqlx::query(s)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// The gateway's connections to this test's database, by `pg_stat_activity`.
async fn gateway_connections(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and application_name like 'realtime-gateway%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Guards against a node opening connections beyond `--db-pool-size` and the listener's: the
/// row-level security checks' own connection counts within the size (it once came on top).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_its_pool_and_one_listener_connection() {
    let db = TestDb::new().await;
    common::realtime_table(&db, "items", "owner text not null, n int4 not null").await;
    sql(
        &db,
        &[
            "alter table items enable row level security",
            "create policy own_items on items for select to authenticated \
             using (owner = auth.uid()::text)",
        ],
    )
    .await;
    let gw = TestGateway::start_with(&db, |c| {
        c.db_pool_size = POOL;
        c.heartbeat_timeout = Duration::from_secs(600);
    })
    .await;
    let owner = "aaaaaaaa-0000-4000-8000-000000000001";
    let star = json!([{"event": "INSERT", "schema": "public", "table": "items"}]);
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c =
            WsClient::connect(&gw.ws_url(&token("authenticated", Some(owner)), "2.0.0")).await;
        c.subscribe(&format!("realtime:items{i}"), star.clone())
            .await;
        // Broadcast through the bus: every subscriber also sends to a room it is in.
        let room = format!("realtime:room{}", i % 2);
        let reply = c.join(&room, json!({"broadcast": {"self": true}})).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        readers.push((c, room));
    }
    let pool = db.pool().await;
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (pool, stop, most) = (pool.clone(), Arc::clone(&stop), Arc::clone(&most));
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !stop.load(Ordering::Acquire) {
                most.fetch_max(gateway_connections(&pool).await, Ordering::AcqRel);
                samples += 1;
            }
            samples
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..ROWS_PER_WRITER {
                sqlx::query("insert into items (owner, n) values ($1, $2)")
                    .bind(if n % 2 == 0 { owner } else { "someone else" })
                    .bind(w * ROWS_PER_WRITER + n)
                    .execute(&pool)
                    .await
                    .unwrap();
                if n % 10 == 0 {
                    sqlx::query("select realtime.send('{\"n\": 1}', 'sql', 'room0', false)")
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    let visible = (WRITERS * ROWS_PER_WRITER / 2) as usize;
    let mut tasks = Vec::new();
    for (mut c, room) in readers {
        tasks.push(tokio::spawn(async move {
            for k in 0..20 {
                c.send(
                    None,
                    &room,
                    "broadcast",
                    json!({"type": "broadcast", "event": "ws", "payload": {"k": k}}),
                )
                .await;
            }
            let mut seen = std::collections::HashSet::new();
            while seen.len() < visible {
                let m = c
                    .next_within(Duration::from_secs(30))
                    .await
                    .expect("socket stays open");
                if m.event != "postgres_changes" {
                    continue;
                }
                let record: &Value = &m.payload["data"]["record"];
                assert_eq!(record["owner"], owner, "only own rows: {record}");
                assert!(
                    seen.insert(record["n"].as_i64().unwrap()),
                    "delivered twice"
                );
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let samples = sampler.await.unwrap();
    let most = most.load(Ordering::Acquire);
    assert!(samples > 0);
    assert!(
        most <= i64::from(POOL) + 1,
        "{most} connections with a pool of {POOL} ({samples} samples)"
    );
    // The load filled the pool: the bound above was reached, not idled under.
    assert_eq!(most, i64::from(POOL) + 1, "{samples} samples");
    gw.stop().await.unwrap();
}

/// Guards the check's bound: a policy slower than
/// `--rls-check-timeout` ends in error entries for its subscribers (the row goes to
/// `service_role` alone) within the timeout, and the next change is delivered as usual.
#[tokio::test]
async fn a_slow_policy_is_ended_by_the_check_timeout() {
    let db = TestDb::new().await;
    protected_table(&db, "slow", "body <> 'sleep' or pg_sleep(30) is null").await;
    let gw = TestGateway::start_with(&db, |c| {
        c.db_pool_size = POOL;
        c.rls_check_timeout = Duration::from_millis(300);
    })
    .await;
    let mut user = subscriber(&gw, "slow", token("authenticated", Some("u1"))).await;
    let mut service = subscriber(&gw, "slow", token("service_role", None)).await;
    let started = std::time::Instant::now();
    sql(&db, &["insert into slow (body) values ('sleep')"]).await;
    let m = user.expect_event("realtime:slow", "postgres_changes").await;
    assert!(
        m.payload["data"]["errors"]
            .to_string()
            .contains("row-level security"),
        "{}",
        m.payload
    );
    assert_eq!(m.payload["data"]["record"], json!({}));
    // Within the check's timeout and its one second of patience, not the policy's 30 s.
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = service
        .expect_event("realtime:slow", "postgres_changes")
        .await;
    assert_eq!(m.payload["data"]["record"]["body"], "sleep");
    sql(&db, &["insert into slow (body) values ('quick')"]).await;
    let m = user.expect_event("realtime:slow", "postgres_changes").await;
    assert_eq!(m.payload["data"]["record"]["body"], "quick");
    gw.stop().await.unwrap();
}

/// The row-level security check's own connection, ended by the server between two checks, is
/// replaced and the check asked again: the next change reaches its subscriber, not an error.
#[tokio::test]
async fn a_lost_check_connection_costs_no_change() {
    let db = TestDb::new().await;
    protected_table(&db, "kept", "true").await;
    let gw = TestGateway::start(&db).await;
    let mut user = subscriber(&gw, "kept", token("authenticated", Some("u1"))).await;
    sql(&db, &["insert into kept (body) values ('one')"]).await;
    let m = user.expect_event("realtime:kept", "postgres_changes").await;
    assert_eq!(m.payload["data"]["record"]["body"], "one", "{}", m.payload);

    let pool = db.pool().await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid, 5000) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid() \
           and query like '%realtime.visible_rows%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ended, vec![true], "the check's connection, ended");

    sql(&db, &["insert into kept (body) values ('two')"]).await;
    let m = user.expect_event("realtime:kept", "postgres_changes").await;
    assert_eq!(m.payload["data"]["record"]["body"], "two", "{}", m.payload);
    gw.stop().await.unwrap();
}

/// `public.<table>` (`body text`), published, with row-level security on and one policy letting
/// `authenticated` select the rows for which `using` holds.
async fn protected_table(db: &TestDb, table: &str, using: &str) {
    common::realtime_table(db, table, "body text not null").await;
    sql(
        db,
        &[
            &format!("alter table {table} enable row level security"),
            &format!(
                "create policy readers on {table} for select to authenticated using ({using})"
            ),
        ],
    )
    .await;
}

/// A socket with `token`, subscribed to the inserts of `table` on `realtime:<table>`.
async fn subscriber(gw: &TestGateway, table: &str, token: String) -> WsClient {
    let mut client = WsClient::connect(&gw.ws_url(&token, "2.0.0")).await;
    client
        .subscribe(
            &format!("realtime:{table}"),
            json!([{"event": "INSERT", "schema": "public", "table": table}]),
        )
        .await;
    client
}

/// A pool connection that sat idle longer than `pg::TEST_IF_IDLE_FOR` and was ended by the server
/// meanwhile is tested as it is handed out and replaced: the next statement runs.
#[tokio::test]
async fn an_idle_pool_connection_ended_by_the_server_is_replaced() {
    let db = TestDb::new().await;
    let pool = realtime_gateway::pg::pool(&db.url, 2).unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let admin = db.pool().await;
    let ended: bool = sqlx::query_scalar("select pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(ended);
    // Not a synchronization: the connection must have been idle this long to be tested.
    tokio::time::sleep(realtime_gateway::pg::TEST_IF_IDLE_FOR + Duration::from_millis(200)).await;
    let other: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a statement on a replaced connection");
    assert_ne!(other, pid);
}
