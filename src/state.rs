//! Shared handles given to every HTTP handler and session: no logic here.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::Verifier;
use crate::config::Config;
use crate::shutdown::Shutdown;

/// Cheap-to-clone handles on the gateway's shared parts.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Checked settings.
    pub config: Arc<Config>,
    /// The gateway's database pool.
    pub pool: PgPool,
    /// Token verifier.
    pub verifier: Verifier,
    /// Shutdown signal and task tracker.
    pub shutdown: Shutdown,
}
