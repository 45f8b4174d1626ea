//! realtime-gateway: Supabase-compatible realtime for any PostgreSQL.
//!
//! Frontends open WebSocket channels (`/realtime/v1/websocket`, Phoenix channel protocol) and
//! receive table changes, broadcasts and presence; the gateway keeps every channel on record and
//! protects the database.
//!
//! # Data flow
//!
//! ```text
//! writer txn ──trigger──> realtime.changes (outbox) ──NOTIFY bell──> pg::listener   (stage 1)
//!     pg::decode: outbox rows -> ChangeEvent, serialized once                        (stage 2)
//!     fanout::router: (schema, table) index -> matching subscriptions, filter        (stage 3)
//!     session::outbound: per-connection bounded queue                               (stage 4)
//!     session::writer: drains the queue to the socket                                (stage 5)
//! ```
//!
//! # Module map
//!
//! - [`config`]: settings, checked once. [`telemetry`]: logging. [`shutdown`]: the one signal
//!   every task hears. [`state`]: shared handles. [`error`]: the crate error and its mappings.
//! - [`pg`]: pool, migrations, embedded cluster. [`local`]: local mode (embedded database, keys).
//! - [`auth`]: JWT verification. [`http`]: the router. [`admin`]: health and readiness.

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod local;
pub mod pg;
pub mod shutdown;
pub mod state;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::Config;
pub use error::Error;
pub use shutdown::Shutdown;

use crate::auth::Verifier;
use crate::state::AppState;

/// Runs the gateway on `listener` until `shutdown` is triggered, then shuts down in order: stop
/// accepting, close sessions, stop background tasks (bounded by the shutdown timeout), close the
/// pool. Migrations are applied first.
///
/// `config` must carry a database URL and JWT secret ([`local::prepare`] fills them in local
/// mode).
///
/// # Errors
/// When migrations fail, or the listening socket fails.
pub async fn run(
    config: Arc<Config>,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let (Some(url), Some(secret)) = (&config.database_url, &config.jwt_secret) else {
        return Err(config::Error::Invalid(
            "the gateway needs a database url and a jwt secret".to_owned(),
        )
        .into());
    };
    pg::migrate(url).await?;
    let pool = pg::pool(url, config.db_pool_size)?;
    let state = AppState {
        config: Arc::clone(&config),
        pool: pool.clone(),
        verifier: Verifier::new(secret),
        shutdown: shutdown.clone(),
    };
    let local_addr = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(addr = %local_addr, node_id = %config.node_id, "serving");
    let app = http::router(state);
    let stop_accepting = shutdown.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
    .await
    .map_err(Error::Serve)?;
    // The server only returns once shutdown was triggered; make sure every task heard it.
    shutdown.trigger();
    shutdown.wait(config.shutdown_timeout).await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}
