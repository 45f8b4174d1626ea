//! PostgreSQL plumbing: connection pool, migrations, table descriptions and the embedded
//! cluster. No stage logic lives here: the capture stage ([`crate::capture`]), the registry and
//! the broadcast store use these pieces.

pub mod catalog;
pub mod embedded;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// `application_name` of the pool's connections, as seen in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "realtime-gateway";

/// Migrations embedded in the binary; applied at start and by `realtime-gateway migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Advisory-lock key held while creating the `realtime` schema and migrating, so that several
/// nodes starting at once do not race.
const MIGRATION_LOCK_KEY: i64 = 0x7265_616c_7469_6d65; // "realtime"

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL could not be parsed.
    #[error("invalid database url")]
    Url(#[source] sqlx::Error),
    /// Connecting or a query failed.
    #[error("database error")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The embedded cluster failed.
    #[error(transparent)]
    Embedded(#[from] embedded::Error),
    /// No answer in time (the connection may be stalled).
    #[error("no answer from the database within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// The database's own error, when the database answered.
    pub fn database_error(&self) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
        match self {
            Error::Sqlx(sqlx::Error::Database(db)) => Some(db.as_ref()),
            _ => None,
        }
    }

    /// The SQLSTATE of the database's answer, if it answered.
    pub fn sqlstate(&self) -> Option<String> {
        self.database_error()
            .and_then(|db| db.code().map(|c| c.into_owned()))
    }

    /// Whether the database refused the data of the rows written (so other rows may succeed)
    /// rather than the statement or the connection: data exceptions (class 22), integrity
    /// constraint violations (23) and program limits such as an oversized index row (54).
    pub fn is_row_error(&self) -> bool {
        self.sqlstate().is_some_and(|code| is_row_sqlstate(&code))
    }

    /// Whether the database cannot be reached right now (retry later), rather than refusing
    /// what was asked: connection exceptions, insufficient resources, operator intervention,
    /// rollbacks and lock failures, I/O and pool errors.
    pub fn is_transient(&self) -> bool {
        let Error::Sqlx(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                ["08", "53", "57", "40", "55"]
                    .iter()
                    .any(|k| c.starts_with(k))
            }),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            _ => false,
        }
    }
}

/// Whether SQLSTATE `code` is a row's fault (see [`Error::is_row_error`]).
pub fn is_row_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("22" | "23" | "54"))
}

/// Parses `url` into connect options tagged with `application_name`.
///
/// # Errors
/// [`Error::Url`] when the URL is malformed.
pub fn connect_options(url: &str, application_name: &str) -> Result<PgConnectOptions, Error> {
    let options: PgConnectOptions = url.parse().map_err(Error::Url)?;
    Ok(options.application_name(application_name))
}

/// Opens the gateway's pool. Connections are made lazily, so a database that is down at start
/// shows in `/ready` rather than stopping the process.
///
/// # Errors
/// [`Error::Url`] when the URL is malformed.
pub fn pool(url: &str, size: u32) -> Result<PgPool, Error> {
    let options = connect_options(url, APPLICATION_NAME)?;
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        // The pool tests every connection as it is released; testing it again when it is
        // handed out would be one more round trip for nearly every statement of a busy node
        // (the outbox reads among them). Only a connection idle for a while is tested again.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > TEST_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// A pool connection idle for longer than this is tested (a ping) before it is handed out.
pub const TEST_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Applies the embedded migrations to the database at `url`. The `realtime` schema is created
/// first and holds the migration ledger (`realtime._sqlx_migrations`), so the application's own
/// schemas stay untouched apart from the registry table. Safe to run from several nodes at once
/// and again on a migrated database.
///
/// # Errors
/// [`Error::Sqlx`] when the database cannot be reached, [`Error::Migrate`] when a migration
/// fails.
pub async fn migrate(url: &str) -> Result<(), Error> {
    let options = connect_options(url, APPLICATION_NAME)?;
    let mut conn = connect_with_retry(&options, Duration::from_secs(30)).await?;
    sqlx::query("select pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let result = migrate_locked(&mut conn).await;
    // Unlock explicitly; closing the connection would release it too.
    let _unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await;
    let _closed = conn.close().await;
    result
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("create schema if not exists realtime")
        .execute(&mut *conn)
        .await?;
    sqlx::query("set search_path to realtime")
        .execute(&mut *conn)
        .await?;
    MIGRATOR.run_direct(&mut *conn).await?;
    sqlx::query("reset search_path").execute(&mut *conn).await?;
    Ok(())
}

/// Connects, retrying while the server is starting up or not yet reachable, up to `patience`.
///
/// # Errors
/// The last connection error once `patience` has passed.
pub async fn connect_with_retry(
    options: &PgConnectOptions,
    patience: Duration,
) -> Result<PgConnection, Error> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(50);
    loop {
        match options.connect().await {
            Ok(conn) => return Ok(conn),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the database answers, asked at most once per [`Probe::FRESH_FOR`] however many
/// callers ask (`/ready` is polled by load balancers and must not cost a query per request).
#[derive(Debug)]
pub struct Probe {
    pool: PgPool,
    /// When the database was last asked, and its answer. Callers that find it stale queue on
    /// the lock while one of them asks, then share that answer.
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>,
    /// Queries made so far.
    queries: std::sync::atomic::AtomicU64,
}

impl Probe {
    /// How long an answer is reused.
    pub const FRESH_FOR: Duration = Duration::from_secs(1);
    /// How long one check may take before the database counts as unreachable.
    const PATIENCE: Duration = Duration::from_secs(2);

    /// A probe of `pool`'s database.
    pub fn new(pool: PgPool) -> Probe {
        Probe {
            pool,
            last: tokio::sync::Mutex::new(None),
            queries: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the database answered `select 1` within two seconds, at most
    /// [`Probe::FRESH_FOR`] ago.
    pub async fn reachable(&self) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < Self::FRESH_FOR {
                return ok;
            }
        }
        let answer = tokio::time::timeout(
            Self::PATIENCE,
            sqlx::query_scalar::<_, i32>("select 1").fetch_one(&self.pool),
        )
        .await;
        let ok = matches!(answer, Ok(Ok(1)));
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *last = Some((tokio::time::Instant::now(), ok));
        ok
    }

    /// How many times the database was asked.
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}
