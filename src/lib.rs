//! realtime-gateway: Supabase-compatible realtime for any PostgreSQL.
//!
//! Frontends open WebSocket channels (`/realtime/v1/websocket`, Phoenix channel protocol) and
//! receive table changes, broadcasts and presence; the gateway keeps every channel on record and
//! protects the database.
//!
//! # Data flow
//!
//! One change travels through five stages, each a module named after what it owns; arrows only
//! point down (no module imports one below it in this picture):
//!
//! ```text
//! writer txn ──trigger──> realtime.changes (outbox) ──NOTIFY bell──┐
//!   capture::listener: reads the outbox in commit order            (stage 1)
//!   capture::decode:   outbox row -> change::ChangeEvent             (stage 2)
//!   fanout::router:    (schema, table) index -> matching channels,
//!                      fanout::filter, fanout::encode (body once)    (stage 3)
//!   outbound:          per-connection bounded queue of shared frames (stage 4)
//!   session::writer:   drains the queue to the socket                (stage 5)
//!   socket::Outlet:    vectored writes of the shared, pre-encoded frames
//! ```
//!
//! Broadcast and presence take a shorter path to the same queues (stage 4):
//!
//! ```text
//! client push / REST ──> broadcast::Hub ──> local members' queues, one encoded frame shared
//!                                      └──> broadcast::publisher ──NOTIFY realtime_bus──┐
//! realtime.send(), send_binary(), broadcast_changes() ──NOTIFY at commit────────────────┤
//!          other nodes' capture::listener ──change::BusMessage──> broadcast::bus ──> Hub
//! ```
//!
//! A join goes the other way: `session::upgrade` admits the socket (auth, `limits` slot),
//! `session` reads its frames (`protocol`), `session::join` resolves the subscriptions
//! (`fanout::subscription`, `pg::catalog`), reports to `registry`, and registers the channel
//! with `fanout::router` and `broadcast::Hub`. `docs/architecture.md` draws both paths.
//!
//! # Module map
//!
//! - Leaves every stage may import: [`change`] (`ChangeEvent`, `Op`, `BusMessage`), [`conn`]
//!   (`ConnId`), [`protocol`] (frames and codecs, both serializer versions, pure), [`position`]
//!   (where a channel stands in the change stream, for resuming sessions).
//! - [`capture`] (stages 1–2, outbox maintenance), [`fanout`] (stage 3), [`outbound`]
//!   (stage 4), [`session`] (stage 5 and the read loop, upgrade, joins, close codes), [`socket`]
//!   (the WebSocket connection: handshake, server frames encoded once with their header, the
//!   write half written with vectored writes).
//! - [`broadcast`] and [`presence`]: the hub, the cluster bus and its wire format, replay of
//!   stored database messages, REST.
//! - [`registry`]: the subscription registry and audit log, written off the message path.
//!   [`reaper`]: closes silent sessions and heartbeats the registry. [`limits`]: connection
//!   and channel caps. [`auth`]: JWT verification, and
//!   private channels' rights from the policies on `realtime.messages` (`auth::channel`).
//!   [`admin`]: health, readiness, metrics, the admin JSON API and delivery diagnostics, the
//!   live dashboard at `/admin` and its connection-cap watcher.
//! - [`pg`]: pool, migrations, catalog, embedded cluster. [`local`]: local mode.
//!   [`config`]: settings, checked once. [`telemetry`]: logging. [`shutdown`]: the one signal
//!   every task hears, and the tracker every task is spawned on. [`state`]: shared handles.
//!   [`error`]: the start-up error and its status. [`http`]: the router. [`room`]: maps of
//!   connections and channels that give back their room after a peak.

pub mod admin;
pub mod auth;
pub mod broadcast;
pub mod capture;
pub mod change;
pub mod config;
pub mod conn;
pub mod error;
pub mod fanout;
pub mod http;
pub mod limits;
pub mod local;
pub mod memory;
pub mod outbound;
pub mod pg;
pub mod position;
pub mod presence;
pub mod protocol;
pub mod reaper;
pub mod registry;
pub mod room;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod state;
pub mod telemetry;

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
    dashboard: admin::dashboard::Dashboard,
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
        let verifier = verifier(&config, secret).await?;
        pg::migrate(url).await?;
        // Counters recorded from here on are exported at /metrics.
        admin::metrics::handle();
        // One of the pool's connections is the row-level security check's own (see
        // `fanout::visibility`): the node holds `db_pool_size` and the listener's one more.
        let pool = pg::pool(url, config.db_pool_size - 1)?;
        let mut router = fanout::router::Router::new();
        router.trace = fanout::trace::Recorder::new(config.diagnostics.trace_changes_per_table);
        let router = Arc::new(router);
        let catalog = Arc::new(pg::catalog::Catalog::new(pool.clone()));
        let listener_status = Arc::new(capture::listener::Status::default());
        let registry = registry::Registry::start(
            pool.clone(),
            registry::Settings {
                node_id: config.node_id.clone(),
                listen_addr: config.listen.to_string(),
                max_connections: config.max_connections,
                stale_timeout: config.heartbeat_timeout,
                audit_retention: config.audit_retention,
                registry_retention: config.registry_retention,
                max_pending_rows: config.registry_max_pending,
                max_pending_audit: config.audit_max_pending,
                max_audit_detail_bytes: config.max_audit_detail_bytes,
            },
            &shutdown,
        )
        .await?;
        spawn_jwks_refresh(&verifier, &registry, &shutdown);
        let (hub, bus) = broadcast::Hub::start(
            pool.clone(),
            broadcast::Settings {
                node_id: config.node_id.clone(),
                max_message_bytes: config.max_message_bytes,
                presence_bounds: presence::Bounds {
                    entries: config.max_presence_per_channel,
                    bytes: config.max_presence_bytes_per_channel,
                },
                stale_timeout: config.heartbeat_timeout,
                maintenance_interval: config.heartbeat_interval,
                message_retention: config.message_retention,
                trace_depth: config.diagnostics.trace_broadcasts_per_channel,
            },
            registry.clone(),
            &shutdown,
        );
        let spans = Arc::new(position::Spans::default());
        let (resume_requests, resume_rx) = tokio::sync::mpsc::unbounded_channel();
        let resume = (!config.resume_window.is_zero()).then(|| session::resume::Services {
            requests: resume_requests,
            spans: Arc::clone(&spans),
            pool: pool.clone(),
            window: config.resume_window,
            node_id: config.node_id.clone(),
        });
        let services = Arc::new(session::Services {
            config: Arc::clone(&config),
            verifier,
            limits: limits::Limits::new(
                pool.clone(),
                registry.clone(),
                config.max_connections,
                config.max_channels_per_connection,
                limits::client::ClientLimits::new(pool.clone(), &config, &shutdown),
                &shutdown,
            ),
            registry,
            catalog: Arc::clone(&catalog),
            router: Arc::clone(&router),
            hub,
            shutdown: shutdown.clone(),
            sessions: session::Sessions::default(),
            authorizer: auth::channel::Authorizer::new(
                pool.clone(),
                config.private.authorization_timeout,
            ),
            change_stream: listener_status.ready(),
            resume,
        });
        let state = AppState::new(state::Handles {
            config: Arc::clone(&config),
            database: pg::Probe::new(pool.clone()),
            pool: pool.clone(),
            shutdown: shutdown.clone(),
            listener: Arc::clone(&listener_status),
            session: Arc::clone(&services),
        });
        capture::listener::Listener::new(
            capture::listener::Settings {
                database_url: url.clone(),
                poll_interval: config.change_poll_interval,
                read_spacing: config.change_read_spacing,
                max_change_bytes: config.max_change_bytes,
                node_id: config.node_id.clone(),
                bus_channels: vec![broadcast::envelope::CHANNEL.to_owned()],
            },
            pool.clone(),
            catalog,
            router,
            fanout::visibility::Visibility::connect(url, config.rls_check_timeout)?
                .with_audit(services.registry.clone()),
            listener_status,
        )
        .with_bus(bus)
        .with_resume(spans, resume_rx)
        .with_audit(services.registry.clone())
        .spawn(&shutdown);
        shutdown.spawn(
            "capture_reconciler",
            capture::maintenance::run_reconciler(pool.clone(), shutdown.clone()),
        );
        shutdown.spawn(
            "outbox_pruner",
            capture::maintenance::run_pruner(
                pool,
                config.change_retention,
                config.heartbeat_timeout,
                shutdown.clone(),
            ),
        );
        reaper::spawn(services);
        shutdown.spawn(
            "disconnect_requests",
            admin::api::disconnect::run_requests(state.clone()),
        );
        let dashboard = admin::dashboard::Dashboard::spawn(&state);
        Ok(Gateway { state, dashboard })
    }

    /// The shared state (for introspection and tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves on `listener` until shutdown is triggered, then shuts down in order: stop
    /// accepting (the listening socket is closed), close sessions (1001) and stop background
    /// tasks (bounded by the shutdown timeout), write the registry and retire this node (its
    /// rows end as `shutdown`; bounded by one more shutdown timeout), close the pool. A local
    /// cluster is stopped by the caller, after this returns.
    ///
    /// # Errors
    /// When the listening socket fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<(), Error> {
        let Gateway { state, dashboard } = self;
        let registry = state.session.registry.clone();
        let shutdown = state.shutdown.clone();
        let config = Arc::clone(&state.config);
        let pool = state.pool.clone();
        let local_addr = listener.local_addr().map_err(Error::Serve)?;
        tracing::info!(addr = %local_addr, node_id = %config.node_id, "serving");
        let app = http::router(state, dashboard);
        let settings = http::serve::Settings {
            header_timeout: config.http_header_timeout,
            max_pending: config.max_pending_connections,
            max_pending_per_address: config.max_pending_per_address,
        };
        http::serve::run(listener, app, shutdown.clone(), settings).await;
        // The accept loop only returns once shutdown was triggered; make sure every task heard
        // it.
        shutdown.trigger();
        shutdown.wait(config.shutdown_timeout).await;
        // Sessions have reported their ends: write them and retire this node, then let the
        // final tasks end; both within one more shutdown timeout.
        let flush_deadline = tokio::time::Instant::now() + config.shutdown_timeout;
        registry.shutdown(config.shutdown_timeout).await;
        let left = flush_deadline.saturating_duration_since(tokio::time::Instant::now());
        shutdown.wait_final(left).await;
        pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The token verifier of `config`: the shared secret, the audience, and the JWKS, read now
/// ([`spawn_jwks_refresh`] re-reads it).
async fn verifier(config: &Config, secret: &str) -> Result<Verifier, Error> {
    let verifier = Verifier::new(secret).with_audience(config.jwt.jwt_audience.as_deref());
    let Some(source) = &config.jwt.jwks else {
        return Ok(verifier);
    };
    let ca_file = config.jwt.jwks_ca_file.as_deref();
    let jwks = auth::jwks::Jwks::load(source, auth::jwks::REFETCH_MIN_INTERVAL, ca_file)
        .await
        .map_err(|e| config::Error::Invalid(format!("--jwks: {e}")))?;
    tracing::info!(source = %source, keys = jwks.len(), "JWKS loaded");
    Ok(verifier.with_jwks(jwks))
}

/// Re-reads the JWKS of `verifier`, if it has one, on `shutdown`'s tracker; a failed re-read is
/// audited (`jwks_refresh_failed`).
fn spawn_jwks_refresh(verifier: &Verifier, registry: &registry::Registry, shutdown: &Shutdown) {
    let Some(jwks) = verifier.jwks() else {
        return;
    };
    let registry = registry.clone();
    let failed = move |e: &auth::jwks::LoadError| {
        let detail = serde_json::json!({"source": e.source_name, "error": e.reason});
        registry.audit("jwks_refresh_failed", None, None, detail);
    };
    shutdown.spawn(
        "jwks_refresh",
        Arc::clone(jwks).run(auth::jwks::REFRESH_INTERVAL, shutdown.child_token(), failed),
    );
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
