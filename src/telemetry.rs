//! Logging: a `tracing` subscriber writing text or JSON lines to stderr, filtered by `RUST_LOG`
//! (default `info`, server notices at `warn`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second is ignored), which
/// lets tests start several gateways in one process.
pub fn init(format: LogFormat) {
    // Server notices ("already exists, skipping") are not worth an info line each.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (tests): keep the first.
    drop(result);
}
