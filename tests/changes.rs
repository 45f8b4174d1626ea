//! Postgres Changes end to end: a real PostgreSQL, the gateway, raw WebSocket clients.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{realtime_table, TestDb, TestGateway, WsClient};
use serde_json::json;

/// Each operation arrives once with the wire shape of docs/protocol.md 6.3.
#[tokio::test]
async fn insert_update_delete_arrive_with_the_protocol_shape() {
    let db = TestDb::new().await;
    realtime_table(&db, "todos", "title text, done bool default false").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    let ids = c
        .subscribe(
            "realtime:room1",
            json!([{"event": "*", "schema": "public", "table": "todos"}]),
        )
        .await;
    let mut conn = db.connect().await;
    sqlx::query("insert into todos (title) values ('hello')")
        .execute(&mut conn)
        .await
        .unwrap();
    let m = c.expect_event("realtime:room1", "postgres_changes").await;
    assert_eq!(m.join_ref, None);
    assert_eq!(m.msg_ref, None);
    assert_eq!(m.payload["ids"], json!(ids));
    let data = &m.payload["data"];
    assert_eq!(data["schema"], "public");
    assert_eq!(data["table"], "todos");
    assert_eq!(data["type"], "INSERT");
    assert_eq!(
        data["record"],
        json!({"id": 1, "title": "hello", "done": false})
    );
    assert!(data.get("old_record").is_none());
    assert_eq!(data["errors"], json!(null));
    assert_eq!(
        data["columns"],
        json!([{"name":"id","type":"int8"},{"name":"title","type":"text"},{"name":"done","type":"bool"}])
    );
    let ts = data["commit_timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2025-05-01T12:34:56.789Z".len(), "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");

    sqlx::query("update todos set done = true where id = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let m = c.expect_event("realtime:room1", "postgres_changes").await;
    assert_eq!(m.payload["data"]["type"], "UPDATE");
    assert_eq!(m.payload["data"]["record"]["done"], true);
    assert_eq!(
        m.payload["data"]["old_record"],
        json!({"id": 1}),
        "key only by default"
    );

    sqlx::query("alter table todos replica identity full")
        .execute(&mut conn)
        .await
        .unwrap();
    // The catalog cache learns replica identity within its time to live; force it by a
    // column change the decoder notices.
    sqlx::query("alter table todos add column note text")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("delete from todos where id = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let m = c.expect_event("realtime:room1", "postgres_changes").await;
    let data = &m.payload["data"];
    assert_eq!(data["type"], "DELETE");
    assert!(data.get("record").is_none());
    assert_eq!(
        data["old_record"],
        json!({"id": 1, "title": "hello", "done": true, "note": null}),
        "whole old row with replica identity full"
    );
    gw.stop().await.unwrap();
}

/// Event and filter selection: only matching subscriptions are listed in `ids`, DELETE filters
/// see the old row, and a channel gets one frame per change however many of its subscriptions
/// match.
#[tokio::test]
async fn events_and_filters_select_subscriptions() {
    let db = TestDb::new().await;
    realtime_table(&db, "items", "owner int4, label text").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    let ids = c
        .subscribe(
            "realtime:f",
            json!([
                {"event": "INSERT", "schema": "public", "table": "items"},
                {"event": "*", "schema": "public", "table": "items", "filter": "owner=eq.7"},
                {"event": "DELETE", "schema": "public", "table": "items", "filter": "label=in.(a,\"b,c\")"},
            ]),
        )
        .await;
    let mut conn = db.connect().await;
    for sql in [
        "insert into items (owner, label) values (7, 'x')", // ids 0, 1
        "insert into items (owner, label) values (8, 'b,c')", // id 0
        "update items set label = 'y' where owner = 8",     // nothing
        "update items set label = 'z' where owner = 7",     // id 1
        "delete from items where owner = 7",                // id 1 (old row owner 7)
        "update items set label = 'b,c' where owner = 8",   // nothing
        "delete from items where owner = 8",                // id 2
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let expected = [
        ("INSERT", vec![ids[0], ids[1]]),
        ("INSERT", vec![ids[0]]),
        ("UPDATE", vec![ids[1]]),
        ("DELETE", vec![ids[1]]),
        ("DELETE", vec![ids[2]]),
    ];
    for (op, want) in expected {
        let m = c.expect_event("realtime:f", "postgres_changes").await;
        assert_eq!(m.payload["data"]["type"], op, "{}", m.payload);
        let mut got: Vec<u32> = serde_json::from_value(m.payload["ids"].clone()).unwrap();
        got.sort_unstable();
        let mut want = want;
        want.sort_unstable();
        assert_eq!(got, want, "{}", m.payload);
    }
    gw.stop().await.unwrap();
}

/// Joins validate against a cached table description, but a column added since is found at
/// once: a description a subscription does not validate against is read again (and the one read
/// then no longer has the column dropped meanwhile).
#[tokio::test]
async fn joins_see_columns_added_or_dropped_a_moment_ago() {
    let db = TestDb::new().await;
    realtime_table(&db, "tasks", "owner int4, gone text").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    // Caches the description of `tasks`.
    c.subscribe(
        "realtime:first",
        json!([{"event": "*", "schema": "public", "table": "tasks", "filter": "owner=eq.1"}]),
    )
    .await;
    let mut conn = db.connect().await;
    sqlx::query("alter table tasks add column priority int4, drop column gone")
        .execute(&mut conn)
        .await
        .unwrap();
    let ids = c
        .subscribe(
            "realtime:second",
            json!([{"event": "INSERT", "schema": "public", "table": "tasks",
                    "filter": "priority=gte.5", "select": ["priority"]}]),
        )
        .await;
    sqlx::query("insert into tasks (owner, priority) values (2, 3), (2, 9)")
        .execute(&mut conn)
        .await
        .unwrap();
    let m = c.expect_event("realtime:second", "postgres_changes").await;
    assert_eq!(m.payload["ids"], json!(ids), "{}", m.payload);
    assert_eq!(m.payload["data"]["record"]["priority"], 9, "{}", m.payload);
    assert!(
        m.payload["data"]["record"].get("owner").is_none(),
        "{}",
        m.payload
    );
    let reply = c
        .join(
            "realtime:third",
            json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "tasks",
                                         "filter": "gone=eq.x"}]}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let system = c.expect_event("realtime:third", "system").await;
    assert_eq!(system.payload["status"], "error", "{}", system.payload);
    let message = system.payload["message"].as_str().unwrap();
    assert!(
        message.contains("invalid column for filter gone"),
        "{message}"
    );
    gw.stop().await.unwrap();
}

/// Invalid subscriptions are reported as docs/protocol.md 6.5 says; the channel stays joined.
#[tokio::test]
async fn invalid_subscriptions_are_reported_on_the_channel() {
    let db = TestDb::new().await;
    realtime_table(&db, "notes", "body text, n int4").await;
    let mut conn = db.connect().await;
    sqlx::query("create table public.hidden (id int primary key)")
        .execute(&mut conn)
        .await
        .unwrap();
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    let cases = [
        (
            json!({"event":"*","schema":"public","table":"notes","filter":"n=foo.1"}),
            "Error parsing `filter` params: [\"foo\", \"1\"]",
        ),
        (
            json!({"event":"*","schema":"public","table":"notes","filter":"n=in.1,2"}),
            "Error parsing `filter` params",
        ),
        (
            json!({"event":"*","schema":"public","table":"notes","filter":"nope=eq.1"}),
            "invalid column for filter nope",
        ),
        (
            json!({"event":"*","schema":"public","table":"notes","filter":"n=eq.abc"}),
            "invalid input syntax for type int4",
        ),
        (
            json!({"event":"*","schema":"public","table":"hidden"}),
            "Please check Realtime is enabled",
        ),
        (
            json!({"event":"*","schema":"public","table":"missing"}),
            "Please check Realtime is enabled",
        ),
        (json!({"event":"*"}), "No subscription params provided"),
        (
            json!({"event":"*","schema":"*","select":["body"]}),
            "Column selection is not supported for wildcard",
        ),
    ];
    for (i, (entry, expected)) in cases.iter().enumerate() {
        let topic = format!("realtime:bad{i}");
        let reply = c.join(&topic, json!({"postgres_changes": [entry]})).await;
        assert_eq!(reply["status"], "ok", "the join itself succeeds");
        let system = c.expect_event(&topic, "system").await;
        assert_eq!(system.payload["status"], "error");
        assert_eq!(system.payload["extension"], "postgres_changes");
        assert_eq!(system.payload["channel"], format!("bad{i}"));
        let message = system.payload["message"].as_str().unwrap();
        assert!(message.contains(expected), "case {i}: {message}");
    }
    gw.stop().await.unwrap();
}

/// A 200 KiB row and a 1 MiB row arrive whole; a row over the limit arrives truncated with 413.
#[tokio::test]
async fn large_rows_arrive_whole_and_oversized_ones_truncated() {
    let db = TestDb::new().await;
    realtime_table(&db, "blobs", "body text, tag text").await;
    let gw = TestGateway::start_with(&db, |c| c.max_change_bytes = 1024 * 1024 + 1024).await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:big",
        json!([{"event":"INSERT","schema":"public","table":"blobs"}]),
    )
    .await;
    let mut conn = db.connect().await;
    for size in [200 * 1024, 1024 * 1024, 3 * 1024 * 1024] {
        let body: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        sqlx::query("insert into blobs (body, tag) values ($1, 't')")
            .bind(&body)
            .execute(&mut conn)
            .await
            .unwrap();
        let m = c.expect_event("realtime:big", "postgres_changes").await;
        let data = &m.payload["data"];
        if size <= 1024 * 1024 {
            assert_eq!(
                data["record"]["body"].as_str().unwrap(),
                body,
                "{size} bytes whole"
            );
            assert_eq!(data["errors"], json!(null));
        } else {
            assert!(data["record"].get("body").is_none(), "big value dropped");
            assert_eq!(data["record"]["tag"], "t", "small values kept");
            assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
        }
    }
    gw.stop().await.unwrap();
}

/// Guards against lost or doubled changes when the listener connection drops: 8 writers insert
/// 20,000 rows while the listener's backend is terminated 10 times; each of 50 subscribers gets
/// every row exactly once, and each writer's rows in its commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_lost_or_doubled_when_the_listener_drops() {
    const WRITERS: i32 = 8;
    const PER_WRITER: i32 = 2_500;
    const SUBSCRIBERS: usize = 50;
    let db = TestDb::new().await;
    realtime_table(&db, "events", "writer int4 not null, seq int4 not null").await;
    // These raw clients do not heartbeat; the reaper must not take them during the run.
    let gw = TestGateway::start_with(&db, |c| c.heartbeat_timeout = Duration::from_secs(600)).await;
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = WsClient::anon(&gw).await;
        c.subscribe(
            &format!("realtime:s{i}"),
            json!([{"event":"INSERT","schema":"public","table":"events"}]),
        )
        .await;
        readers.push(tokio::spawn(async move {
            let total = (WRITERS * PER_WRITER) as usize;
            let mut next_seq: HashMap<i64, i64> = HashMap::new();
            let mut seen = std::collections::HashSet::new();
            while seen.len() < total {
                let text = c
                    .next_raw(Duration::from_secs(60))
                    .await
                    .expect("socket stays open");
                let Ok(Delivery(_, _, _, event, payload)) = serde_json::from_str(&text) else {
                    continue;
                };
                if event != "postgres_changes" {
                    continue;
                }
                let r = payload.data.record;
                let id = r.id;
                assert!(seen.insert(id), "row {id} delivered twice");
                let (w, s) = (r.writer, r.seq);
                let expected = next_seq.entry(w).or_insert(0);
                assert_eq!(s, *expected, "writer {w} out of order");
                *expected += 1;
            }
            seen.len()
        }));
    }
    let pool = db.pool().await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for s in 0..PER_WRITER {
                sqlx::query("insert into events (writer, seq) values ($1, $2)")
                    .bind(w)
                    .bind(s)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }));
    }
    let mut killed: Vec<i32> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while killed.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener did not come back after {} kills",
            killed.len()
        );
        // The listener's current backend: one we have not killed yet.
        let pids: Vec<i32> = sqlx::query_scalar(
            "select pid from pg_stat_activity where datname = current_database() \
             and application_name = 'realtime-gateway listener'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if let Some(pid) = pids.into_iter().find(|p| !killed.contains(p)) {
            sqlx::query("select pg_terminate_backend($1)")
                .bind(pid)
                .execute(&pool)
                .await
                .unwrap();
            killed.push(pid);
        } else {
            // Poll pacing until the listener is back; the query above is the synchronization.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), (WRITERS * PER_WRITER) as usize);
    }
    let reconnects = gw
        .state
        .listener
        .reconnects
        .load(std::sync::atomic::Ordering::Relaxed);
    // Each kill above waited for a listener backend it had not killed yet, so the gateway
    // reconnected after every one; it also counted the drops it noticed.
    assert!(reconnects >= 1, "listener saw {reconnects} drops");
    gw.stop().await.unwrap();
}

/// Just the fields the loss test checks (parsing whole frames dominates a debug build).
#[derive(serde::Deserialize)]
struct Delivery(
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
    String,
    DeliveryPayload,
);

#[derive(serde::Deserialize)]
struct DeliveryPayload {
    data: DeliveryData,
}

#[derive(serde::Deserialize)]
struct DeliveryData {
    record: EventRow,
}

#[derive(serde::Deserialize)]
struct EventRow {
    id: i64,
    writer: i64,
    seq: i64,
}

/// 200 connected clients use at most the pool size + 1 PostgreSQL connections.
#[tokio::test]
async fn many_clients_share_pool_and_one_listener() {
    let db = TestDb::new().await;
    realtime_table(&db, "t200", "v int4").await;
    let gw = TestGateway::start(&db).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut c = WsClient::anon(&gw).await;
        c.subscribe(
            &format!("realtime:c{i}"),
            json!([{"event":"*","schema":"public","table":"t200"}]),
        )
        .await;
        clients.push(c);
    }
    let mut conn = db.connect().await;
    sqlx::query("insert into t200 (v) values (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        c.expect_event(&format!("realtime:c{i}"), "postgres_changes")
            .await;
    }
    let used: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and application_name like 'realtime-gateway%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // The pool and the listener.
    assert!(
        used <= i64::from(gw.config.db_pool_size) + 1,
        "{used} connections for 200 clients"
    );
    gw.stop().await.unwrap();
}

/// Without a valid apikey the upgrade is refused with 401 and the clients' texts.
#[tokio::test]
async fn bad_apikey_is_refused_at_upgrade() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let expired = realtime_gateway::auth::sign(common::JWT_SECRET, "anon", None, -5).unwrap();
    for (key, text) in [
        ("nope", "The token provided is not a valid JWT"),
        ("", "API key is missing"),
        (expired.as_str(), "Token has expired"),
    ] {
        let err = tokio_tungstenite::connect_async(gw.ws_url(key, "2.0.0"))
            .await
            .unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("expected an http refusal, got {err}");
        };
        assert_eq!(response.status(), 401);
        let body: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
        assert_eq!(body, json!({ "error": text }));
    }
    gw.stop().await.unwrap();
}

/// The capture triggers follow the `supabase_realtime` publication, and `realtime.enable_table`
/// / `realtime.disable_table` do the same in one call.
#[tokio::test]
async fn tables_are_enabled_by_the_publication() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    sqlx::query("create table public.pub_t (id int primary key, v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    let triggers = "select count(*) from pg_trigger \
                    where tgrelid = 'public.pub_t'::regclass and not tgisinternal \
                    and tgname = 'realtime_capture'";
    let captured = "select count(*) from realtime.changes where relid = 'public.pub_t'::regclass";
    let n = |sql: &'static str| {
        let url = db.url.clone();
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    };
    assert_eq!(n(triggers).await, 0);
    sqlx::query("alter publication supabase_realtime add table public.pub_t")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n(triggers).await, 1, "added with the publication");
    sqlx::query("insert into pub_t values (1, 'a')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n(captured).await, 1);
    sqlx::query("alter publication supabase_realtime drop table public.pub_t")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n(triggers).await, 0, "removed with the publication");
    sqlx::query("insert into pub_t values (2, 'b')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n(captured).await, 1, "not captured once disabled");
    sqlx::query("select realtime.enable_table('public.pub_t')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n(triggers).await, 1);
    let published: bool = sqlx::query_scalar(
        "select exists (select from pg_publication_tables \
         where pubname = 'supabase_realtime' and tablename = 'pub_t')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(published);
    sqlx::query("select realtime.disable_table('public.pub_t')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(n(triggers).await, 0);
    // A rolled-back write leaves nothing; a committed one inside a savepoint is captured once.
    sqlx::query("select realtime.enable_table('public.pub_t')")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("insert into pub_t values (3, 'c')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(n(captured).await, 1);
}

/// Where the event trigger could not be created (migrations run without superuser rights), the
/// gateway's periodic reconcile gives a newly published table its capture trigger.
#[tokio::test]
async fn gateway_reconciles_capture_without_the_event_trigger() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    sqlx::query("alter event trigger realtime_sync_capture disable")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("create table public.late (id int primary key, v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("alter publication supabase_realtime add table public.late")
        .execute(&mut conn)
        .await
        .unwrap();
    let triggers = "select count(*) from pg_trigger \
                    where tgrelid = 'public.late'::regclass and tgname = 'realtime_capture'";
    let n: i64 = sqlx::query_scalar(triggers)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "no event trigger: nothing attached yet");
    let gw = TestGateway::start(&db).await;
    common::eventually(
        Duration::from_secs(15),
        "capture trigger reconciled",
        || {
            let url = db.url.clone();
            async move {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .unwrap();
                sqlx::query_scalar::<_, i64>(triggers)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
                    == 1
            }
        },
    )
    .await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:late",
        json!([{"event":"INSERT","schema":"public","table":"late"}]),
    )
    .await;
    sqlx::query("insert into late values (1, 'x')")
        .execute(&mut conn)
        .await
        .unwrap();
    let m = c.expect_event("realtime:late", "postgres_changes").await;
    assert_eq!(m.payload["data"]["record"], json!({"id": 1, "v": "x"}));
    gw.stop().await.unwrap();
}

/// `commit_timestamp` is when the writer's transaction committed (PostgreSQL records commit
/// times in the test cluster, as in local mode), not when the row was changed: a transaction
/// that waits before committing delivers the later time.
#[tokio::test]
async fn commit_timestamp_is_the_commit_time() {
    let db = TestDb::new().await;
    realtime_table(&db, "slow", "note text").await;
    let gw = TestGateway::start(&db).await;
    let mut c = WsClient::anon(&gw).await;
    c.subscribe(
        "realtime:slow",
        json!([{"event": "INSERT", "schema": "public", "table": "slow"}]),
    )
    .await;
    let mut conn = db.connect().await;
    let tracked: String = sqlx::query_scalar("show track_commit_timestamp")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tracked, "on", "the test cluster records commit times");
    for statement in [
        "begin",
        "insert into slow (note) values ('late')",
        "select pg_sleep(0.3)",
        "commit",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let m = c.expect_event("realtime:slow", "postgres_changes").await;
    let delivered = m.payload["data"]["commit_timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    // The database's own record of the commit and of the change, in the wire format.
    let (committed, captured): (String, String) = sqlx::query_as(
        "select to_char(pg_xact_commit_timestamp(xid::xid) at time zone 'utc', \
                        'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                to_char(captured_at at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
         from realtime.changes where relid = 'public.slow'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(delivered, committed);
    assert!(
        delivered.as_str() >= captured.as_str() && delivered != captured,
        "committed {delivered} after the change at {captured}"
    );
    gw.stop().await.unwrap();
}
