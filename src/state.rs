//! Shared handles given to every HTTP handler and session: no logic here.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use dashmap::DashMap;
use sqlx::PgPool;

use crate::auth::Verifier;
use crate::broadcast::Hub;
use crate::config::Config;
use crate::fanout::router::{ConnId, Router};
use crate::limits::Limits;
use crate::pg::catalog::Catalog;
use crate::pg::listener;
use crate::registry::Registry;
use crate::session::SessionHandle;
use crate::shutdown::Shutdown;

/// The gateway's shared parts, one pointer wide: every session and connection holds a clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    /// Shares `handles`.
    pub fn new(handles: Handles) -> AppState {
        AppState(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// Handles on the gateway's shared parts.
#[derive(Debug)]
pub struct Handles {
    /// Checked settings.
    pub config: Arc<Config>,
    /// The gateway's database pool.
    pub pool: PgPool,
    /// Token verifier.
    pub verifier: Verifier,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
    /// The change router (stage 3).
    pub router: Arc<Router>,
    /// Cached table descriptions.
    pub catalog: Arc<Catalog>,
    /// Connection and channel caps.
    pub limits: Limits,
    /// The subscription registry and audit log.
    pub registry: Registry,
    /// Broadcast and presence: channel members of this node and the cluster bus.
    pub hub: Hub,
    /// The change listener's health.
    pub listener: Arc<listener::Status>,
    /// Live sessions of this node, by connection id.
    pub sessions: Arc<DashMap<ConnId, Arc<SessionHandle>>>,
    /// Next connection id of this node.
    pub next_conn_id: Arc<AtomicU64>,
}
