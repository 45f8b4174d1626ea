//! Supabase's roles and `auth` helpers on a plain PostgreSQL (`migrations/0009`): the roles
//! exist, `auth.uid()`, `auth.role()` and `auth.jwt()` read the request's claims the way
//! Supabase's do, and a Supabase-style row-level-security policy filters rows by them.

mod common;

use common::TestDb;
use sqlx::{Connection, PgConnection};

const USER: &str = "8f0c1a52-4bb4-4a57-9b0e-0f2f7f6c9d11";
const OTHER: &str = "0d3c5a1e-2b7f-4c55-8e1a-5b4f2c9e7a60";

/// Runs `sql` (one row, one column read as text) in a transaction acting as `authenticated`
/// with `claims` set as PostgREST sets them (`None`: no claims at all), then rolls back.
async fn as_authenticated(
    conn: &mut PgConnection,
    claims: Option<&str>,
    sql: &str,
) -> Vec<Option<String>> {
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("set local role authenticated")
        .execute(&mut *tx)
        .await
        .unwrap();
    if let Some(claims) = claims {
        sqlx::query("select set_config('request.jwt.claims', $1, true)")
            .bind(claims)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let rows: Vec<Option<String>> = sqlx::query_scalar(sql).fetch_all(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    rows
}

fn claims(sub: &str) -> String {
    serde_json::json!({"sub": sub, "role": "authenticated", "email": "a@example.com"}).to_string()
}

/// The three roles exist, cannot log in, and `service_role` bypasses row-level security (the
/// test cluster's migrating role is a superuser).
#[tokio::test]
async fn supabase_roles_exist() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "select rolname::text, rolcanlogin, rolbypassrls from pg_roles \
         where rolname in ('anon', 'authenticated', 'service_role') order by rolname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("anon".to_owned(), false, false),
            ("authenticated".to_owned(), false, false),
            ("service_role".to_owned(), false, true),
        ]
    );
}

/// With claims set, the helpers return the user id, the role and the claims; without, null.
#[tokio::test]
async fn auth_helpers_read_the_request_claims() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let claims = claims(USER);
    assert_eq!(
        as_authenticated(&mut conn, Some(&claims), "select auth.uid()::text").await,
        vec![Some(USER.to_owned())]
    );
    assert_eq!(
        as_authenticated(&mut conn, Some(&claims), "select auth.role()").await,
        vec![Some("authenticated".to_owned())]
    );
    assert_eq!(
        as_authenticated(&mut conn, Some(&claims), "select auth.jwt() ->> 'sub'").await,
        vec![Some(USER.to_owned())]
    );
    assert_eq!(
        as_authenticated(&mut conn, Some(&claims), "select auth.jwt() ->> 'email'").await,
        vec![Some("a@example.com".to_owned())]
    );
    for sql in [
        "select auth.uid()::text",
        "select auth.role()",
        "select auth.jwt()::text",
    ] {
        assert_eq!(
            as_authenticated(&mut conn, None, sql).await,
            vec![None],
            "{sql}"
        );
    }
    // A sub that is not a uuid is no user id (and no error).
    let odd = serde_json::json!({"sub": "not-a-uuid", "role": "authenticated"}).to_string();
    assert_eq!(
        as_authenticated(&mut conn, Some(&odd), "select auth.uid()::text").await,
        vec![None]
    );
    // The legacy per-claim setting is read too.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("select set_config('request.jwt.claim.sub', $1, true)")
        .bind(OTHER)
        .execute(&mut *tx)
        .await
        .unwrap();
    let uid: Option<String> = sqlx::query_scalar("select auth.uid()::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(uid.as_deref(), Some(OTHER));
    tx.rollback().await.unwrap();
}

/// A policy `using (user_id = auth.uid())` shows `authenticated` only its own rows.
#[tokio::test]
async fn supabase_style_policy_filters_rows() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    for sql in [
        "create table public.notes (id int primary key, user_id uuid not null, body text)",
        "alter table public.notes enable row level security",
        "create policy own_notes on public.notes for select to authenticated \
         using (user_id = auth.uid())",
        "grant select on public.notes to authenticated",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    sqlx::query(
        "insert into public.notes values (1, $1, 'mine'), (2, $2, 'theirs'), (3, $1, 'also mine')",
    )
    .bind(uuid::Uuid::parse_str(USER).unwrap())
    .bind(uuid::Uuid::parse_str(OTHER).unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    let select = "select body from public.notes order by id";
    assert_eq!(
        as_authenticated(&mut conn, Some(&claims(USER)), select).await,
        vec![Some("mine".to_owned()), Some("also mine".to_owned())]
    );
    assert_eq!(
        as_authenticated(&mut conn, Some(&claims(OTHER)), select).await,
        vec![Some("theirs".to_owned())]
    );
    assert!(as_authenticated(&mut conn, None, select).await.is_empty());
}

/// The migration is safe to run again where the roles, the schema and the functions exist (a
/// Supabase database, or a cluster where another database ran it): it keeps what is there.
#[tokio::test]
async fn migration_keeps_existing_roles_and_helpers() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    // Stand-in for Supabase's own definition: must survive the migration.
    sqlx::query("create or replace function auth.role() returns text language sql stable as $$ select 'theirs'::text $$")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("drop table realtime._sqlx_migrations")
        .execute(&mut conn)
        .await
        .unwrap();
    realtime_gateway::pg::migrate(&db.url).await.unwrap();
    let role: String = sqlx::query_scalar("select auth.role()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(role, "theirs");
    // A database migrated after the roles exist (they are cluster-wide) migrates cleanly.
    let fresh = TestDb::empty().await;
    realtime_gateway::pg::migrate(&fresh.url).await.unwrap();
    let mut conn = fresh.connect().await;
    let n: i64 = sqlx::query_scalar(
        "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace \
         where n.nspname = 'auth' and p.proname in ('uid', 'role', 'jwt')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(n, 3);
}

/// Which roles tokens may act as, asked by `realtime.may_act_as` (private channels) and decided
/// the same way inside `realtime.table_sight` and `realtime.table_sight_inline` (row-level
/// security of changes): a role the gateway's login is a member of, and no other; never a
/// superuser, the login itself or a role that does not exist. Asked with a login that is not a superuser.
#[tokio::test]
async fn tokens_act_only_as_roles_the_login_may_become() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let login = format!("login_{tag}");
    let member = format!("member_{tag}");
    let stranger = format!("stranger_{tag}");
    let root = format!("root_{tag}");
    for sql in [
        format!("create role {login} login"),
        format!("create role {member}"),
        format!("create role {stranger}"),
        format!("create role {root} superuser"),
        format!("grant {member} to {login}"),
        format!("grant usage on schema realtime to {login}"),
        format!("grant execute on function realtime.may_act_as(text) to {login}"),
        format!("grant execute on function realtime.table_sight(oid, text) to {login}"),
        format!("grant execute on function realtime.table_sight_inline(oid, text) to {login}"),
        format!("grant execute on function realtime.selectable_columns(oid, oid) to {login}"),
        "create table public.sighted (id int)".to_owned(),
        format!("grant select on public.sighted to {member}, {stranger}"),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(&format!("set local session authorization {login}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut answers = Vec::new();
    for role in [&member, &stranger, &root, &login, &format!("gone_{tag}")] {
        let may: bool = sqlx::query_scalar("select realtime.may_act_as($1)")
            .bind(role)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        // The row check's answer, and the outbox read's (migration 0028), which decides alike.
        let mut sights = Vec::new();
        for function in ["table_sight", "table_sight_inline"] {
            let sight: (Option<String>, Option<bool>, Option<Vec<String>>) =
                sqlx::query_as(&format!(
                    "select error, visible, columns \
                     from realtime.{function}('public.sighted'::regclass, $1)"
                ))
                .bind(role)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            sights.push(sight);
        }
        assert_eq!(sights[1], sights[0], "{role}");
        let (error, visible, _) = sights.swap_remove(0);
        answers.push((may, error.map(|e| e.replace(&tag, "*")), visible));
    }
    tx.rollback().await.unwrap();
    let refused = |r: &str| Some(format!("tokens may not act as role {r}_*"));
    assert_eq!(
        answers,
        vec![
            (true, None, Some(true)),
            (false, refused("stranger"), None),
            (false, refused("root"), None),
            (false, refused("login"), None),
            (false, Some("role gone_* does not exist".to_owned()), None),
        ]
    );
    for sql in [
        "drop table public.sighted".to_owned(),
        format!("revoke execute on function realtime.may_act_as(text) from {login}"),
        format!("revoke execute on function realtime.table_sight(oid, text) from {login}"),
        format!("revoke execute on function realtime.table_sight_inline(oid, text) from {login}"),
        format!("revoke execute on function realtime.selectable_columns(oid, oid) from {login}"),
        format!("revoke usage on schema realtime from {login}"),
        format!("drop role {login}, {member}, {stranger}, {root}"),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
}
