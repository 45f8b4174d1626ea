//! The row-level security check the gateway asks, `realtime.visible_rows` over arrays
//! (migrations/0026), answers exactly as its JSON form (0013, kept for nodes of an earlier
//! version during an upgrade) does, for generated requests over tables without row-level
//! security, with an owner policy, with a policy that raises on some rows, with only some
//! columns granted, and for roles tokens may not act as. Many claim sets of one role, the case
//! the arrays form answers in one statement, are among them.

mod common;

use common::TestDb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use sqlx::PgConnection;

/// Tables the requests ask about, with their rows' shape `(id int, owner uuid, body text)`.
const TABLES: [&str; 4] = ["open_notes", "own_notes", "fussy_notes", "narrow_notes"];

/// Roles claim sets name: two tokens may act as, one that does not exist, and the login's own
/// (a superuser, never acted as).
const ROLES: [&str; 4] = ["authenticated", "anon", "nobody_at_all", "postgres"];

const USERS: [&str; 3] = [
    "8f0c1a52-4bb4-4a57-9b0e-0f2f7f6c9d11",
    "0d3c5a1e-2b7f-4c55-8e1a-5b4f2c9e7a60",
    "5b2e9d41-7c3a-4f18-a0d6-93e1c8b2f574",
];

async fn setup(conn: &mut PgConnection) -> Vec<u32> {
    for sql in [
        "create table public.open_notes (id int primary key, owner uuid, body text)",
        "create table public.own_notes (id int primary key, owner uuid, body text)",
        "alter table public.own_notes enable row level security",
        "create policy mine on public.own_notes for select to authenticated \
         using (owner = auth.uid() or owner is null)",
        "create table public.fussy_notes (id int primary key, owner uuid, body text)",
        "alter table public.fussy_notes enable row level security",
        // Raises for a body that is not a number: such rows are answered one by one.
        "create policy numbers on public.fussy_notes for select to authenticated, anon \
         using (body::int > 0)",
        "create table public.narrow_notes (id int primary key, owner uuid, body text)",
        "revoke all on public.narrow_notes from anon, authenticated",
        "grant select (id, body) on public.narrow_notes to authenticated",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    let mut relids = Vec::new();
    for table in TABLES {
        let relid: i64 = sqlx::query_scalar("select $1::regclass::oid::int8")
            .bind(format!("public.{table}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        relids.push(u32::try_from(relid).unwrap());
    }
    relids
}

/// A row: its owner (a user) and its body.
type Row = (Option<usize>, &'static str);

/// A generated request: claim sets (role, sub), and per table asked about its claim sets and
/// rows.
#[derive(Debug, Clone)]
struct Ask {
    claims: Vec<(usize, Option<usize>)>,
    tables: Vec<(usize, Vec<usize>, Vec<Row>)>,
}

fn ask() -> impl Strategy<Value = Ask> {
    let claim = (
        prop_oneof![6 => Just(0usize), 3 => Just(1usize), 1 => 2usize..4],
        proptest::option::of(0..USERS.len()),
    );
    let row = (
        proptest::option::of(0..USERS.len()),
        prop_oneof![Just("7"), Just("-2"), Just("seven")],
    );
    (1usize..40)
        .prop_flat_map(move |n| {
            let table = (
                0..TABLES.len(),
                proptest::collection::vec(0..n, 1..=n),
                proptest::collection::vec(row.clone(), 1..5),
            );
            (
                proptest::collection::vec(claim.clone(), n),
                proptest::collection::vec(table, 1..4),
            )
        })
        .prop_map(|(claims, tables)| {
            // A table is asked about once per request, each claim set once per table.
            let mut seen = std::collections::HashSet::new();
            let tables = tables
                .into_iter()
                .filter(|(t, _, _)| seen.insert(*t))
                .map(|(t, mut cs, rows)| {
                    cs.sort_unstable();
                    cs.dedup();
                    (t, cs, rows)
                })
                .collect();
            Ask { claims, tables }
        })
}

type Answer = Vec<(
    i32,
    i32,
    Option<i32>,
    Option<bool>,
    Option<Vec<String>>,
    Option<String>,
)>;

async fn both_forms(conn: &mut PgConnection, relids: &[u32], ask: &Ask) -> (Answer, Answer) {
    let claim_json = |&(role, user): &(usize, Option<usize>)| {
        let mut c = json!({"role": ROLES[role], "exp": 4_000_000_000_u64});
        if let Some(u) = user {
            c["sub"] = json!(USERS[u]);
        }
        c.to_string()
    };
    let rows_json = |rows: &[Row]| {
        json!(rows
            .iter()
            .enumerate()
            .map(|(i, (owner, body))| json!({"id": i, "owner": owner.map(|u| USERS[u]), "body": body}))
            .collect::<Vec<_>>())
    };
    let request = json!({
        "claims": ask.claims.iter().map(|c| json!({"role": ROLES[c.0], "claims": claim_json(c)})).collect::<Vec<_>>(),
        "tables": ask.tables.iter().map(|(t, cs, rows)| json!({
            "relid": relids[*t], "claims": cs, "rows": rows_json(rows),
        })).collect::<Vec<_>>(),
    });
    let order = "order by t, c, r nulls first";
    let from_json: Answer = sqlx::query_as(&format!(
        "select t, c, r, visible, columns, error from realtime.visible_rows($1::jsonb) {order}"
    ))
    .bind(&request)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let roles: Vec<&str> = ask.claims.iter().map(|c| ROLES[c.0]).collect();
    let claims: Vec<String> = ask.claims.iter().map(claim_json).collect();
    let table_relids: Vec<i64> = ask.tables.iter().map(|t| i64::from(relids[t.0])).collect();
    let table_rows: Vec<String> = ask
        .tables
        .iter()
        .map(|t| rows_json(&t.2).to_string())
        .collect();
    let mut pair_tables = Vec::new();
    let mut pair_claims = Vec::new();
    for (i, (_, cs, _)) in ask.tables.iter().enumerate() {
        for &c in cs {
            pair_tables.push(i32::try_from(i).unwrap());
            pair_claims.push(i32::try_from(c).unwrap());
        }
    }
    let from_arrays: Answer = sqlx::query_as(&format!(
        "select t, c, r, visible, columns, error \
         from realtime.visible_rows($1, $2, $3::int8[]::oid[], $4, $5, $6) {order}"
    ))
    .bind(&roles)
    .bind(&claims)
    .bind(&table_relids)
    .bind(&table_rows)
    .bind(&pair_tables)
    .bind(&pair_claims)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (from_json, from_arrays)
}

#[test]
fn both_forms_of_the_check_answer_alike() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::new());
    let mut conn = rt.block_on(db.connect());
    let relids = rt.block_on(setup(&mut conn));
    // The runner takes a `Fn`: what the cases change is borrowed through cells.
    let conn = std::cell::RefCell::new(conn);
    let kinds = std::cell::RefCell::new(std::collections::HashSet::new());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&ask(), |ask| {
            let (from_json, from_arrays) =
                rt.block_on(both_forms(&mut conn.borrow_mut(), &relids, &ask));
            prop_assert_eq!(&from_arrays, &from_json);
            for (_, _, r, visible, columns, error) in &from_arrays {
                kinds.borrow_mut().insert((
                    r.is_some(),
                    *visible,
                    columns.is_some(),
                    error.is_some(),
                ));
            }
            Ok(())
        })
        .unwrap();
    // The generated requests reached every kind of answer: table-level all, none, rows checked
    // and errors, fewer columns, visible rows and rows whose check raised.
    for kind in [
        (false, Some(true), false, false),
        (false, Some(false), false, false),
        (false, None, false, false),
        (false, None, false, true),
        (false, Some(true), true, false),
        (true, Some(true), false, false),
        (true, None, false, true),
    ] {
        assert!(kinds.borrow().contains(&kind), "no answer of kind {kind:?}");
    }
}
