//! Row-level security on Postgres Changes: who receives which change of a table with policies,
//! column privileges and failing checks, against a real PostgreSQL and raw WebSocket clients.
//!
//! "Nothing else arrived" is shown without waiting: after the writes under test, a row is
//! inserted into an unprotected table every client also subscribes to, and since changes are
//! delivered in commit order, that marker must be the next thing each client receives.

mod common;

use std::time::Duration;

use common::{eventually, realtime_table, token, TestDb, TestGateway, WsClient};
use serde_json::{json, Value};

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const C: &str = "cccccccc-0000-4000-8000-000000000003";

async fn sql(db: &TestDb, statements: &[&str]) {
    let mut conn = db.connect().await;
    for s in statements {
        sqlx::query(s)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// `notes` with a Supabase-style owner policy for `authenticated` and `secret` readable by no
/// one but the owner of the table; `markers` unprotected.
async fn protected_tables(db: &TestDb) {
    realtime_table(db, "notes", "user_id uuid, body text, secret text").await;
    realtime_table(db, "markers", "label text").await;
    sql(
        db,
        &[
            "alter table notes replica identity full",
            "alter table notes enable row level security",
            "create policy own_notes on notes for select to authenticated \
             using (user_id = auth.uid())",
            "revoke select on notes from authenticated",
            "grant select (id, user_id, body) on notes to authenticated",
        ],
    )
    .await;
}

/// A database with [`protected_tables`] and a gateway on it.
async fn start() -> (TestDb, TestGateway) {
    let db = TestDb::new().await;
    protected_tables(&db).await;
    let gw = TestGateway::start(&db).await;
    (db, gw)
}

/// Every change of `notes`.
fn star() -> Value {
    json!({"event": "*", "schema": "public", "table": "notes"})
}

async fn client(gw: &TestGateway, role: &str, sub: Option<&str>) -> WsClient {
    WsClient::connect(&gw.ws_url(&token(role, sub), "2.0.0")).await
}

async fn watch(c: &mut WsClient, notes: Value) {
    c.subscribe(
        "realtime:watch",
        json!([notes, {"event": "INSERT", "schema": "public", "table": "markers"}]),
    )
    .await;
}

/// The data of each change received up to the marker labelled `label`, which ends the list.
async fn until_marker(c: &mut WsClient, label: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let m = c.expect_event("realtime:watch", "postgres_changes").await;
        let data = m.payload["data"].clone();
        if data["table"] == "markers" {
            assert_eq!(data["record"]["label"], label, "markers arrive in order");
            return seen;
        }
        seen.push(data);
    }
}

fn summary(changes: &[Value]) -> Vec<(String, Value)> {
    changes
        .iter()
        .map(|d| {
            let row = if d["type"] == "DELETE" {
                &d["old_record"]
            } else {
                &d["record"]
            };
            (d["type"].as_str().unwrap().to_owned(), row["body"].clone())
        })
        .collect()
}

/// Two users each receive exactly their own inserts, updates and deletes, once; anon nothing;
/// service_role everything; a column the role may not select never appears.
#[tokio::test]
async fn each_user_receives_only_their_own_rows() {
    let (db, gw) = start().await;
    let star = star();
    let mut a = client(&gw, "authenticated", Some(A)).await;
    let mut b = client(&gw, "authenticated", Some(B)).await;
    let mut anon = client(&gw, "anon", None).await;
    let mut service = client(&gw, "service_role", None).await;
    watch(&mut a, star.clone()).await;
    watch(&mut b, star.clone()).await;
    watch(&mut anon, json!({"event": "*", "schema": "*"})).await;
    watch(&mut service, star).await;

    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body, secret) values ('{A}', 'a1', 'sa')"),
            &format!("insert into notes (user_id, body, secret) values ('{B}', 'b1', 'sb')"),
            "update notes set body = 'a2' where body = 'a1'",
            "update notes set body = 'b2' where body = 'b1'",
            "delete from notes where body = 'a2'",
            "delete from notes where body = 'b2'",
            "insert into markers (label) values ('end')",
        ],
    )
    .await;

    let mine = |x: &str| {
        vec![
            ("INSERT".to_owned(), json!(format!("{x}1"))),
            ("UPDATE".to_owned(), json!(format!("{x}2"))),
            ("DELETE".to_owned(), json!(format!("{x}2"))),
        ]
    };
    let got_a = until_marker(&mut a, "end").await;
    assert_eq!(summary(&got_a), mine("a"));
    let got_b = until_marker(&mut b, "end").await;
    assert_eq!(summary(&got_b), mine("b"));
    for data in got_a.iter().chain(&got_b) {
        let text = data.to_string();
        assert!(!text.contains("secret"), "revoked column shown: {text}");
        assert!(
            !text.contains("\"sa\"") && !text.contains("\"sb\""),
            "{text}"
        );
        assert_eq!(data["errors"], Value::Null, "{text}");
    }
    // Under replica identity full the old row of an update the user could see is whole (but
    // for the revoked column).
    assert_eq!(
        got_a[1]["old_record"],
        json!({"id": 1, "user_id": A, "body": "a1"})
    );
    assert!(until_marker(&mut anon, "end").await.is_empty());
    let all = until_marker(&mut service, "end").await;
    assert_eq!(all.len(), 6);
    assert_eq!(
        all[0]["record"]["secret"], "sa",
        "service_role sees every column"
    );
}

/// A row handed from one user to another: the new owner gets the update without the old
/// version's values, the old owner gets nothing; visibility follows the captured row, so a
/// later delete does not change who received the earlier changes.
#[tokio::test]
async fn visibility_is_decided_on_the_row_as_captured() {
    let (db, gw) = start().await;
    let star = star();
    let mut a = client(&gw, "authenticated", Some(A)).await;
    let mut b = client(&gw, "authenticated", Some(B)).await;
    watch(&mut a, star.clone()).await;
    watch(&mut b, star).await;
    // One transaction: the rows are gone before the gateway reads the changes.
    sql(
        &db,
        &[
            "begin",
            &format!("insert into notes (user_id, body) values ('{A}', 'private to a')"),
            &format!("update notes set user_id = '{B}', body = 'now b''s' where id = 1"),
            "delete from notes",
            "commit",
            "insert into markers (label) values ('end')",
        ],
    )
    .await;
    let got_a = until_marker(&mut a, "end").await;
    assert_eq!(
        summary(&got_a),
        vec![("INSERT".into(), json!("private to a"))]
    );
    let got_b = until_marker(&mut b, "end").await;
    assert_eq!(
        summary(&got_b),
        vec![
            ("UPDATE".into(), json!("now b's")),
            ("DELETE".into(), json!("now b's")),
        ]
    );
    assert_eq!(
        got_b[0]["old_record"],
        json!({"id": 1}),
        "the old version was a's: only its key is shown"
    );
}

/// A policy that raises for one claim set gives that claim set an error entry (without the
/// database's message) and an audit record; the others keep receiving.
#[tokio::test]
async fn a_failing_check_costs_only_its_own_claim_set() {
    let db = TestDb::new().await;
    protected_tables(&db).await;
    sql(
        &db,
        &[&format!(
            "create policy fragile on notes as restrictive for select to authenticated \
             using (case when auth.uid() = '{C}' \
                    then length(body) / (length(body) - length(body)) > 0 else true end)"
        )],
    )
    .await;
    let gw = TestGateway::start(&db).await;
    let star = star();
    let mut a = client(&gw, "authenticated", Some(A)).await;
    let mut c = client(&gw, "authenticated", Some(C)).await;
    watch(&mut a, star.clone()).await;
    watch(&mut c, star).await;
    // Another channel of c's claims whose filter matches no row: it is told of the failed
    // check all the same, so the entry says nothing about what the filter would have matched.
    let mut c_filtered = client(&gw, "authenticated", Some(C)).await;
    watch(
        &mut c_filtered,
        json!({"event": "*", "schema": "public", "table": "notes", "filter": "body=eq.nothing"}),
    )
    .await;
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{A}', 'a1')"),
            &format!("insert into notes (user_id, body) values ('{C}', 'c1')"),
            "insert into markers (label) values ('end')",
        ],
    )
    .await;
    assert_eq!(
        summary(&until_marker(&mut a, "end").await),
        vec![("INSERT".into(), json!("a1"))]
    );
    // c's own row certainly reaches the policy that raises; a's row too when PostgreSQL
    // evaluates the restrictive policy first (it may evaluate either side of `and` first).
    let got_c = until_marker(&mut c, "end").await;
    assert!(
        (1..=2).contains(&got_c.len()),
        "error entries only: {got_c:?}"
    );
    for entry in &got_c {
        assert_eq!(entry["record"], json!({}), "{entry}");
        assert_eq!(entry["columns"], json!([]), "no column names: {entry}");
        let errors = entry["errors"].to_string();
        assert!(errors.contains("row-level security"), "{errors}");
        assert!(!errors.contains("division"), "no database text: {errors}");
    }
    let got = until_marker(&mut c_filtered, "end").await;
    assert!(!got.is_empty(), "an error entry despite the filter");
    assert!(got.iter().all(|e| e["record"] == json!({})), "{got:?}");
    let pool = db.pool().await;
    eventually(Duration::from_secs(10), "the failure audited", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from realtime.audit_log where kind = 'rls_check_failed' \
                 and detail->>'reason' like '%division by zero%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
}

/// Closed by default: while the check cannot run at all, only service_role receives; the
/// others get error entries, never the rows. A role the database does not know gets errors.
/// What a table shows a role whatever the row comes with the outbox read (migration 0027): a
/// table without policies is still delivered while only the row check is gone, and gets error
/// entries once the read cannot answer either (it is then made without the answers).
#[tokio::test]
async fn an_unavailable_check_delivers_to_service_role_only() {
    let (db, gw) = start().await;
    let star = star();
    let mut a = client(&gw, "authenticated", Some(A)).await;
    let mut stranger = client(&gw, "no_such_role", Some(B)).await;
    let mut root = client(&gw, "postgres", None).await;
    let mut service = client(&gw, "service_role", None).await;
    watch(&mut a, star.clone()).await;
    watch(&mut stranger, star.clone()).await;
    watch(&mut root, star.clone()).await;
    watch(&mut service, star).await;
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{B}', 'b1')"),
            "insert into markers (label) values ('one')",
        ],
    )
    .await;
    assert!(until_marker(&mut a, "one").await.is_empty());
    // A role the database does not know, and a superuser role (tokens never act as one):
    // error entries for both tables, no row.
    for odd in [&mut stranger, &mut root] {
        for table in ["notes", "markers"] {
            expect_error_entry(odd, table).await;
        }
    }
    assert_eq!(until_marker(&mut service, "one").await.len(), 1);

    // The row check is gone: notes, whose policies need it, gets an error entry; markers, which
    // the read answered for the role, arrives.
    sql(
        &db,
        &["drop function realtime.visible_rows(text[], text[], oid[], text[], int[], int[])"],
    )
    .await;
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{A}', 'a1')"),
            "insert into markers (label) values ('two')",
        ],
    )
    .await;
    expect_error_entry(&mut a, "notes").await;
    assert!(until_marker(&mut a, "two").await.is_empty());

    // The read's answer is gone too: the read is made without it, and the row check, gone,
    // decides both changes: error entries in place of both, not the rows; capture goes on.
    sql(
        &db,
        &["alter function realtime.table_sight_inline(oid, text) rename to sight_gone"],
    )
    .await;
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{A}', 'a2')"),
            "insert into markers (label) values ('three')",
        ],
    )
    .await;
    for table in ["notes", "markers"] {
        expect_error_entry(&mut a, table).await;
    }
    let all = until_marker(&mut service, "two").await;
    assert_eq!(summary(&all), vec![("INSERT".into(), json!("a1"))]);
    let all = until_marker(&mut service, "three").await;
    assert_eq!(summary(&all), vec![("INSERT".into(), json!("a2"))]);
}

/// The next change `c` receives is an error entry in place of a change of `table`.
async fn expect_error_entry(c: &mut WsClient, table: &str) {
    let m = c.expect_event("realtime:watch", "postgres_changes").await;
    let data = &m.payload["data"];
    assert_eq!(
        (&data["table"], &data["record"]),
        (&json!(table), &json!({}))
    );
    assert!(
        data["errors"].to_string().contains("row-level security"),
        "{data}"
    );
}

/// Once the read knows a role, a table it answers for whatever the row costs no check: every
/// row (no row-level security) or none (no privilege), decided afresh by each read. A table
/// whose policies decide row by row is still checked. The checks are counted by the database:
/// the check function is wrapped in one that records each call.
#[tokio::test]
async fn tables_the_read_answers_for_cost_no_check() {
    let db = TestDb::new().await;
    protected_tables(&db).await;
    sql(
        &db,
        &[
            "create table public.checks_asked (at timestamptz default now())",
            "alter function realtime.visible_rows(text[], text[], oid[], text[], int[], int[]) \
             rename to visible_rows_counted",
            "create function realtime.visible_rows(roles text[], claims text[], relids oid[], \
                 table_rows text[], pair_tables int[], pair_claims int[]) \
             returns table (t int, c int, r int, visible boolean, columns text[], error text) \
             language plpgsql as $$ begin \
                 insert into public.checks_asked default values; \
                 return query select * from realtime.visible_rows_counted(roles, claims, \
                     relids, table_rows, pair_tables, pair_claims); \
             end $$",
        ],
    )
    .await;
    let gw = TestGateway::start(&db).await;
    let pool = db.pool().await;
    let asked = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from public.checks_asked")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let mut a = client(&gw, "authenticated", Some(A)).await;
    // service_role sees every change, unchecked: once it has a change, the read that brought
    // it has been decided for `a` too.
    let mut service = client(&gw, "service_role", None).await;
    watch(&mut a, star()).await;
    watch(&mut service, star()).await;
    // The first page the role's claim sets are decided for is checked; that notes the role.
    sql(&db, &["insert into markers (label) values ('one')"]).await;
    assert!(until_marker(&mut a, "one").await.is_empty());
    let first = asked().await;
    assert_eq!(first, 1, "the first page was checked");

    sql(&db, &["insert into markers (label) values ('two')"]).await;
    assert!(until_marker(&mut a, "two").await.is_empty());
    // While the privilege is gone, the change is not delivered; once it is back, it is.
    sql(
        &db,
        &[
            "revoke select on markers from authenticated",
            "insert into markers (label) values ('hidden')",
        ],
    )
    .await;
    for label in ["one", "two", "hidden"] {
        assert!(until_marker(&mut service, label).await.is_empty());
    }
    sql(
        &db,
        &[
            "grant select on markers to authenticated",
            "insert into markers (label) values ('three')",
        ],
    )
    .await;
    assert!(until_marker(&mut a, "three").await.is_empty());
    assert_eq!(asked().await, first, "no check for markers");

    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{A}', 'a1')"),
            &format!("insert into notes (user_id, body) values ('{B}', 'b1')"),
            "insert into markers (label) values ('four')",
        ],
    )
    .await;
    let got = until_marker(&mut a, "four").await;
    assert_eq!(summary(&got), vec![("INSERT".into(), json!("a1"))]);
    assert!(asked().await > first, "notes checked row by row");
}

/// A filter on a column the role may not select would answer questions about its values: such
/// a subscription matches nothing, whether its filter would match or not; a filter on a
/// readable column works.
#[tokio::test]
async fn filters_on_unreadable_columns_match_nothing() {
    let (db, gw) = start().await;
    let mut a = client(&gw, "authenticated", Some(A)).await;
    watch(
        &mut a,
        json!({"event": "INSERT", "schema": "public", "table": "notes", "filter": "secret=eq.x"}),
    )
    .await;
    let mut b = client(&gw, "authenticated", Some(A)).await;
    watch(
        &mut b,
        json!({"event": "INSERT", "schema": "public", "table": "notes", "filter": "body=eq.hi"}),
    )
    .await;
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body, secret) values ('{A}', 'hi', 'x')"),
            &format!("insert into notes (user_id, body, secret) values ('{A}', 'ho', 'y')"),
            "insert into markers (label) values ('end')",
        ],
    )
    .await;
    assert!(until_marker(&mut a, "end").await.is_empty());
    let got = until_marker(&mut b, "end").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["errors"], Value::Null);
    assert_eq!(
        got[0]["record"],
        json!({"id": 1, "user_id": A, "body": "hi"})
    );
}

/// A page of rows larger than one check request is checked in parts: every change gets its
/// own verdict.
#[tokio::test]
async fn pages_of_big_rows_are_checked_in_parts() {
    let (db, gw) = start().await;
    let mut a = client(&gw, "authenticated", Some(A)).await;
    let mut b = client(&gw, "authenticated", Some(B)).await;
    watch(&mut a, star()).await;
    watch(&mut b, star()).await;
    // About 15 MB of rows in one transaction: one page, more than one request.
    sql(
        &db,
        &[
            "begin",
            &format!(
                "insert into notes (user_id, body) \
                 select '{A}', repeat('x', 5000000) || g from generate_series(1, 3) g"
            ),
            "commit",
            "insert into markers (label) values ('end')",
        ],
    )
    .await;
    let got = until_marker(&mut a, "end").await;
    assert_eq!(got.len(), 3, "each of a's rows, once");
    for data in &got {
        let errors = data["errors"].to_string();
        assert!(!errors.contains("row-level security"), "{errors}");
    }
    assert!(until_marker(&mut b, "end").await.is_empty());
}

/// A channel whose token is replaced by one of another user (an `access_token` push) is
/// decided with the new claims from then on: it receives the new user's rows, not the old
/// one's.
#[tokio::test]
async fn a_pushed_token_of_another_user_changes_what_the_channel_sees() {
    let (db, gw) = start().await;
    let mut c = client(&gw, "authenticated", Some(A)).await;
    watch(&mut c, star()).await;
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{A}', 'a1')"),
            &format!("insert into notes (user_id, body) values ('{B}', 'b1')"),
            "insert into markers (label) values ('before')",
        ],
    )
    .await;
    assert_eq!(
        summary(&until_marker(&mut c, "before").await),
        vec![("INSERT".into(), json!("a1"))]
    );
    c.send(
        None,
        "realtime:watch",
        "access_token",
        json!({"access_token": token("authenticated", Some(B))}),
    )
    .await;
    // The push is never answered; a heartbeat's reply shows it was handled before the writes.
    let hb = c.send(None, "phoenix", "heartbeat", json!({})).await;
    loop {
        let m = c.next().await.expect("open");
        if m.topic == "phoenix" && m.msg_ref.as_deref() == Some(hb.as_str()) {
            break;
        }
    }
    sql(
        &db,
        &[
            &format!("insert into notes (user_id, body) values ('{A}', 'a2')"),
            &format!("insert into notes (user_id, body) values ('{B}', 'b2')"),
            "insert into markers (label) values ('after')",
        ],
    )
    .await;
    assert_eq!(
        summary(&until_marker(&mut c, "after").await),
        vec![("INSERT".into(), json!("b2"))]
    );
}
