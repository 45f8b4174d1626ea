//! The bell's rest (src/capture/bell.rs): under a steady flow of changes the node reads at its
//! own pace and holds the bell's advisory lock shared on its `LISTEN` connection, so writers
//! commit without a notification, and holds key 1 exclusively, so writers do not even pull the
//! bell (migration 0034); every change still arrives once and in order, and when the flow stops
//! both locks are given back and the pulls of committed transactions deleted; a node that finds
//! key 1 held by another rests with key 0 alone and takes key 1 once it is free. A transaction
//! pulls the bell once, at its first captured change, again after a rolled-back savepoint, and
//! not with `realtime.bell = off`. A transaction being prepared for two-phase commit does not
//! ring (migration 0030), so its PREPARE TRANSACTION succeeds with the bell on.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, token, TestDb, TestGateway, WsClient};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(30);

/// Whether the listener of the node (by its `application_name`) holds key `$1` of the bell's
/// class in mode `$2`: key 0 shared while it rests the bell, key 1 exclusively while it also
/// tells writers not to pull it.
const LISTENER_HOLDS: &str = "select exists (
        select from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'advisory' and l.database = a.datid
          and a.datname = current_database()
          and l.classid = 1381254999 and l.objid = $1 and l.objsubid = 2
          and l.mode = $2 and l.granted
          and a.application_name = 'realtime-gateway listener')";

/// The bell pulls of the transaction open on `conn` (its own rows of `realtime.bell_pulls`).
const OWN_PULLS: &str = "select count(*) from realtime.bell_pulls \
     where xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id())";

/// Whether the listener holds key `key` in `mode` ([`LISTENER_HOLDS`]).
async fn holds(pool: &sqlx::PgPool, key: i64, mode: &str) -> bool {
    sqlx::query_scalar(LISTENER_HOLDS)
        .bind(key)
        .bind(mode)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The bell pulls of the transaction open on `conn`.
async fn own(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(OWN_PULLS).fetch_one(conn).await.unwrap()
}

/// Every pull `conn` sees: committed ones, and its own transaction's (its savepoints' included,
/// whose rows carry a subtransaction's id).
async fn all_pulls(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("select count(*) from realtime.bell_pulls")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Inserts a row into `table` in a transaction that is rolled back; returns how many bell pulls
/// that transaction made.
async fn pulls_of_one_change(pool: &sqlx::PgPool, table: &str) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("insert into public.{table} (n) values (0)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let pulls = own(&mut tx).await;
    tx.rollback().await.unwrap();
    pulls
}

#[tokio::test]
async fn a_steady_flow_rests_the_bell_and_loses_nothing() {
    let db = TestDb::new().await;
    common::realtime_table(&db, "steady", "n bigint").await;
    // Another published table, for transactions that only look at the bell.
    common::realtime_table(&db, "probe", "n bigint").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::connect(&gw.ws_url(&token("service_role", None), "2.0.0")).await;
    c.subscribe(
        "realtime:steady",
        json!([{"event": "INSERT", "schema": "public", "table": "steady"}]),
    )
    .await;
    let pool = db.pool().await;
    let resting = || holds(&pool, 0, "ShareLock");
    let advertising = || holds(&pool, 1, "ExclusiveLock");
    assert!(!resting().await, "no flow, no rest");
    assert!(!advertising().await, "no flow, no rest");
    assert_eq!(
        pulls_of_one_change(&pool, "probe").await,
        1,
        "no rest, a pull"
    );

    // Another node already holds key 1 (a session of the test stands in for it).
    let mut other_node = db.connect().await;
    sqlx::query("select pg_advisory_lock(1381254999, 1)")
        .execute(&mut other_node)
        .await
        .unwrap();

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
    // The node rests with key 0 alone while the other holds key 1, and takes key 1 once the
    // other gives it back.
    eventually(PATIENCE, "the listener rests with key 0 alone", || async {
        resting().await && !advertising().await && !bell_taken().await
    })
    .await;
    sqlx::query("select pg_advisory_unlock(1381254999, 1)")
        .execute(&mut other_node)
        .await
        .unwrap();
    // And a transaction sees the rest at its first captured change and pulls nothing.
    eventually(
        PATIENCE,
        "the listener rests the bell, writers cannot ring and do not pull",
        || async {
            resting().await
                && advertising().await
                && !bell_taken().await
                && pulls_of_one_change(&pool, "probe").await == 0
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    eventually(PATIENCE, "the rest is given back", || async {
        !resting().await && !advertising().await
    })
    .await;
    assert_eq!(
        pulls_of_one_change(&pool, "probe").await,
        1,
        "no rest, a pull"
    );
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
    // The lone change pulled the bell; the pruner deletes the pulls of committed transactions.
    eventually(PATIENCE, "the committed pulls are deleted", || async {
        db.count("select count(*) from realtime.bell_pulls").await == 0
    })
    .await;
}

/// Without a gateway (so nothing deletes committed pulls, and every transaction here rolls
/// back): a transaction pulls the bell at its first captured change and not at the next ones; a
/// savepoint rolled back takes its pull with it and the next change pulls again; `realtime.bell
/// = off` pulls nothing, and any other value pulls again; while another session holds key 1 (as
/// a resting node does) nothing is pulled; and the instant the capture holds key 1 shared is over
/// by the end of the statement. The outbox itself has no trigger left, and the bell's is deferred.
#[tokio::test]
async fn a_transaction_pulls_the_bell_once() {
    let db = TestDb::new().await;
    common::realtime_table(&db, "pulled", "n bigint").await;
    let mut conn = db.connect().await;
    let mut node = db.connect().await;
    let insert = "insert into public.pulled (n) values (1)";
    let key1_mine = "select count(*) from pg_locks where locktype = 'advisory' \
         and classid = 1381254999 and objid = 1 and pid = pg_backend_pid()";
    // Each: whether key 1 is held by another session, then statements of one transaction and
    // the pulls it sees after each.
    let cases: [(bool, &[(&str, i64)]); 4] = [
        (
            false,
            &[
                (insert, 1),
                (
                    "insert into public.pulled (n) select g from generate_series(1, 50) g",
                    1,
                ),
            ],
        ),
        (
            false,
            &[
                ("savepoint s", 0),
                (insert, 1),
                ("rollback to savepoint s", 0),
                (insert, 1),
            ],
        ),
        (
            false,
            &[
                ("set local realtime.bell = off", 0),
                (insert, 0),
                ("set local realtime.bell = on", 0),
                (insert, 1),
            ],
        ),
        (true, &[(insert, 0)]),
    ];
    for (held, steps) in cases {
        if held {
            sqlx::query("select pg_advisory_lock(1381254999, 1)")
                .execute(&mut node)
                .await
                .unwrap();
        }
        sqlx::query("begin").execute(&mut conn).await.unwrap();
        for (sql, pulls) in steps {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
            assert_eq!(all_pulls(&mut conn).await, *pulls, "after {sql}");
            let mine: i64 = sqlx::query_scalar(key1_mine)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(mine, 0, "the capture's look at key 1 is over after {sql}");
        }
        sqlx::query("rollback").execute(&mut conn).await.unwrap();
        if held {
            sqlx::query("select pg_advisory_unlock(1381254999, 1)")
                .execute(&mut node)
                .await
                .unwrap();
        }
    }

    let triggers: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "select tgrelid::regclass::text, tgname::text, tgdeferrable, tginitdeferred \
         from pg_trigger where tgrelid in ('realtime.changes'::regclass, \
                                           'realtime.bell_pulls'::regclass) \
           and not tgisinternal",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        triggers,
        [(
            "realtime.bell_pulls".to_owned(),
            "realtime_bell".to_owned(),
            true,
            true
        )]
    );
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

/// Counts the notifications on the bell's channel that arrive before a sentinel sent now: every
/// one the transactions committed before it rang (notifications arrive in commit order).
async fn bells_before_sentinel(
    listener: &mut sqlx::postgres::PgListener,
    conn: &mut sqlx::PgConnection,
) -> usize {
    sqlx::query("select pg_notify('realtime_gateway', 'sentinel')")
        .execute(conn)
        .await
        .unwrap();
    let mut bells = 0;
    loop {
        let n = tokio::time::timeout(PATIENCE, listener.recv())
            .await
            .expect("the sentinel arrives")
            .unwrap();
        if n.payload() == "sentinel" {
            return bells;
        }
        bells += 1;
    }
}

/// Without a gateway, so nothing rests the bell: a transaction's pull rings the bell once at
/// commit, one row or fifty; a transaction rolled back rings nothing; and while another session
/// holds key 1, as a resting node does, a committed change rings nothing.
#[tokio::test]
async fn a_pull_rings_once_at_commit() {
    let db = TestDb::new().await;
    common::realtime_table(&db, "rung", "n bigint").await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("realtime_gateway").await.unwrap();
    let mut conn = db.connect().await;
    let mut node = db.connect().await;
    for (sql, held, bells) in [
        ("insert into public.rung (n) values (1)", false, 1),
        (
            "insert into public.rung (n) select g from generate_series(1, 50) g",
            false,
            1,
        ),
        (
            "begin; insert into public.rung (n) values (2); rollback",
            false,
            0,
        ),
        ("insert into public.rung (n) values (3)", true, 0),
        ("insert into public.rung (n) values (4)", false, 1),
    ] {
        // Key 1 held by another session, as a resting node holds it.
        if held {
            sqlx::query("select pg_advisory_lock(1381254999, 1)")
                .execute(&mut node)
                .await
                .unwrap();
        }
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        assert_eq!(
            bells_before_sentinel(&mut listener, &mut conn).await,
            bells,
            "{sql}"
        );
        if held {
            sqlx::query("select pg_advisory_unlock(1381254999, 1)")
                .execute(&mut node)
                .await
                .unwrap();
        }
    }
}
