//! A database of its own for each test ([`TestDb`]), created from a migrated template and
//! dropped when the test ends, plus [`realtime_table`] to publish a table on it and
//! [`registry_settings`] for a registry started on it by the test itself.

use sqlx::{Connection, PgConnection};

use super::cluster::{admin_conn, server};

/// Advisory lock taken while one process builds the migrated template database.
const TEMPLATE_LOCK: i64 = 0x7470_656d_706c; // "tmpl"

fn template_name() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in realtime_gateway::pg::MIGRATOR.iter() {
        m.version.hash(&mut h);
        m.checksum.hash(&mut h);
    }
    format!("realtime_tmpl_{:016x}", h.finish())
}

/// A database of its own for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    server: String,
}

impl TestDb {
    /// A fresh database with every migration applied.
    pub async fn new() -> TestDb {
        let server = server().await.to_owned();
        let template = template_name();
        let mut conn = admin_conn(&server).await;
        // Cross-process: only one creates the template.
        sqlx::query("select pg_advisory_lock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut conn)
            .await
            .unwrap();
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
                .bind(&template)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if !exists {
            let building = format!("{template}_building");
            sqlx::query(&format!("drop database if exists {building}"))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(&format!("create database {building}"))
                .execute(&mut conn)
                .await
                .unwrap();
            realtime_gateway::pg::migrate(&format!("{server}/{building}"))
                .await
                .expect("migrate the template");
            // As on a new Supabase project: tables the tests create in `public` may be read by
            // Supabase's roles; tests of privileges revoke what they test.
            let mut migrated = PgConnection::connect(&format!("{server}/{building}"))
                .await
                .unwrap();
            sqlx::query(
                "alter default privileges in schema public \
                 grant select on tables to anon, authenticated, service_role",
            )
            .execute(&mut migrated)
            .await
            .unwrap();
            migrated.close().await.ok();
            sqlx::query(&format!("alter database {building} rename to {template}"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut conn)
            .await
            .unwrap();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!(
            "create database {name} template {template} strategy file_copy"
        ))
        .execute(&mut conn)
        .await
        .expect("create test database");
        conn.close().await.ok();
        TestDb {
            url: format!("{server}/{name}"),
            name,
            server,
        }
    }

    /// An empty database with no migrations applied.
    pub async fn empty() -> TestDb {
        let server = server().await.to_owned();
        let mut conn = admin_conn(&server).await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        TestDb {
            url: format!("{server}/{name}"),
            name,
            server,
        }
    }

    /// A connection to this database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    /// The one `bigint` that `sql` selects (a `count(*)`), on a connection of its own.
    pub async fn count(&self, sql: &str) -> i64 {
        let mut conn = self.connect().await;
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
    }

    /// A small pool on this database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on a plain thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = admin_conn(&server).await;
                sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut conn)
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Creates `public.<table>` with `id bigint primary key` plus `columns`, and enables it for
/// realtime the Supabase way (publication).
pub async fn realtime_table(db: &TestDb, table: &str, columns: &str) {
    let mut conn = db.connect().await;
    sqlx::query(&format!(
        "create table public.{table} (id bigint generated by default as identity primary key{}{columns})",
        if columns.is_empty() { "" } else { ", " }
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(&format!(
        "alter publication supabase_realtime add table public.{table}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// Settings of a registry a test starts on its own database: node `node_id`, a cap of
/// `max_connections`, a 60 s stale timeout and roomy bounds.
pub fn registry_settings(
    node_id: &str,
    max_connections: u32,
) -> realtime_gateway::registry::Settings {
    realtime_gateway::registry::Settings {
        node_id: node_id.into(),
        listen_addr: "127.0.0.1:0".into(),
        max_connections,
        stale_timeout: std::time::Duration::from_secs(60),
        audit_retention: std::time::Duration::from_secs(3600),
        max_pending_rows: 1_000,
        max_pending_audit: 1_000,
        max_audit_detail_bytes: 4096,
        registry_retention: std::time::Duration::from_secs(7 * 24 * 3600),
    }
}
