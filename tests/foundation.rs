//! The foundation: settings, local mode, migrations, health and readiness, shutdown.

mod common;

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, http_get, process_alive, TestDb, TestGateway};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_realtime-gateway");

/// Guards against panics or multi-line dumps on bad settings: one clear line, exit code 2.
#[test]
fn bad_setting_fails_with_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--heartbeat-interval", "soon"], "write durations like"),
        (
            &["--heartbeat-interval", "30s", "--heartbeat-timeout", "10s"],
            "--heartbeat-timeout must be longer than --heartbeat-interval",
        ),
        (
            &["--max-connections", "0"],
            "--max-connections must be at least 1",
        ),
        (
            &["--database-url", "postgres://u@127.0.0.1/db"],
            "--jwt-secret (JWT_SECRET) is required",
        ),
        (
            &[
                "--database-url",
                "mysql://x",
                "--jwt-secret",
                "0123456789abcdef",
            ],
            "postgres://",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(BIN)
            .args(*args)
            .env_remove("DATABASE_URL")
            .env_remove("JWT_SECRET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let meaningful: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("Usage:") && !l.contains("--help"))
            .collect();
        assert_eq!(
            meaningful.len(),
            1,
            "{args:?}: one line expected, got {stderr}"
        );
    }
}

/// `--help` documents every setting with its environment variable.
#[test]
fn help_documents_every_setting() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--database-url", "DATABASE_URL"),
        ("--listen", "LISTEN_ADDR"),
        ("--jwt-secret", "JWT_SECRET"),
        ("--max-connections", "MAX_CONNECTIONS"),
        ("--heartbeat-interval", "HEARTBEAT_INTERVAL"),
        ("--heartbeat-timeout", "HEARTBEAT_TIMEOUT"),
        ("--node-id", "NODE_ID"),
        ("--data-dir", "DATA_DIR"),
        ("--metrics-auth", "METRICS_AUTH"),
        ("--admin-token", "ADMIN_TOKEN"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
}

/// The README's first command: with no DATABASE_URL the gateway creates a private cluster,
/// serves /ready, prints keys, and on Ctrl-C exits 0 leaving no postgres process behind; a
/// second start reuses the cluster and the secret.
#[test]
fn local_mode_serves_and_stops_its_postgres() {
    let data_dir = common::temp_dir("rg-local");
    let mut anon_keys = Vec::new();
    for _run in 0..2 {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env_remove("DATABASE_URL")
            .env_remove("JWT_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let api = common::read_line_containing(&mut out, "API URL").expect("banner");
        let anon = common::read_line_containing(&mut out, "anon key").expect("anon key");
        anon_keys.push(anon.split_whitespace().last().unwrap().to_owned());
        let addr: std::net::SocketAddr = api
            .rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pidfile = data_dir.join("pg").join("postmaster.pid");
        let pg_pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(eventually(
            Duration::from_secs(60),
            "/ready 200",
            || async { matches!(http_get(addr, "/ready").await, Ok((200, _))) },
        ));
        // Transparent huge pages are off for the gateway and its PostgreSQL (src/memory.rs),
        // on kernels that say so in /proc (Linux 5.0 and later).
        #[cfg(target_os = "linux")]
        for p in [child.id(), pg_pid] {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
            if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
                assert!(line.ends_with('0'), "process {p}: {line}");
            }
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "exit status {status:?}");
        assert!(!process_alive(pg_pid), "postgres {pg_pid} still running");
    }
    // The generated secret is kept: both runs' keys verify with the one secret on file.
    let secret = std::fs::read_to_string(data_dir.join("jwt_secret")).unwrap();
    let verifier = realtime_gateway::auth::Verifier::new(secret.trim());
    for key in &anon_keys {
        assert_eq!(verifier.verify(key).expect("key verifies").role, "anon");
    }
    std::fs::remove_dir_all(&data_dir).ok();
}

/// Local mode's cluster does not trust every local user: a loopback connection needs the
/// generated password, which is kept in a file only its owner can read, and the database URL
/// the gateway uses (and prints) carries it.
#[tokio::test]
async fn local_mode_postgres_requires_its_password() {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = common::temp_dir("rg-local-pw");
    let mut config = realtime_gateway::Config::for_database(
        "postgres://unused@127.0.0.1/unused".to_owned(),
        common::JWT_SECRET.to_owned(),
    );
    config.database_url = None;
    config.data_dir = data_dir.clone();
    let (cluster, _keys) = realtime_gateway::local::prepare(&mut config).await.unwrap();
    let cluster = cluster.expect("an embedded cluster");
    let url = config.database_url.clone().unwrap();
    let password = std::fs::read_to_string(data_dir.join("pg_password")).unwrap();
    let mode = std::fs::metadata(data_dir.join("pg_password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "pg_password mode {mode:o}");
    assert!(
        url.contains(&format!("postgres:{}@", password.trim())),
        "{url}"
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("the URL with the password connects");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let without = url.replace(&format!(":{}@", password.trim()), "@");
    assert_ne!(without, url);
    let refused = <sqlx::PgConnection as sqlx::Connection>::connect(&without).await;
    let err = refused.expect_err("a connection without the password is refused");
    assert!(err.to_string().contains("password"), "{err}");
    let wrong = url.replace(password.trim(), "0123456789abcdef");
    assert!(<sqlx::PgConnection as sqlx::Connection>::connect(&wrong)
        .await
        .is_err());
    drop(conn);
    let hba = std::fs::read_to_string(data_dir.join("pg").join("pg_hba.conf")).unwrap();
    assert!(
        !hba.lines().any(|l| l.trim_end().ends_with("trust")),
        "{hba}"
    );
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&data_dir).ok();
}

/// `realtime-gateway migrate` applies migrations to DATABASE_URL and exits 0.
#[tokio::test]
async fn migrate_subcommand_applies_migrations() {
    let db = TestDb::empty().await;
    let out = tokio::process::Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", common::JWT_SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = db.connect().await;
    let n: i64 = sqlx::query_scalar("select count(*) from realtime._sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, realtime_gateway::pg::MIGRATOR.iter().count() as i64);
}

async fn schema_fingerprint(db: &TestDb) -> Vec<String> {
    let mut conn = db.connect().await;
    sqlx::query(
        "select format('%s.%s %s', n.nspname, c.relname, c.relkind) as o from pg_class c \
         join pg_namespace n on n.oid = c.relnamespace \
         where n.nspname in ('public', 'realtime') \
         union all \
         select format('%s.%s(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) \
         from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'realtime' \
         union all \
         select format('%s on %s', conname, conrelid::regclass) from pg_constraint \
         where connamespace in (select oid from pg_namespace where nspname in ('public','realtime')) \
         union all select format('trigger %s on %s', tgname, tgrelid::regclass) from pg_trigger \
         where not tgisinternal \
         union all select format('publication %s', pubname) from pg_publication \
         order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>("o"))
    .collect()
}

/// Applying the migrations again (and with the ledger removed, as on a database that has the
/// objects but not our bookkeeping) changes nothing.
#[tokio::test]
async fn migrations_applied_twice_change_nothing() {
    let db = TestDb::new().await;
    let before = schema_fingerprint(&db).await;
    assert!(before
        .iter()
        .any(|o| o.contains("realtime_subscription_registry")));
    realtime_gateway::pg::migrate(&db.url).await.unwrap();
    assert_eq!(schema_fingerprint(&db).await, before);
    let mut conn = db.connect().await;
    sqlx::query("drop table realtime._sqlx_migrations")
        .execute(&mut conn)
        .await
        .unwrap();
    realtime_gateway::pg::migrate(&db.url).await.unwrap();
    assert_eq!(schema_fingerprint(&db).await, before);
}

/// The registry has exactly the seed columns with their types and defaults, plus ours.
#[tokio::test]
async fn registry_has_the_seed_columns() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let rows = sqlx::query(
        "select column_name::text as name, data_type::text as type, \
                coalesce(column_default, '') as def, is_nullable::text as nullable \
         from information_schema.columns \
         where table_schema = 'public' and table_name = 'realtime_subscription_registry' \
         order by ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let cols: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.get("name"),
                r.get("type"),
                r.get("def"),
                r.get("nullable"),
            )
        })
        .collect();
    let seed = [
        ("id", "uuid", "gen_random_uuid()", "NO"),
        ("subscription_id", "text", "", "NO"),
        ("channel_name", "text", "", "NO"),
        ("user_id", "uuid", "", "YES"),
        ("component_name", "text", "", "YES"),
        ("table_filters", "jsonb", "", "YES"),
        ("last_heartbeat_at", "timestamp with time zone", "", "YES"),
        ("is_active", "boolean", "true", "YES"),
        ("created_at", "timestamp with time zone", "now()", "YES"),
    ];
    for (i, (name, ty, def, nullable)) in seed.iter().enumerate() {
        let got = &cols[i];
        assert_eq!(
            (
                got.0.as_str(),
                got.1.as_str(),
                got.2.as_str(),
                got.3.as_str()
            ),
            (*name, *ty, *def, *nullable),
            "column {i}"
        );
    }
    let extra: Vec<&str> = cols[seed.len()..].iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        extra,
        [
            "node_id",
            "connection_id",
            "remote_addr",
            "closed_at",
            "close_reason",
            "claimed_user_id"
        ]
    );
    let pk: String = sqlx::query_scalar(
        "select a.attname::text from pg_index i join pg_attribute a \
         on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
         where i.indrelid = 'public.realtime_subscription_registry'::regclass and i.indisprimary",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(pk, "id");
}

/// With a supabase-style `auth.users`, `user_id` references it.
#[tokio::test]
async fn user_id_references_auth_users_where_it_exists() {
    let db = TestDb::empty().await;
    let mut conn = db.connect().await;
    sqlx::query("create schema auth")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("create table auth.users (id uuid primary key)")
        .execute(&mut conn)
        .await
        .unwrap();
    realtime_gateway::pg::migrate(&db.url).await.unwrap();
    let target: String = sqlx::query_scalar(
        "select confrelid::regclass::text from pg_constraint \
         where conname = 'realtime_subscription_registry_user_id_fkey'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(target, "auth.users");
}

/// /health and /ready answer JSON; shutdown makes run() return Ok.
#[tokio::test]
async fn health_ready_and_clean_shutdown() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let (status, body) = http_get(gw.addr, "/health").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );
    let (status, body) = http_get(gw.addr, "/ready").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["database"], "ok");
    let addr = gw.addr;
    gw.stop().await.expect("clean shutdown");
    assert!(http_get(addr, "/health").await.is_err(), "still accepting");
}

/// The gateway's pool connections carry the documented application_name.
#[tokio::test]
async fn pool_connections_are_named() {
    let db = TestDb::new().await;
    let gw = TestGateway::start(&db).await;
    let mut conn = db.connect().await;
    let names: Vec<String> = sqlx::query_scalar(
        "select distinct application_name::text from pg_stat_activity where datname = $1",
    )
    .bind(&db.name)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(names.iter().any(|n| n == "realtime-gateway"), "{names:?}");
    gw.stop().await.unwrap();
}
