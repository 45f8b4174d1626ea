//! Logging: a `tracing` subscriber writing text or JSON lines to stderr, filtered by `RUST_LOG`
//! (default `info`, server notices at `warn`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second is ignored), which
/// lets tests start several gateways in one process.
pub fn init(format: LogFormat) {
    // Server notices ("already exists, skipping") are not worth an info line each.
    let spec =
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx::postgres::notice=warn".into());
    // Colours only for a terminal, and not when `NO_COLOR` is set: a log file or collector gets
    // plain text, and each connection's span keeps its fields without escape codes (it holds
    // them while it lives).
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&spec))
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (tests): keep the first.
    drop(result);
}

/// Targets whose detailed levels write what clients send or what the gateway is told, tokens
/// included (a WebSocket library logs every frame at `trace`, the HTTP stack the request line at
/// `debug`, the database driver statements with their text): they are held at `info` whatever
/// `RUST_LOG` asks, so no token, key or secret is ever logged.
const QUIET: [&str; 4] = [
    "tungstenite=info",
    "tokio_tungstenite=info",
    "hyper=info",
    "sqlx::query=info",
];

/// The log filter of `spec` (`RUST_LOG` syntax), with the targets of [`QUIET`] held at `info`.
/// An unreadable `spec` falls back to `info`.
pub fn filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in QUIET {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}
