//! Shared handles given to every HTTP handler: no logic here.
//!
//! Sessions get only their own part ([`session::Services`]), through axum's `FromRef`, so the
//! session module never sees the whole state.

use std::sync::Arc;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::broadcast::rest;
use crate::capture::listener;
use crate::config::Config;
use crate::pg;
use crate::session;
use crate::shutdown::Shutdown;

/// The gateway's shared parts, one pointer wide: every connection holds a clone.
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
    /// Whether the database answers, cached for readiness checks.
    pub database: pg::Probe,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
    /// The change listener's health.
    pub listener: Arc<listener::Status>,
    /// What sessions use: verifier, caps, registry, catalog, router, hub, the session table.
    pub session: Arc<session::Services>,
}

impl FromRef<AppState> for rest::RestState {
    fn from_ref(state: &AppState) -> rest::RestState {
        rest::RestState {
            hub: state.session.hub.clone(),
            verifier: state.session.verifier.clone(),
            bounds: rest::RestBounds {
                topic: state.config.max_topic_bytes,
                event: state.config.max_event_bytes,
                messages: state.config.max_rest_messages,
            },
            clients: Arc::clone(&state.session.limits.clients),
            registry: state.session.registry.clone(),
            authorizer: state.session.authorizer.clone(),
        }
    }
}

impl FromRef<AppState> for Arc<session::Services> {
    fn from_ref(state: &AppState) -> Arc<session::Services> {
        Arc::clone(&state.session)
    }
}
