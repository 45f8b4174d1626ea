//! The gateway's usual read of the outbox, `realtime.read_changes` (migrations 0025, 0027, 0028):
//! what it returns for a cursor, what its tables show the roles it is asked about, and that it
//! stays a walk of the indexes from the cursor however large the outbox is, its plan being
//! made once per connection.

mod common;

use common::TestDb;
use sqlx::{Connection, PgConnection, Row};

/// One captured-looking outbox row, written directly; returns its id.
async fn capture(conn: &mut PgConnection, n: i64) -> i64 {
    sqlx::query_scalar(
        "insert into realtime.changes (relid, op, record) \
         values ('pg_class'::regclass, 'I', jsonb_build_object('n', $1::int8)) returning id",
    )
    .bind(n)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// `(xmax, in-progress xids)` of the current snapshot, as the gateway keeps them.
async fn snapshot(conn: &mut PgConnection) -> (String, Vec<String>) {
    let text: String = sqlx::query_scalar("select pg_current_snapshot()::text")
        .fetch_one(conn)
        .await
        .unwrap();
    let mut parts = text.split(':');
    let _xmin = parts.next();
    let xmax = parts.next().unwrap().to_owned();
    let xip = parts
        .next()
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (xmax, xip)
}

/// `(part, id, n)` of each row a read returns, in the gateway's order, and the snapshot text.
async fn read(
    conn: &mut PgConnection,
    cursor: &(String, Vec<String>),
    max_id: i64,
    page: i64,
) -> (Vec<(i32, i64, i64)>, String) {
    let (rows, snapshot, _) = read_as(conn, cursor, max_id, page, &["anon"]).await;
    (rows, snapshot)
}

/// What a table shows a role, as a read answers it: `(relid, role, visible, columns, error)`.
type Sight = (
    i64,
    String,
    Option<bool>,
    Option<Vec<String>>,
    Option<String>,
);

/// [`read`], asking what the tables read show `roles`; also returns those answers.
async fn read_as(
    conn: &mut PgConnection,
    cursor: &(String, Vec<String>),
    max_id: i64,
    page: i64,
    roles: &[&str],
) -> (Vec<(i32, i64, i64)>, String, Vec<Sight>) {
    let rows = sqlx::query(
        "select part, grp, id, captured_at, relid, op, record, old_record, snapshot, \
                role, error, visible, columns \
         from realtime.read_changes($1, $2, $3, $4, $5) order by grp, id, relid, role",
    )
    .bind(&cursor.0)
    .bind(&cursor.1)
    .bind(max_id)
    .bind(page)
    .bind(roles)
    .fetch_all(conn)
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut snapshot = None;
    let mut sights = Vec::new();
    for row in rows {
        let part: i32 = row.get("part");
        if part == 0 {
            snapshot = row.get::<Option<String>, _>("snapshot");
            continue;
        }
        if part == 4 {
            sights.push((
                row.get("relid"),
                row.get("role"),
                row.get("visible"),
                row.get("columns"),
                row.get("error"),
            ));
            continue;
        }
        let record: String = row.get("record");
        let record: serde_json::Value = serde_json::from_str(&record).unwrap();
        assert_eq!(row.get::<String, _>("op"), "I");
        out.push((part, row.get("id"), record["n"].as_i64().unwrap_or(-1)));
    }
    (out, snapshot.expect("the read's snapshot"), sights)
}

/// Each read answers, for every table it returns rows of and every role asked about, what
/// `realtime.table_sight` answers whatever the row; a role or table it cannot answer for costs
/// that pair an error, not the read.
#[tokio::test]
async fn a_read_answers_what_its_tables_show_each_role() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    for statement in [
        "create table public.open_rows (id int8 primary key)",
        "create table public.own_rows (id int8 primary key, owner text)",
        "alter table public.own_rows enable row level security",
        "create policy own on public.own_rows for select using (owner = current_user)",
        "create table public.no_rows (id int8 primary key, secret text)",
        "revoke all on public.no_rows from anon, authenticated",
        "grant select (id) on public.no_rows to authenticated",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let cursor = snapshot(&mut conn).await;
    let max_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from realtime.changes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut relids = Vec::new();
    for table in ["open_rows", "own_rows", "no_rows"] {
        let relid: i64 = sqlx::query_scalar(
            "insert into realtime.changes (relid, op, record) \
             values ($1::regclass, 'I', '{}') returning relid::int8",
        )
        .bind(format!("public.{table}"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        relids.push(relid);
    }
    // Two rows of one table: one answer per table and role, however many rows.
    capture_into(&mut conn, "public.open_rows").await;

    let (rows, _, sights) = read_as(
        &mut conn,
        &cursor,
        max_id,
        1000,
        &["anon", "authenticated", "no_such_role"],
    )
    .await;
    assert_eq!(rows.len(), 4);
    let answer = |relid: i64, role: &str| {
        let found: Vec<&Sight> = sights
            .iter()
            .filter(|s| s.0 == relid && s.1 == role)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one answer for {relid} and {role}: {sights:?}"
        );
        (found[0].2, found[0].3.clone(), found[0].4.is_some())
    };
    assert_eq!(sights.len(), 9, "{sights:?}");
    let (open, own, none) = (relids[0], relids[1], relids[2]);
    assert_eq!(answer(open, "anon"), (Some(true), None, false));
    // Policies decide row by row: neither an answer nor an error.
    assert_eq!(answer(own, "authenticated"), (None, None, false));
    assert_eq!(answer(none, "anon"), (Some(false), None, false));
    assert_eq!(
        answer(none, "authenticated"),
        (Some(true), Some(vec!["id".to_owned()]), false)
    );
    for relid in [open, own, none] {
        assert_eq!(answer(relid, "no_such_role"), (None, None, true));
    }

    // No role asked about: no answer, the same rows.
    let (again, _, sights) = read_as(&mut conn, &cursor, max_id, 1000, &[]).await;
    assert_eq!(again, rows);
    assert!(sights.is_empty());
}

/// The read answers what `realtime.table_sight`, the row check's own decision, answers, for
/// every kind of table and role: no row-level security, policies, some columns, a schema the
/// role may not use, some columns under policies, an owner's table with row-level security
/// forced or not (asked by its owner and by a member of the owner), a role that bypasses it, a
/// superuser, the login itself, a role that does not exist, and a table dropped since its row
/// was captured.
#[tokio::test]
async fn a_reads_answers_are_the_checks_answers() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let owner = format!("owner_{tag}");
    let member = format!("member_{tag}");
    let bypass = format!("bypass_{tag}");
    let root = format!("root_{tag}");
    let login: String = sqlx::query_scalar("select session_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    for statement in [
        "create table public.open_rows (id int8)".to_owned(),
        "grant select on public.open_rows to anon, authenticated".to_owned(),
        "create table public.own_rows (id int8, owner text)".to_owned(),
        "alter table public.own_rows enable row level security".to_owned(),
        "create policy own on public.own_rows for select using (owner = current_user)".to_owned(),
        "grant select on public.own_rows to anon, authenticated".to_owned(),
        "create table public.some_columns (id int8, secret text)".to_owned(),
        "revoke all on public.some_columns from anon, authenticated".to_owned(),
        "grant select (id) on public.some_columns to authenticated".to_owned(),
        "create table public.some_own (id int8, owner text)".to_owned(),
        "alter table public.some_own enable row level security".to_owned(),
        "create policy own on public.some_own for select using (owner = current_user)".to_owned(),
        "revoke all on public.some_own from anon, authenticated".to_owned(),
        "grant select (id, owner) on public.some_own to authenticated".to_owned(),
        "create schema closed".to_owned(),
        "create table closed.rows (id int8)".to_owned(),
        "grant select on closed.rows to anon, authenticated".to_owned(),
        format!("create role {owner}"),
        format!("create role {member} in role {owner}"),
        format!("create role {bypass} bypassrls"),
        format!("create role {root} superuser"),
        format!("grant select on public.own_rows to {bypass}"),
        "create table public.owned (id int8)".to_owned(),
        "create table public.forced (id int8)".to_owned(),
        "create table public.dropped (id int8)".to_owned(),
    ] {
        sqlx::query(&statement).execute(&mut conn).await.unwrap();
    }
    for table in ["owned", "forced"] {
        for statement in [
            format!("alter table public.{table} owner to {owner}"),
            format!("alter table public.{table} enable row level security"),
            format!("grant select on public.{table} to anon"),
        ] {
            sqlx::query(&statement).execute(&mut conn).await.unwrap();
        }
    }
    sqlx::query("alter table public.forced force row level security")
        .execute(&mut conn)
        .await
        .unwrap();
    let cursor = snapshot(&mut conn).await;
    let max_id: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from realtime.changes")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    for table in [
        "public.open_rows",
        "public.own_rows",
        "public.some_columns",
        "public.some_own",
        "closed.rows",
        "public.owned",
        "public.forced",
        "public.dropped",
    ] {
        capture_into(&mut conn, table).await;
    }
    sqlx::query("drop table public.dropped")
        .execute(&mut conn)
        .await
        .unwrap();

    let gone = format!("gone_{tag}");
    let roles = [
        "anon",
        "authenticated",
        "service_role",
        &owner,
        &member,
        &bypass,
        &root,
        &login,
        &gone,
    ];
    let (rows, _, sights) = read_as(&mut conn, &cursor, max_id, 1000, &roles).await;
    assert_eq!(rows.len(), 8);
    assert_eq!(sights.len(), 8 * roles.len(), "{sights:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for (relid, role, visible, columns, error) in &sights {
        let check: (Option<String>, Option<bool>, Option<Vec<String>>) = sqlx::query_as(
            "select error, visible, columns from realtime.table_sight($1::int8::oid, $2)",
        )
        .bind(relid)
        .bind(role)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            (error, visible, columns),
            (&check.0, &check.1, &check.2),
            "table {relid}, role {role}"
        );
        kinds.insert(match (error, visible, columns) {
            (Some(e), _, _) => e.replace(&tag, "*"),
            (None, Some(true), Some(_)) => "some columns".to_owned(),
            (None, Some(v), None) => format!("all rows: {v}"),
            (None, None, None) => "row by row".to_owned(),
            (None, None, Some(_)) => "row by row, some columns".to_owned(),
            other => panic!("an answer the check never gives: {other:?}"),
        });
    }
    let expected: std::collections::BTreeSet<String> = [
        "all rows: false".to_owned(),
        "all rows: true".to_owned(),
        "row by row".to_owned(),
        "row by row, some columns".to_owned(),
        "some columns".to_owned(),
        "the table no longer exists".to_owned(),
        "role gone_* does not exist".to_owned(),
        "tokens may not act as role root_*".to_owned(),
        format!("tokens may not act as role {login}"),
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, expected, "every kind of answer compared");
    for statement in [
        "drop table public.owned, public.forced".to_owned(),
        format!("drop owned by {bypass}"),
        format!("drop role {member}, {owner}, {bypass}, {root}"),
    ] {
        sqlx::query(&statement).execute(&mut conn).await.unwrap();
    }
}

/// Tables, schemas and roles dropped under the read's answer (migration 0028): one connection
/// creates and drops them as fast as it can, with an outbox row of each table, while another
/// asks about each of them with every role, by itself and through the read. An ask answers (an
/// error entry, or nothing, for what is gone) or, in the narrow race of an object dropped
/// between the statement's snapshot and a privilege PostgreSQL asks of it, fails with an error
/// the listener reads past without the answers (`capture::outbox::answer_broken`: SQLSTATE
/// class 42 or 3F, or `XX000`); never with another error.
#[tokio::test]
async fn objects_dropped_under_the_answer_cost_at_most_an_error_the_listener_reads_past() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = TestDb::new().await;
    let mut asker = db.connect().await;
    let mut ddl = db.connect().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("churn_{tag}_");
    let rounds = 60;
    let names: Vec<String> = (0..rounds).map(|i| format!("{prefix}{i}")).collect();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let churn = {
        let (names, done) = (names.clone(), done.clone());
        tokio::spawn(async move {
            for name in &names {
                for statement in [
                    format!("create role {name}"),
                    format!("create schema {name}"),
                    format!("create table {name}.open (id int8)"),
                    format!("create table {name}.some (id int8, secret text)"),
                    format!("create table {name}.own (id int8)"),
                    format!(
                        "insert into realtime.changes (relid, op, record) \
                         select c.oid, 'I', '{{}}' from pg_class c \
                         where c.relnamespace = '{name}'::regnamespace and c.relkind = 'r'"
                    ),
                    format!("alter table {name}.own enable row level security"),
                    format!("grant usage on schema {name} to {name}"),
                    format!("grant select on {name}.open, {name}.own to {name}"),
                    format!("grant select (id) on {name}.some to {name}"),
                    format!("drop schema {name} cascade"),
                    format!("drop role {name}"),
                    "delete from realtime.changes".to_owned(),
                ] {
                    sqlx::query(&statement).execute(&mut ddl).await.unwrap();
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let (mut asks, mut seen, mut raced) = (0u64, 0u64, 0u64);
    while !done.load(Ordering::Acquire) {
        let through_read = asks % 2 == 1;
        let query = if through_read {
            sqlx::query_as(
                "select s.error from realtime.read_changes('1', '{}', 0, 1000, $1) s \
                 where s.part = 4",
            )
            .bind(&names)
        } else {
            sqlx::query_as(
                "select s.error from pg_class c \
                 join pg_namespace n on n.oid = c.relnamespace \
                 cross join unnest($1::text[]) as r(name) \
                 cross join lateral realtime.table_sight_inline(c.oid, r.name) s \
                 where starts_with(n.nspname, $2)",
            )
            .bind(&names)
            .bind(&prefix)
        };
        let answers: Result<Vec<(Option<String>,)>, _> = query.fetch_all(&mut asker).await;
        asks += 1;
        match answers {
            Ok(answers) => seen += u64::from(!answers.is_empty()),
            Err(sqlx::Error::Database(e))
                if e.code().is_some_and(|c| {
                    c.starts_with("42") || c.starts_with("3F") || c == "XX000"
                }) =>
            {
                raced += 1;
            }
            Err(e) => panic!("ask {asks} (through the read: {through_read}): {e}"),
        }
    }
    churn.await.unwrap();
    assert!(seen > 0, "{asks} asks, none while a table was there");
    assert!(raced * 2 < asks, "{raced} of {asks} asks failed");
}

/// PostgreSQL inlines the answer into the statement that asks it (no function call per table
/// and role): the plan scans the catalog itself, and has no function scan of it.
#[tokio::test]
async fn the_answer_is_inlined_into_the_statement() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select s.* from unnest(array['pg_class'::regclass::oid]) as t(relid) \
         cross join unnest(array['anon', 'authenticated']) as r(name) \
         cross join lateral realtime.table_sight_inline(t.relid, r.name) s",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("table_sight_inline"), "{plan}");
    assert!(plan.contains("pg_class"), "{plan}");
}

/// One more outbox row of `table`, written directly.
async fn capture_into(conn: &mut PgConnection, table: &str) {
    sqlx::query(
        "insert into realtime.changes (relid, op, record) values ($1::regclass, 'I', '{}')",
    )
    .bind(table)
    .execute(conn)
    .await
    .unwrap();
}

/// A row of a transaction that was in progress at the previous read is returned (part 1,
/// found by its xid), as are rows above the previous maximum (part 3), each once, in id order,
/// with the snapshot the read saw; a row committed before the previous read is not returned.
#[tokio::test]
async fn a_read_returns_in_flight_and_new_rows_with_its_snapshot() {
    let db = TestDb::new().await;
    let mut writer = db.connect().await;
    let mut late = db.connect().await;
    let mut reader = db.connect().await;

    capture(&mut writer, 1).await;
    let mut open = late.begin().await.unwrap();
    let in_flight = capture(&mut open, 2).await;
    let before = capture(&mut writer, 3).await;
    // The previous read: it saw row 3, not row 2 (its transaction was still in progress).
    let cursor = snapshot(&mut reader).await;
    assert!(!cursor.1.is_empty(), "the open transaction is in progress");
    open.commit().await.unwrap();
    let after = capture(&mut writer, 4).await;

    let (rows, seen) = read(&mut reader, &cursor, before, 1000).await;
    assert_eq!(rows, vec![(1, in_flight, 2), (3, after, 4)]);
    assert!(seen.contains(':'), "a pg_snapshot text: {seen}");

    // From where that read stopped, nothing is returned again.
    let next = snapshot(&mut reader).await;
    let (rows, _) = read(&mut reader, &next, after, 1000).await;
    assert_eq!(rows, vec![]);

    // A page limits each part: the caller sees that the part is full.
    let more: Vec<i64> = {
        let mut ids = Vec::new();
        for n in 5..10 {
            ids.push(capture(&mut writer, n).await);
        }
        ids
    };
    let (rows, _) = read(&mut reader, &next, after, 3).await;
    let ids: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(ids, more[..3].to_vec());
}

/// On an outbox of 50,000 rows, repeated reads from a cursor near its end touch only the rows
/// they return and a few index entries, never the table from its start; the plan of the read
/// is made once per connection (generic), so this holds for every read, not only the first.
#[tokio::test]
async fn reads_walk_the_indexes_from_the_cursor_whatever_the_outbox_size() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    sqlx::query(
        "insert into realtime.changes (relid, op, record) \
         select 'pg_class'::regclass, 'I', jsonb_build_object('n', g) \
         from generate_series(1, 50000) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("analyze realtime.changes")
        .execute(&mut conn)
        .await
        .unwrap();
    let max_id: i64 = sqlx::query_scalar("select max(id) from realtime.changes")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    // This session's statistics are flushed before the reads, the reader's before each count.
    flush(&mut conn).await;
    let mut reader = db.connect().await;
    let (seq_before, fetched_before) = counters(&mut reader).await;
    let reads = 20;
    for _ in 0..reads {
        let cursor = snapshot(&mut reader).await;
        let (rows, _) = read(&mut reader, &cursor, max_id - 5, 1000).await;
        assert_eq!(rows.len(), 5);
    }
    let (seq_after, fetched_after) = counters(&mut reader).await;
    assert_eq!(seq_after - seq_before, 0, "no read scans the table");
    let fetched = fetched_after - fetched_before;
    assert!(
        fetched <= reads * 10,
        "{fetched} rows fetched through the indexes in {reads} reads of 5 rows each"
    );
}

/// Makes this session's pending statistics visible to every session once its statement ends.
async fn flush(conn: &mut PgConnection) {
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(conn)
        .await
        .unwrap();
}

/// The outbox's sequential tuples read and tuples fetched through its indexes, counted after
/// this session's own pending statistics were flushed.
async fn counters(conn: &mut PgConnection) -> (i64, i64) {
    flush(&mut *conn).await;
    let row = sqlx::query(
        "select coalesce(seq_tup_read, 0)::int8 as seq, coalesce(idx_tup_fetch, 0)::int8 as fetched \
         from pg_stat_user_tables where relid = 'realtime.changes'::regclass",
    )
    .fetch_one(conn)
    .await
    .unwrap();
    (row.get("seq"), row.get("fetched"))
}
