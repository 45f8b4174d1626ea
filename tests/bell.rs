//! The bell's rest (src/capture/bell.rs): under a steady flow of changes the node reads at its
//! own pace and holds the bell's advisory lock shared on its `LISTEN` connection, so writers
//! commit without a notification; every change still arrives once and in order, and when the
//! flow stops the lock is given back.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, token, TestDb, TestGateway, WsClient};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(30);

/// Whether the listener of the node (by its `application_name`) holds the bell's lock shared.
const RESTING: &str = "select exists (
        select from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'advisory' and l.database = a.datid
          and a.datname = current_database()
          and l.classid = 1381254999 and l.objid = 0 and l.objsubid = 2
          and l.mode = 'ShareLock' and l.granted
          and a.application_name = 'realtime-gateway listener')";

#[tokio::test]
async fn a_steady_flow_rests_the_bell_and_loses_nothing() {
    let db = TestDb::new().await;
    common::realtime_table(&db, "steady", "n bigint").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::connect(&gw.ws_url(&token("service_role", None), "2.0.0")).await;
    c.subscribe(
        "realtime:steady",
        json!([{"event": "INSERT", "schema": "public", "table": "steady"}]),
    )
    .await;
    let pool = db.pool().await;
    let resting = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(RESTING)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(!resting().await, "no flow, no rest");

    // One row per transaction, about 500 a second, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, written, pool) = (stop.clone(), written.clone(), pool.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let n = written.load(Ordering::Relaxed) + 1;
                sqlx::query("insert into public.steady (n) values ($1)")
                    .bind(n)
                    .execute(&pool)
                    .await
                    .unwrap();
                written.store(n, Ordering::Relaxed);
            }
        })
    };
    // While it rests, a committing writer cannot take the bell's lock, so it does not ring.
    let bell_taken = || {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let taken: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock(1381254999, 0)")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            taken
        }
    };
    eventually(
        PATIENCE,
        "the listener rests the bell and writers cannot ring",
        || async { resting().await && !bell_taken().await },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    eventually(PATIENCE, "the rest is given back", || async {
        !resting().await
    })
    .await;
    // A lone change after the flow, then every change once, in order.
    let last = written.load(Ordering::Relaxed) + 1;
    sqlx::query("insert into public.steady (n) values ($1)")
        .bind(last)
        .execute(&pool)
        .await
        .unwrap();
    for n in 1..=last {
        let m = tokio::time::timeout(
            PATIENCE,
            c.expect_event("realtime:steady", "postgres_changes"),
        )
        .await
        .unwrap_or_else(|_| panic!("change {n} of {last}"));
        assert_eq!(m.payload["data"]["record"]["n"], json!(n));
    }
}
