//! Connection slots against a real PostgreSQL: a slot statement that fails takes nothing, one
//! with no answer in time refuses its upgrades, and a tick frees what its node holds for no
//! connection.

mod common;

use std::time::Duration;

use common::{eventually, token, TestDb, TestGateway, WsClient};
use realtime_gateway::limits::SLOT_TIMEOUT;

/// Slots held by any node.
const HELD: &str = "select count(*) from realtime.connection_slots where node_id is not null";

/// A slot statement that fails takes no slot at all, whichever part of its wrapped-round search
/// failed: slot 2 of 3 is taken elsewhere and taking slot 1 raises, so every batch of two fails
/// (from a start at 3, after slot 3 was found above the start). Then, without the fault, a
/// batch of two gets slots 1 and 3 from any start, and the next finds the cap full.
#[tokio::test]
async fn a_failed_slot_statement_takes_no_slot() {
    use realtime_gateway::registry::store;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    for sql in [
        "select realtime.ensure_connection_slots(3)",
        "update realtime.connection_slots set node_id = 'other', connection_id = gen_random_uuid(), \
         taken_at = now() where slot = 2",
        "create function public.test_no_slot_one() returns trigger language plpgsql as \
         $$ begin raise exception 'slot 1 refused'; end $$",
        "create trigger test_no_slot_one before update on realtime.connection_slots for each row \
         when (new.slot = 1 and new.node_id = 'batch-node') execute function public.test_no_slot_one()",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let held = "select count(*) from realtime.connection_slots where node_id = 'batch-node'";
    // The start is random: a batch from 2 or 3 takes slot 3 before it wraps round to slot 1; that
    // none of 24 batches does so has a chance of (1/3)^24.
    for _ in 0..24 {
        let batch = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
        let error = store::acquire_slots(&pool, "batch-node", &batch, 3)
            .await
            .expect_err("taking slot 1 fails");
        assert!(format!("{error:?}").contains("slot 1 refused"), "{error:?}");
        assert_eq!(db.count(held).await, 0, "a failed batch kept a slot");
    }
    sqlx::query("drop trigger test_no_slot_one on realtime.connection_slots")
        .execute(&pool)
        .await
        .unwrap();
    let batch = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let mut got = store::acquire_slots(&pool, "batch-node", &batch, 3)
        .await
        .unwrap();
    got.sort_unstable();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 3]);
    let mut conns: Vec<_> = got.iter().map(|g| g.1).collect();
    conns.sort_unstable();
    let mut wanted = batch.to_vec();
    wanted.sort_unstable();
    assert_eq!(conns, wanted);
    let none = store::acquire_slots(&pool, "batch-node", &[uuid::Uuid::new_v4()], 3)
        .await
        .unwrap();
    assert!(none.is_empty(), "the cap is full: {none:?}");
}

/// A tick frees the slots its node holds for none of its connections once they are over a
/// minute old (their taking was never reported: the statement's answer was lost), audits and
/// counts them, and leaves alone the slots of its connections, however old, and a slot taken
/// just now.
#[tokio::test]
async fn a_tick_frees_slots_held_for_no_connection() {
    use realtime_gateway::registry::{store, Registry};
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let shutdown = realtime_gateway::Shutdown::new();
    let settings = common::registry_settings("tick-node", 8);
    let registry = Registry::start(pool.clone(), settings, &shutdown)
        .await
        .unwrap();
    let take = |conn: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            let got = store::acquire_slots(&pool, "tick-node", &[conn], 8)
                .await
                .unwrap();
            assert_eq!(got.len(), 1);
            got[0].0
        }
    };
    let (live, lost, fresh) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let live_slot = take(live).await;
    registry.slot_taken(live_slot, live);
    let lost_slot = take(lost).await;
    let fresh_slot = take(fresh).await;
    sqlx::query(
        "update realtime.connection_slots set taken_at = now() - interval '2 minutes' \
         where connection_id = any($1)",
    )
    .bind([live, lost])
    .execute(&pool)
    .await
    .unwrap();
    let reclaimed = registry.tick(Vec::new()).await;
    assert!(reclaimed.is_empty());
    let held: Vec<(i32, uuid::Uuid)> = sqlx::query_as(
        "select slot, connection_id from realtime.connection_slots \
         where node_id = 'tick-node' order by slot",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected = vec![(live_slot, live), (fresh_slot, fresh)];
    expected.sort_unstable();
    assert_eq!(held, expected, "slot {lost_slot} of {lost} should be free");
    let audited = format!(
        "select count(*) from realtime.audit_log where kind = 'slots_unknown_freed' \
         and detail->'slots' = '[{lost_slot}]' and detail->'connection_ids' = '[\"{lost}\"]'"
    );
    eventually(Duration::from_secs(20), &audited, || async {
        db.count(&audited).await == 1
    })
    .await;
    // Known and fresh slots stay through later ticks too.
    registry.tick(Vec::new()).await;
    assert_eq!(
        db.count("select count(*) from realtime.connection_slots where node_id = 'tick-node'")
            .await,
        2
    );
    registry.shutdown(Duration::from_secs(10)).await;
    shutdown.trigger();
}

/// The 503 of an upgrade whose slot statement had no answer in time.
const UNAVAILABLE: &str = r#"{"error":"Realtime is temporarily unavailable, please retry"}"#;

/// Runs `sql` statements on `pool`, in order.
async fn run(pool: &sqlx::PgPool, sql: &[&str]) {
    for statement in sql {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
}

/// Upgrades to `url`: the client, or the refusal's status and body. The bound only turns a hang
/// into a failure.
async fn upgrade(url: &str) -> Result<WsClient, (u16, String)> {
    tokio::time::timeout(Duration::from_secs(30), WsClient::try_connect(url, None))
        .await
        .expect("the upgrade is answered")
}

/// A gateway with per-client limits (address and user), so its slots are taken by
/// `realtime.take_slots_limited`.
async fn start_limited(db: &TestDb) -> TestGateway {
    TestGateway::start_with(db, |c| {
        c.max_connections_per_addr = 5;
        c.max_connections_per_user = 5;
    })
    .await
}

/// The limited slot statement that began to wait at `began` has given up within its 4 s (with
/// some margin, and well before the 6.5 s a fresh 4 s for its second wait would take), and its
/// upgrade was refused with 503.
async fn gave_up_within_4_s(
    began: std::time::Instant,
    refused: tokio::task::JoinHandle<Result<(), (u16, String)>>,
    still: &str,
) {
    let waited = began.elapsed();
    assert!(
        waited < Duration::from_millis(5500),
        "the statement waited {waited:?} for its locks, with {still}"
    );
    assert_eq!(refused.await.unwrap(), Err((503, UNAVAILABLE.to_owned())));
}

/// The next upgrade to `url` is admitted and joins, holding the only slot taken; then `gw` stops.
async fn served_and_stop(db: &TestDb, gw: TestGateway, url: &str) {
    let mut client = upgrade(url).await.expect("admitted");
    let reply = client.join("realtime:room", serde_json::json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(db.count(HELD).await, 1);
    gw.stop().await.unwrap();
}

/// A slot statement waiting on a lock gives up in the database (`lock_timeout`, migration 0029),
/// with and without per-client limits (`take_slots` and `take_slots_limited`): its upgrade gets
/// 503, and while the lock is still held no statement of the node waits on it and no slot is
/// taken; once it is gone, the next upgrade is admitted.
#[tokio::test]
async fn a_slot_statement_waiting_on_a_lock_gives_up_in_the_database() {
    for per_addr in [0, 5] {
        let db = TestDb::new().await;
        let gw = TestGateway::start_with(&db, |c| c.max_connections_per_addr = per_addr).await;
        let pool = db.pool().await;
        // Taking a slot waits for an advisory lock the test holds.
        run(
            &pool,
            &[
                "create function public.test_slot_gate() returns trigger language plpgsql as \
                 $$ begin perform pg_advisory_xact_lock_shared(4242); return new; end $$",
                "create trigger test_slot_gate before update on realtime.connection_slots \
                 for each row when (new.node_id is not null) \
                 execute function public.test_slot_gate()",
            ],
        )
        .await;
        let mut gate = pool.begin().await.unwrap();
        sqlx::query("select pg_advisory_xact_lock(4242)")
            .execute(&mut *gate)
            .await
            .unwrap();
        let url = gw.ws_url(&token("anon", None), "2.0.0");
        let refused = upgrade(&url).await.map(|_| ());
        assert_eq!(
            refused,
            Err((503, UNAVAILABLE.to_owned())),
            "per address {per_addr}"
        );
        let waiting = "select count(*) from pg_locks \
                       where locktype = 'advisory' and objid = 4242 and not granted";
        // Given up by the database itself: the gate is still held. (The node may stop waiting
        // first when the statement was slow to get a connection.)
        eventually(Duration::from_secs(10), "no statement waits", || async {
            db.count(waiting).await == 0
        })
        .await;
        assert_eq!(db.count(HELD).await, 0);
        gate.rollback().await.unwrap();
        served_and_stop(&db, gw, &url).await;
        pool.close().await;
    }
}

/// Both slot statements give up on their locks in the database before the node stops waiting
/// for them ([`SLOT_TIMEOUT`]), so one the node gave up on does not go on holding a pool
/// connection: their `lock_timeout` (migrations 0029 and 0031) is set and below it.
#[tokio::test]
async fn the_slot_statements_give_up_before_the_node_does() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    for function in [
        "realtime.take_slots(text, uuid[], int, int)",
        "realtime.take_slots_limited(text, uuid[], inet[], uuid[], int, int, int, int)",
    ] {
        // The setting as PostgreSQL reads it, in milliseconds.
        let ms: Option<i64> = sqlx::query_scalar(
            "select (extract(epoch from regexp_replace(c, '^lock_timeout=', '')::interval) \
                     * 1000)::bigint \
             from pg_proc, unnest(proconfig) as c \
             where oid = $1::regprocedure and c like 'lock_timeout=%'",
        )
        .bind(function)
        .fetch_optional(&pool)
        .await
        .unwrap();
        let ms = ms.unwrap_or_else(|| panic!("{function} sets no lock_timeout"));
        assert!(
            ms > 0 && u128::from(ms.unsigned_abs()) < SLOT_TIMEOUT.as_millis(),
            "{function}: lock_timeout {ms} ms, the node waits {SLOT_TIMEOUT:?}"
        );
    }
    pool.close().await;
}

/// With per-client limits a batch takes one advisory lock per address and user, one after
/// another; its lock waits together stay within the statement's 4 s (migration 0031), not 4 s
/// each. The test holds both locks of one upgrade (its address's and its user's), lets the first
/// go after the statement has waited 2.5 s for it, and keeps the second: the statement gives up
/// in the database about 4 s after it began, where 4 s for each lock would keep it waiting past
/// 6.5 s. Its upgrade gets 503 and takes no slot; once the lock is gone the next one is admitted.
#[tokio::test]
async fn a_limited_slot_statement_waits_4_s_in_all_for_its_locks() {
    let db = TestDb::new().await;
    let gw = start_limited(&db).await;
    let pool = db.pool().await;
    let user = "5d0c2f0e-8a53-4c1e-9d2b-3f6a1b7c9e41";
    // The function's keys, in the order it takes them.
    let keys: Vec<i64> = sqlx::query_scalar(
        "select k from (values (hashtextextended('a' || '127.0.0.1'::inet::text, 0)), \
                               (hashtextextended('u' || $1, 0))) as v(k) order by k",
    )
    .bind(user)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut holder = pool.acquire().await.unwrap();
    for key in &keys {
        sqlx::query("select pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *holder)
            .await
            .unwrap();
    }
    // Waiters of this database on one advisory key (`None`: on any); a bigint key is
    // `classid` (high half) and `objid` (low half).
    let waiting = |key: Option<i64>| {
        let key = key.map_or(String::new(), |k| {
            format!("and ((classid::bigint << 32) | objid::bigint) = {k}")
        });
        format!(
            "select count(*) from pg_locks where locktype = 'advisory' and not granted \
             and database = (select oid from pg_database where datname = current_database()) \
             {key}"
        )
    };
    let url = gw.ws_url(&token("authenticated", Some(user)), "2.0.0");
    let refused = tokio::spawn({
        let url = url.clone();
        async move { upgrade(&url).await.map(|_| ()) }
    });
    eventually(
        Duration::from_secs(10),
        "a wait on the first lock",
        || async { db.count(&waiting(Some(keys[0]))).await == 1 },
    )
    .await;
    let began = std::time::Instant::now();
    // Not a synchronization: the first wait must last long enough that a bound of 4 s for each
    // lock, instead of 4 s in all, would keep the statement waiting well past 4 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(keys[0])
        .execute(&mut *holder)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "a wait on the second lock",
        || async { db.count(&waiting(Some(keys[1]))).await == 1 },
    )
    .await;
    eventually(Duration::from_secs(10), "no statement waits", || async {
        db.count(&waiting(None)).await == 0
    })
    .await;
    gave_up_within_4_s(began, refused, "the second lock still held").await;
    assert_eq!(db.count(HELD).await, 0);
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(keys[1])
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);
    served_and_stop(&db, gw, &url).await;
    pool.close().await;
}

/// The deadline also bounds the waits after the advisory locks (migration 0031 sets what is left
/// before each connection's statements): the statement waits 2.5 s for its last advisory lock,
/// then finds the slot table locked. It gives up about 4 s after it began, where keeping the
/// `lock_timeout` set before the advisory lock would let it wait 4 s more for the table.
#[tokio::test]
async fn a_limited_slot_statement_counts_its_table_wait_in_the_same_4_s() {
    let db = TestDb::new().await;
    let gw = start_limited(&db).await;
    let pool = db.pool().await;
    let user = "8f3e1a52-6b0d-4c7e-a1f9-2d4c6e8b0a13";
    // The function's last key: it takes them in this order.
    let last: i64 = sqlx::query_scalar(
        "select max(k) from (values (hashtextextended('a' || '127.0.0.1'::inet::text, 0)), \
                                    (hashtextextended('u' || $1, 0))) as v(k)",
    )
    .bind(user)
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(last)
        .execute(&mut *holder)
        .await
        .unwrap();
    let url = gw.ws_url(&token("authenticated", Some(user)), "2.0.0");
    let refused = tokio::spawn({
        let url = url.clone();
        async move { upgrade(&url).await.map(|_| ()) }
    });
    let waiter_on_last = format!(
        "select coalesce(max(pid), 0)::bigint from pg_locks where locktype = 'advisory' \
         and not granted and ((classid::bigint << 32) | objid::bigint) = {last}"
    );
    let waiter = std::cell::Cell::new(0);
    eventually(
        Duration::from_secs(10),
        "a wait on the last advisory lock",
        || async {
            waiter.set(db.count(&waiter_on_last).await);
            waiter.get() != 0
        },
    )
    .await;
    let statement = waiter.get();
    let began = std::time::Instant::now();
    // The slot table, locked for the rest of the test: every statement on it waits.
    let mut table = pool.begin().await.unwrap();
    sqlx::query("lock table realtime.connection_slots in access exclusive mode")
        .execute(&mut *table)
        .await
        .unwrap();
    // Not a synchronization: the advisory wait must last long enough that a fresh 4 s for the
    // table would keep the statement waiting well past 4 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(last)
        .execute(&mut *holder)
        .await
        .unwrap();
    let waits_on = |locktype: &str| {
        format!(
            "select count(*) from pg_locks where pid = {statement} and not granted \
             and locktype = '{locktype}'"
        )
    };
    eventually(
        Duration::from_secs(10),
        "the statement waits for the slot table",
        || async { db.count(&waits_on("relation")).await == 1 },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the statement waits no more",
        || async { db.count(&waits_on("relation")).await == 0 },
    )
    .await;
    gave_up_within_4_s(began, refused, "the slot table still locked").await;
    table.rollback().await.unwrap();
    assert_eq!(db.count(HELD).await, 0);
    drop(holder);
    served_and_stop(&db, gw, &url).await;
    pool.close().await;
}

/// A slot statement slow for another reason than a lock (held in a trigger until the test
/// opens it) refuses its upgrade with 503 after the node's 5 s, and commits later: the node
/// holds that slot for no connection, and a tick frees it once it is a minute old (backdated
/// here), audited and counted; the next upgrade is admitted.
#[tokio::test]
async fn a_slot_statement_answered_too_late_leaves_a_slot_a_tick_frees() {
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let pool = db.pool().await;
    // Taking a slot waits, without any lock, until the test inserts the row that opens it.
    run(
        &pool,
        &[
            "create table public.test_slot_open (opened bool)",
            "create function public.test_slot_wait() returns trigger language plpgsql as \
             $$ begin \
                    while not exists (select from public.test_slot_open) loop \
                        perform pg_sleep(0.01); \
                    end loop; \
                    return new; \
                end $$",
            "create trigger test_slot_wait before update on realtime.connection_slots \
             for each row when (new.node_id is not null) \
             execute function public.test_slot_wait()",
        ],
    )
    .await;
    let unavailable = gw.metric("gateway_limits_unavailable_total").await;
    let freed = gw.metric("gateway_limits_unknown_slots_freed_total").await;
    let url = gw.ws_url(&token("anon", None), "2.0.0");
    let refused = upgrade(&url).await.map(|_| ());
    assert_eq!(refused, Err((503, UNAVAILABLE.to_owned())));
    // Metrics are the process's: other tests of this binary may count too.
    assert!(gw.metric("gateway_limits_unavailable_total").await > unavailable);
    run(&pool, &["insert into public.test_slot_open values (true)"]).await;
    eventually(
        Duration::from_secs(20),
        "the late statement's slot",
        || async { db.count(HELD).await == 1 },
    )
    .await;
    run(
        &pool,
        &[
            "update realtime.connection_slots set taken_at = now() - interval '2 minutes' \
           where node_id is not null",
        ],
    )
    .await;
    eventually(Duration::from_secs(20), "the slot freed", || async {
        db.count(HELD).await == 0
    })
    .await;
    let audited = "select count(*) from realtime.audit_log where kind = 'slots_unknown_freed'";
    eventually(Duration::from_secs(20), audited, || async {
        db.count(audited).await == 1
    })
    .await;
    assert!(gw.metric("gateway_limits_unknown_slots_freed_total").await > freed);
    served_and_stop(&db, gw, &url).await;
    pool.close().await;
}

/// The per-client limits count a client's slots through the indexes on `client_addr` and
/// `user_id`, which hold no nulls (migration 0033: a slot taken with the limits off adds no
/// entry to them). Their counts, as `realtime.take_slots_limited` runs them (a generic plan, the
/// address or user a parameter), must still be able to use them: with sequential scans off, the
/// plan names the index; were the predicate not implied by the count's condition, it could not.
#[tokio::test]
async fn the_limits_counts_use_the_slot_indexes_that_hold_no_nulls() {
    use sqlx::Row;
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    for (column, param) in [("client_addr", "inet"), ("user_id", "uuid")] {
        let index = format!("connection_slots_{column}");
        let predicate: String = sqlx::query_scalar(
            "select pg_get_expr(i.indpred, i.indrelid) from pg_index i \
             where i.indexrelid = ('realtime.' || $1)::regclass",
        )
        .bind(&index)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(
            predicate.contains(&format!("{column} IS NOT NULL")),
            "{index} holds no nulls: {predicate}"
        );
        let statements = [
            "set enable_seqscan = off".to_owned(),
            "set plan_cache_mode = force_generic_plan".to_owned(),
            format!(
                "prepare count_{column}({param}) as select count(*) \
                 from realtime.connection_slots s where s.{column} = $1 and s.node_id is not null"
            ),
        ];
        for statement in &statements {
            sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
        }
        let value = if param == "inet" {
            "'10.0.0.1'"
        } else {
            "'6f1b7a52-5a1e-4d6a-9d1a-0c4f4c7e2b11'"
        };
        let plan: String = sqlx::raw_sql(&format!("explain execute count_{column}({value})"))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            plan.contains(&index) && plan.contains("$1"),
            "the count of {column} uses {index} on a generic plan:\n{plan}"
        );
    }
}
