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
//! Broadcast and presence take a shorter path to the same queues (stage 4):
//!
//! ```text
//! client push / REST ──> broadcast::Hub ──> local members' queues, one encoded frame shared
//!                                      └──> bus publisher ──NOTIFY realtime_bus──┐
//! realtime.send() in a writer txn ──NOTIFY at commit─────────────────────────────┤
//!                        other nodes' pg::listener ──> broadcast::bus ──> their Hub
//! ```
//!
//! # Module map
//!
//! - [`config`]: settings, checked once. [`telemetry`]: logging. [`shutdown`]: the one signal
//!   every task hears. [`state`]: shared handles. [`error`]: the crate error and its mappings.
//! - [`pg`]: pool, migrations, embedded cluster. [`local`]: local mode (embedded database, keys).
//! - [`pg::listener`] (stage 1), [`pg::decode`] (stage 2), [`pg::catalog`]: table descriptions.
//! - [`fanout::router`] and [`fanout::filter`] (stage 3), [`fanout::subscription`]: what a join
//!   subscribes to.
//! - [`session`]: one task per WebSocket; [`session::protocol`] (framing),
//!   [`session::outbound`] (stage 4), [`session::writer`] (stage 5), [`session::upgrade`].
//! - [`registry`]: the subscription registry and audit log, written off the message path.
//!   [`reaper`]: closes silent sessions and heartbeats the registry.
//! - [`broadcast`]: the hub relaying broadcasts and presence between channel members, on this
//!   node and over the cluster bus (`NOTIFY realtime_bus`, received through the one listener
//!   connection); [`broadcast::rest`]: `POST /api/broadcast`. [`presence`]: per-topic presence.
//! - [`limits`]: connection and channel caps. [`auth`]: JWT verification. [`http`]: the router.
//!   [`admin`]: health and readiness.

pub mod admin;
pub mod auth;
pub mod broadcast;
pub mod config;
pub mod error;
pub mod fanout;
pub mod http;
pub mod limits;
pub mod local;
pub mod pg;
pub mod presence;
pub mod reaper;
pub mod registry;
pub mod session;
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

/// A gateway whose database, state and background tasks are set up, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    state: AppState,
    registry_writer: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Applies migrations, opens the pool, and starts the change listener on `shutdown`'s
    /// tracker. `config` must carry a database URL and JWT secret ([`local::prepare`] fills
    /// them in local mode).
    ///
    /// # Errors
    /// When settings lack the database or secret, or migrations fail.
    pub async fn start(config: Arc<Config>, shutdown: Shutdown) -> Result<Gateway, Error> {
        let (Some(url), Some(secret)) = (&config.database_url, &config.jwt_secret) else {
            return Err(config::Error::Invalid(
                "the gateway needs a database url and a jwt secret".to_owned(),
            )
            .into());
        };
        pg::migrate(url).await?;
        // Counters recorded from here on are exported at /metrics.
        admin::metrics::handle();
        let pool = pg::pool(url, config.db_pool_size)?;
        let router = Arc::new(fanout::router::Router::new());
        let catalog = Arc::new(pg::catalog::Catalog::new(pool.clone()));
        let listener_status = Arc::new(pg::listener::Status::default());
        let (registry, registry_writer) = registry::Registry::start(
            pool.clone(),
            registry::Settings {
                node_id: config.node_id.clone(),
                listen_addr: config.listen.to_string(),
                max_connections: config.max_connections,
                stale_timeout: config.heartbeat_timeout,
                audit_retention: config.audit_retention,
            },
        )
        .await?;
        let (hub, bus) = broadcast::Hub::start(
            pool.clone(),
            broadcast::Settings {
                node_id: config.node_id.clone(),
                max_message_bytes: config.max_message_bytes,
                stale_timeout: config.heartbeat_timeout,
                maintenance_interval: config.heartbeat_interval,
            },
            &shutdown,
        );
        let state = AppState::new(state::Handles {
            config: Arc::clone(&config),
            pool: pool.clone(),
            verifier: Verifier::new(secret),
            shutdown: shutdown.clone(),
            router: Arc::clone(&router),
            catalog: Arc::clone(&catalog),
            limits: limits::Limits::new(
                pool.clone(),
                registry.clone(),
                config.max_connections,
                config.max_channels_per_connection,
            ),
            registry,
            hub,
            listener: Arc::clone(&listener_status),
            sessions: Arc::default(),
            next_conn_id: Arc::default(),
        });
        pg::listener::Listener::new(
            pg::listener::Settings {
                database_url: url.clone(),
                poll_interval: config.change_poll_interval,
                max_change_bytes: config.max_change_bytes,
                retention: config.change_retention,
                bus_channels: vec![broadcast::bus::CHANNEL.to_owned()],
            },
            pool,
            catalog,
            router,
            listener_status,
        )
        .with_bus(bus)
        .spawn(&shutdown);
        reaper::spawn(state.clone());
        Ok(Gateway {
            state,
            registry_writer,
        })
    }

    /// The shared state (for introspection and tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves on `listener` until shutdown is triggered, then shuts down in order: stop
    /// accepting, close sessions, stop background tasks (bounded by the shutdown timeout),
    /// close the pool.
    ///
    /// # Errors
    /// When the listening socket fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<(), Error> {
        let Gateway {
            state,
            registry_writer,
        } = self;
        let registry = state.registry.clone();
        let shutdown = state.shutdown.clone();
        let config = Arc::clone(&state.config);
        let pool = state.pool.clone();
        let local_addr = listener.local_addr().map_err(Error::Serve)?;
        tracing::info!(addr = %local_addr, node_id = %config.node_id, "serving");
        let app = http::router(state);
        let stop_accepting = shutdown.clone();
        // Frames are small and batched by the writer: Nagle's algorithm would only hold them.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
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
        // Sessions have reported their ends: write them and retire this node.
        registry.shutdown(config.shutdown_timeout).await;
        registry_writer.abort();
        pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the gateway on `listener` until `shutdown` is triggered ([`Gateway::start`], then
/// [`Gateway::serve`]).
///
/// # Errors
/// When migrations fail, or the listening socket fails.
pub async fn run(
    config: Arc<Config>,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    Gateway::start(config, shutdown)
        .await?
        .serve(listener)
        .await
}
