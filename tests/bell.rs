//! The bell's rest (src/capture/bell.rs): under a steady flow of changes the node reads at its
//! own pace and holds the bell's advisory lock shared on its `LISTEN` connection, so writers
//! commit without a notification; every change still arrives once and in order, and when the
//! flow stops the lock is given back. A transaction being prepared for two-phase commit does not
//! ring (migration 0030), so its PREPARE TRANSACTION succeeds with the bell on.

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

/// The next `postgres_changes` on `realtime:two_phase`, its row's `n`.
async fn next_n(c: &mut WsClient) -> i64 {
    let m = tokio::time::timeout(
        PATIENCE,
        c.expect_event("realtime:two_phase", "postgres_changes"),
    )
    .await
    .expect("a change");
    m.payload["data"]["record"]["n"].as_i64().expect("n")
}

/// Runs `sql` on `conn` as the client writes it: `simple` as one simple-protocol string (as
/// psql sends it), else each `;`-separated statement on its own, in the extended protocol (as
/// pgjdbc's XA and psycopg's `tpc_prepare` do).
async fn run(conn: &mut sqlx::PgConnection, simple: bool, sql: &str) {
    if simple {
        sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ())
    } else {
        let mut result = Ok(());
        for statement in sql.split(';') {
            result = sqlx::query(statement).execute(&mut *conn).await.map(|_| ());
            if result.is_err() {
                break;
            }
        }
        result
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Two-phase commit on a published table with the bell on: while writes are sparse each
/// transaction would win the bell, and PostgreSQL refuses to prepare one that notified. Each
/// PREPARE TRANSACTION succeeds, sent in either protocol and after `set constraints all
/// immediate` (which fires the deferred bell early), and leaves the bell's lock free; its change
/// is delivered once COMMIT PREPARED is done, after a change committed meanwhile, and a prepared
/// transaction rolled back is never delivered. Prepared transactions a failure leaves behind
/// are rolled back.
#[tokio::test]
async fn prepared_transactions_prepare_with_the_bell_on_and_are_delivered_once() {
    use futures_util::FutureExt;
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let allowed: String = sqlx::query_scalar("show max_prepared_transactions")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    if allowed == "0" {
        // The private test cluster allows them; a server given by DATABASE_URL may not.
        assert!(
            std::env::var("DATABASE_URL").is_ok_and(|url| !url.is_empty()),
            "the test cluster allows prepared transactions"
        );
        eprintln!("skipped: the server at DATABASE_URL allows no prepared transactions");
        return;
    }
    let outcome = std::panic::AssertUnwindSafe(two_phase_deliveries(&db))
        .catch_unwind()
        .await;
    let left: Vec<String> =
        sqlx::query_scalar("select gid from pg_prepared_xacts where database = current_database()")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for gid in &left {
        run(&mut conn, true, &format!("rollback prepared '{gid}'")).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(left.is_empty(), "left prepared: {left:?}");
}

async fn two_phase_deliveries(db: &TestDb) {
    common::realtime_table(db, "two_phase", "n bigint").await;
    let gw = TestGateway::start(db).await;
    let mut c = WsClient::connect(&gw.ws_url(&token("service_role", None), "2.0.0")).await;
    c.subscribe(
        "realtime:two_phase",
        json!([{"event": "INSERT", "schema": "public", "table": "two_phase"}]),
    )
    .await;
    let (mut conn, mut other) = (db.connect().await, db.connect().await);
    // (simple protocol, constraints set immediate before the prepare)
    let ways = [(true, false), (false, false), (true, true), (false, true)];
    for (i, (simple, immediate)) in (1_i64..).zip(ways) {
        let check = if immediate {
            "set constraints all immediate; "
        } else {
            ""
        };
        run(
            &mut conn,
            simple,
            &format!(
                "begin; insert into public.two_phase (n) values ({i}); {check}\
                 prepare transaction 'two-phase-{i}'"
            ),
        )
        .await;
        // A prepared transaction keeps its advisory locks: holding the bell's would keep every
        // other writer from ringing until COMMIT PREPARED.
        let bell_held: i64 = sqlx::query_scalar(
            "select count(*) from pg_locks l join pg_database d on d.oid = l.database \
             where d.datname = current_database() and l.locktype = 'advisory' \
               and l.classid = 1381254999 and l.objid = 0 and l.objsubid = 2 and l.pid is null",
        )
        .fetch_one(&mut other)
        .await
        .unwrap();
        assert_eq!(bell_held, 0, "the prepared transaction holds the bell");
        let insert = format!("insert into public.two_phase (n) values ({})", 100 + i);
        run(&mut other, true, &insert).await;
        assert_eq!(next_n(&mut c).await, 100 + i, "the prepared change waits");
        run(
            &mut other,
            true,
            &format!("commit prepared 'two-phase-{i}'"),
        )
        .await;
        assert_eq!(next_n(&mut c).await, i, "delivered once committed");
    }
    run(
        &mut conn,
        true,
        "begin; insert into public.two_phase (n) values (50); \
         prepare transaction 'two-phase-rolled-back'",
    )
    .await;
    run(
        &mut other,
        true,
        "rollback prepared 'two-phase-rolled-back'",
    )
    .await;
    for n in [51, 52] {
        let insert = format!("insert into public.two_phase (n) values ({n})");
        run(&mut other, true, &insert).await;
        assert_eq!(
            next_n(&mut c).await,
            n,
            "nothing rolled back, nothing twice"
        );
    }
    gw.stop().await.unwrap();
}
