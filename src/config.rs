//! Settings: command-line flags with environment-variable fallbacks, checked once at start.
//!
//! Every field's doc comment is its `--help` text and names its unit and default. None of these
//! settings can be changed while the gateway runs; the checked [`Config`] is shared as
//! `Arc<Config>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod cidr;
mod cors;
pub mod dashboard;
pub mod diagnostics;
pub mod jwt;
pub mod private;

pub use cidr::Cidr;
pub use cors::AllowedOrigins;

/// Settings that cannot be accepted, found by [`Settings::check`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A relation between two settings does not hold.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// The `realtime-gateway` command line.
#[derive(Debug, Parser)]
#[command(name = "realtime-gateway", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every command.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands of the binary.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Serve realtime clients (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Raw settings as given on the command line or in the environment.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL connection URL. When unset, the gateway starts (and on exit stops) a private
    /// PostgreSQL cluster under --data-dir, from the server binaries installed on this machine.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Address to serve HTTP and WebSocket clients on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// HS256 secret that client JWTs are signed with. Required with --database-url; in embedded
    /// mode one is generated and kept under --data-dir when unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWKS and audience settings.
    #[command(flatten)]
    pub jwt: jwt::JwtSettings,

    /// Private channels.
    #[command(flatten)]
    pub private: private::PrivateSettings,

    /// The admin dashboard's warning thresholds and sample interval.
    #[command(flatten)]
    pub dashboard: dashboard::DashboardSettings,

    /// Delivery diagnostics: how much each node remembers of what it routed.
    #[command(flatten)]
    pub diagnostics: diagnostics::DiagnosticsSettings,

    /// Most open WebSocket connections, counted over every gateway node sharing the database.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 200)]
    pub max_connections: u32,

    /// How often the reaper runs and registry heartbeats are flushed (e.g. `30s`, `500ms`).
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// A connection whose last client heartbeat is older than this is closed, and a node that has
    /// not heartbeated for this long is treated as lost (e.g. `60s`). Must exceed the interval.
    #[arg(long, env = "HEARTBEAT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// This node's name in the registry and audit log. Default: `<hostname>:<listen port>`, which
    /// stays the same across restarts so rows left by a previous run are cleaned at start.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Folder of the embedded PostgreSQL cluster and the generated JWT secret.
    #[arg(long, env = "DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,

    /// Whether a missing --database-url starts the embedded cluster (`true`) or is an error
    /// (`false`, as in the container image).
    #[arg(long, env = "EMBEDDED_DB", default_value_t = true, action = clap::ArgAction::Set)]
    pub embedded_db: bool,

    /// Most channels one connection may join.
    #[arg(long, env = "MAX_CHANNELS_PER_CONNECTION", default_value_t = 100)]
    pub max_channels_per_connection: usize,

    /// Most frames waiting in one connection's outbound queue; a client that lets it fill is
    /// closed as a slow consumer (close code 4001).
    #[arg(long, env = "OUTBOUND_QUEUE_FRAMES", default_value_t = 16_384)]
    pub outbound_queue_frames: usize,

    /// Most bytes waiting in one connection's outbound queue (a single larger frame is still
    /// accepted into an empty queue).
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Changes whose rows serialize to more bytes than this are delivered truncated, with
    /// `Error 413: Payload Too Large` (values of at most 64 bytes kept).
    #[arg(long, env = "MAX_CHANGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_change_bytes: usize,

    /// Largest WebSocket message accepted from a client, in bytes.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 5_000_000)]
    pub max_frame_bytes: usize,

    /// Largest broadcast payload (socket, REST) and tracked presence payload, in bytes (default
    /// 3000 KB, as upstream). Larger ones are not relayed; with `broadcast.ack` the sender gets an
    /// error reply, over REST a 413.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 3_000_000)]
    pub max_message_bytes: usize,

    /// Longest channel topic a client may join or address over REST, in bytes (longer joins
    /// are refused with `InvalidJoinPayload`, longer REST messages with 422).
    #[arg(long, env = "MAX_TOPIC_BYTES", default_value_t = 1024)]
    pub max_topic_bytes: usize,

    /// Longest broadcast event name, in bytes (socket and REST).
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 255)]
    pub max_event_bytes: usize,

    /// Most messages in one REST broadcast request (more are refused with 422).
    #[arg(long, env = "MAX_REST_MESSAGES", default_value_t = 100)]
    pub max_rest_messages: usize,

    /// Longest audit-log detail kept whole, serialized, in bytes; a longer one is recorded as
    /// its size and a prefix.
    #[arg(long, env = "MAX_AUDIT_DETAIL_BYTES", default_value_t = 4096)]
    pub max_audit_detail_bytes: usize,

    /// Most presence entries one channel may hold, across all nodes (a track past it gets the
    /// error reply `Channel presence limit reached`).
    #[arg(long, env = "MAX_PRESENCE_PER_CHANNEL", default_value_t = 10_000)]
    pub max_presence_per_channel: usize,

    /// Most bytes of tracked presence payloads one channel may hold, across all nodes.
    #[arg(long, env = "MAX_PRESENCE_BYTES_PER_CHANNEL", default_value_t = 16 * 1024 * 1024)]
    pub max_presence_bytes_per_channel: usize,

    /// Most filter conditions that compile a pattern (`like`, `ilike`, `match`, `imatch`) one
    /// connection's subscriptions may hold (more are refused with a `system` error).
    #[arg(long, env = "MAX_PATTERNS_PER_CONNECTION", default_value_t = 50)]
    pub max_patterns_per_connection: usize,

    /// Most bytes of presence one connection may track across all its channels (a track past
    /// it gets the error reply `Connection presence limit reached`).
    #[arg(long, env = "MAX_PRESENCE_BYTES_PER_CONNECTION", default_value_t = 4 * 1024 * 1024)]
    pub max_presence_bytes_per_connection: usize,

    /// Most `postgres_changes` entries one join may carry (more are refused with
    /// `InvalidPostgresChangesParams`).
    #[arg(long, env = "MAX_CHANGES_PER_JOIN", default_value_t = 100)]
    pub max_changes_per_join: usize,

    /// Longest `filter` of one `postgres_changes` entry, in bytes.
    #[arg(long, env = "MAX_FILTER_BYTES", default_value_t = 8192)]
    pub max_filter_bytes: usize,

    /// Longest `component` name (join config or socket parameter) and presence key, in bytes.
    #[arg(long, env = "MAX_NAME_BYTES", default_value_t = 255)]
    pub max_name_bytes: usize,

    /// A request head (the HTTP request line and headers, WebSocket upgrades included) must
    /// arrive whole within this time, or the connection is closed (e.g. `10s`).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// Most connections in their HTTP phase at once (accepted, not yet upgraded to a WebSocket
    /// or closed); more are closed at once.
    #[arg(long, env = "MAX_PENDING_CONNECTIONS", default_value_t = 1024)]
    pub max_pending_connections: usize,

    /// Most connections in their HTTP phase from one client address (the socket peer); more
    /// are closed at once.
    #[arg(long, env = "MAX_PENDING_PER_ADDRESS", default_value_t = 512)]
    pub max_pending_per_address: usize,

    /// A WebSocket that has no channel joined for this long is closed with code 4003 (e.g.
    /// `60s`; `0s` turns it off).
    #[arg(long, env = "JOIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub join_timeout: Duration,

    /// Delay before a join error reply, to slow down client retry loops (e.g. `5s`; keep it
    /// well below the clients' 10 s join timeout).
    #[arg(long, env = "JOIN_ERROR_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub join_error_delay: Duration,

    /// Delay before a refused WebSocket upgrade is answered (e.g. `2s`).
    #[arg(long, env = "CONNECT_ERROR_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub connect_error_delay: Duration,

    /// The change outbox is read at least this often, even without a notification (e.g. `50ms`).
    #[arg(long, env = "CHANGE_POLL_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub change_poll_interval: Duration,

    /// While every read of the outbox finds changes, reads are spaced out up to this: longer
    /// means fewer reads and row-level security checks per node for the database, and up to
    /// this much more before a change is read (`0ms`: read again as soon as a read ends; at
    /// most `1s`).
    #[arg(long, env = "CHANGE_READ_SPACING", default_value = "20ms", value_parser = parse_duration)]
    pub change_read_spacing: Duration,

    /// Longest a row-level security check of one page of changes may take; past it the page's
    /// changes reach `service_role` subscribers only, the others get an error entry (e.g. `5s`).
    #[arg(long, env = "RLS_CHECK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub rls_check_timeout: Duration,

    /// Captured changes are kept in the outbox at least this long, and until every live node
    /// has read them (e.g. `10m`).
    #[arg(long, env = "CHANGE_RETENTION", default_value = "10m", value_parser = parse_duration)]
    pub change_retention: Duration,

    /// A socket that passes a `session` parameter and reconnects within this long gets the
    /// changes it missed before live ones (e.g. `2m`; `0` turns resuming off). At most
    /// `--change-retention` (a longer window is cut to it).
    #[arg(long, env = "RESUME_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub resume_window: Duration,

    /// Closed rows of the subscription registry are kept this long (e.g. `7days`), then
    /// deleted.
    #[arg(long, env = "REGISTRY_RETENTION", default_value = "7days", value_parser = parse_duration)]
    pub registry_retention: Duration,

    /// Audit-log rows are kept this long (e.g. `30days`).
    #[arg(long, env = "AUDIT_RETENTION", default_value = "30days", value_parser = parse_duration)]
    pub audit_retention: Duration,

    /// Database messages (`realtime.messages` rows of `realtime.send`, `send_binary` and
    /// `broadcast_changes`, which private channels replay) are kept this long, then deleted
    /// (e.g. `72h`; at least `10m`).
    #[arg(long, env = "MESSAGE_RETENTION", default_value = "72h", value_parser = parse_duration)]
    pub message_retention: Duration,

    /// Most registry rows (joins and channel ends) held in memory while they wait to be written,
    /// e.g. during a database outage; more are dropped, counted and warned of (rows, default
    /// 100000).
    #[arg(long, env = "REGISTRY_MAX_PENDING", default_value_t = 100_000)]
    pub registry_max_pending: usize,

    /// Most audit records held in memory while they wait to be written; past it the oldest are
    /// dropped, counted and warned of (records, default 100000).
    #[arg(long, env = "AUDIT_MAX_PENDING", default_value_t = 100_000)]
    pub audit_max_pending: usize,

    /// PostgreSQL connections of a node besides the change listener's `LISTEN` connection: one
    /// for the row-level security checks, the rest a pool for everything else.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,

    /// How long shutdown waits for sessions and background tasks before giving up (e.g. `10s`).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Whether `/metrics` asks for a credential (`Authorization: Bearer` with a `service_role`
    /// JWT or the --admin-token); default `false`, open as before. `/health` and `/ready` stay
    /// open.
    #[arg(long, env = "METRICS_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_auth: bool,

    /// Static bearer token accepted, besides `service_role` JWTs, by the operator endpoints that
    /// ask for a credential (at least 16 characters; unset by default).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Failed authentications (bad or expired token at upgrade or join) one client address may
    /// have within --auth-failure-window, counted across every node on the database; past it the
    /// address's upgrades are refused with 429 until the window ends (default 5; 0 turns it off).
    #[arg(long, env = "MAX_AUTH_FAILURES", default_value_t = 5)]
    pub max_auth_failures: u32,

    /// The window of --max-auth-failures, from an address's first failure in it (e.g. `5m`).
    #[arg(long, env = "AUTH_FAILURE_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub auth_failure_window: Duration,

    /// Most open WebSocket connections from one client address across every node sharing the
    /// database; more are refused with 429 (connections, default 0: no limit).
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDR", default_value_t = 0)]
    pub max_connections_per_addr: u32,

    /// Most open WebSocket connections of one user (`sub` claim) across every node sharing the
    /// database; more are refused with 429 (connections, default 0: no limit).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: u32,

    /// Joins one connection may send per second, sustained (token bucket; default 100; 0 turns
    /// it off). Over it a join gets `ClientJoinRateLimitReached: Too many joins per second`.
    #[arg(long, env = "JOINS_PER_SECOND", default_value_t = 100)]
    pub joins_per_second: u32,

    /// Joins one connection may send in a burst (bucket size, default 100).
    #[arg(long, env = "JOIN_BURST", default_value_t = 100)]
    pub join_burst: u32,

    /// Client events (broadcast pushes, presence track/untrack) one connection may send per
    /// second, sustained (token bucket; default 1000; 0 turns it off). Over it an event gets the
    /// error reply `Too many messages per second` and is not relayed.
    #[arg(long, env = "EVENTS_PER_SECOND", default_value_t = 1000)]
    pub events_per_second: u32,

    /// Client events one connection may send in a burst (bucket size, default 1000).
    #[arg(long, env = "EVENT_BURST", default_value_t = 1000)]
    pub event_burst: u32,

    /// Proxies whose `X-Forwarded-For` is believed: comma-separated IPs or CIDRs (e.g.
    /// `10.0.0.0/8,127.0.0.1`; default none). The client address is then the right-most
    /// address of the header that is not a trusted proxy.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = Cidr::parse)]
    pub trusted_proxies: Vec<Cidr>,

    /// Origins whose browser pages may call the HTTP API (CORS): `*` (the default, as Supabase)
    /// or a comma-separated list such as `https://app.example.com,http://localhost:3000`, each
    /// echoed back to a request from it.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*", value_parser = AllowedOrigins::parse)]
    pub cors_allowed_origins: AllowedOrigins,

    /// Longest a join with `config.broadcast.replication_ready` waits for the change stream
    /// (e.g. `1m`, the default); then the channel gets a `system` error and is closed.
    #[arg(long, env = "REPLICATION_READY_TIMEOUT", default_value = "1m", value_parser = parse_duration)]
    pub replication_ready_timeout: Duration,
}

/// Checked settings, shared read-only by every part of the gateway.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database is; `None` means the embedded cluster.
    pub database_url: Option<String>,
    /// Address served.
    pub listen: SocketAddr,
    /// JWT secret, if given (embedded mode may generate one).
    pub jwt_secret: Option<String>,
    /// JWKS source and required audience, checked.
    pub jwt: jwt::JwtSettings,
    /// Private channels: public joins refused or not, the authorization timeout.
    pub private: private::PrivateSettings,
    /// The admin dashboard's warning thresholds and sample interval.
    pub dashboard: dashboard::DashboardSettings,
    /// Changes and broadcasts remembered for delivery diagnostics.
    pub diagnostics: diagnostics::DiagnosticsSettings,
    /// Connection cap across all nodes.
    pub max_connections: u32,
    /// Reaper and heartbeat-flush period.
    pub heartbeat_interval: Duration,
    /// Staleness limit for connections and nodes.
    pub heartbeat_timeout: Duration,
    /// This node's name.
    pub node_id: String,
    /// Folder of the embedded cluster and generated secret.
    pub data_dir: PathBuf,
    /// Channels per connection cap.
    pub max_channels_per_connection: usize,
    /// Outbound queue bound, frames.
    pub outbound_queue_frames: usize,
    /// Outbound queue bound, bytes.
    pub outbound_queue_bytes: usize,
    /// Truncation limit of a change.
    pub max_change_bytes: usize,
    /// Largest client message.
    pub max_frame_bytes: usize,
    /// Largest broadcast or presence payload.
    pub max_message_bytes: usize,
    /// Longest topic, bytes.
    pub max_topic_bytes: usize,
    /// Longest broadcast event name, bytes.
    pub max_event_bytes: usize,
    /// Most messages per REST request.
    pub max_rest_messages: usize,
    /// Longest audit detail kept whole, bytes.
    pub max_audit_detail_bytes: usize,
    /// Most presence entries per channel.
    pub max_presence_per_channel: usize,
    /// Most presence bytes per channel.
    pub max_presence_bytes_per_channel: usize,
    /// Most pattern conditions per connection.
    pub max_patterns_per_connection: usize,
    /// Most presence bytes per connection.
    pub max_presence_bytes_per_connection: usize,
    /// Most `postgres_changes` entries per join.
    pub max_changes_per_join: usize,
    /// Longest filter, bytes.
    pub max_filter_bytes: usize,
    /// Longest component name or presence key, bytes.
    pub max_name_bytes: usize,
    /// Request-head read timeout.
    pub http_header_timeout: Duration,
    /// Bound on connections in their HTTP phase.
    pub max_pending_connections: usize,
    /// The same bound per client address.
    pub max_pending_per_address: usize,
    /// A socket without channels is closed after this long (zero: never).
    pub join_timeout: Duration,
    /// Delay before join errors.
    pub join_error_delay: Duration,
    /// Delay before refused upgrades.
    pub connect_error_delay: Duration,
    /// Outbox poll period.
    pub change_poll_interval: Duration,
    /// Longest spacing of outbox reads under sustained load.
    pub change_read_spacing: Duration,
    /// Bound on one page's row-level security check.
    pub rls_check_timeout: Duration,
    /// Outbox retention.
    pub change_retention: Duration,
    /// How long a session can be resumed after its socket ends (0: never).
    pub resume_window: Duration,
    /// Audit-log retention.
    pub audit_retention: Duration,
    /// Closed registry rows' retention.
    pub registry_retention: Duration,
    /// Database messages' retention.
    pub message_retention: Duration,
    /// Bound of pending registry rows.
    pub registry_max_pending: usize,
    /// Bound of pending audit records.
    pub audit_max_pending: usize,
    /// Pool size.
    pub db_pool_size: u32,
    /// Bounded wait at shutdown.
    pub shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether `/metrics` asks for a credential.
    pub metrics_auth: bool,
    /// Static admin bearer token.
    pub admin_token: Option<String>,
    /// Failed authentications per address per window (0: off).
    pub max_auth_failures: u32,
    /// Window of the failed-authentication limit.
    pub auth_failure_window: Duration,
    /// Connections per address across the cluster (0: off).
    pub max_connections_per_addr: u32,
    /// Connections per user across the cluster (0: off).
    pub max_connections_per_user: u32,
    /// Joins per second per connection (0: off).
    pub joins_per_second: u32,
    /// Join burst per connection.
    pub join_burst: u32,
    /// Client events per second per connection (0: off).
    pub events_per_second: u32,
    /// Client event burst per connection.
    pub event_burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Origins allowed to call the HTTP API from a browser.
    pub cors_allowed_origins: AllowedOrigins,
    /// Wait for the change stream of a `replication_ready` join.
    pub replication_ready_timeout: Duration,
}

impl Settings {
    /// Checks each setting and the relations between them.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first setting that is wrong.
    pub fn check(self) -> Result<Config, Error> {
        let invalid = |m: &str| Err(Error::Invalid(m.to_owned()));
        if self.max_connections == 0 {
            return invalid("--max-connections must be at least 1");
        }
        if self.replication_ready_timeout.is_zero() {
            return invalid("--replication-ready-timeout must be more than 0s");
        }
        if self.registry_max_pending == 0 || self.audit_max_pending == 0 {
            return invalid("--registry-max-pending and --audit-max-pending must be at least 1");
        }
        if self.heartbeat_interval.is_zero() {
            return invalid("--heartbeat-interval must be greater than zero");
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return invalid("--heartbeat-timeout must be longer than --heartbeat-interval");
        }
        if self.db_pool_size < 2 {
            return invalid("--db-pool-size must be at least 2");
        }
        if self.max_channels_per_connection == 0 {
            return invalid("--max-channels-per-connection must be at least 1");
        }
        if self.outbound_queue_frames < 16 {
            return invalid("--outbound-queue-frames must be at least 16");
        }
        if self.outbound_queue_bytes < 64 * 1024 {
            return invalid("--outbound-queue-bytes must be at least 65536");
        }
        if self.max_change_bytes < 1024 {
            return invalid("--max-change-bytes must be at least 1024");
        }
        if self.max_message_bytes < 1024 {
            return invalid("--max-message-bytes must be at least 1024");
        }
        if self.max_topic_bytes < 16 {
            return invalid("--max-topic-bytes must be at least 16");
        }
        if self.max_event_bytes == 0 || self.max_name_bytes == 0 || self.max_filter_bytes == 0 {
            return invalid(
                "--max-event-bytes, --max-name-bytes and --max-filter-bytes must be at least 1",
            );
        }
        if self.max_rest_messages == 0 {
            return invalid("--max-rest-messages must be at least 1");
        }
        if self.max_audit_detail_bytes < 256 {
            return invalid("--max-audit-detail-bytes must be at least 256");
        }
        if self.max_presence_per_channel == 0 || self.max_presence_bytes_per_channel == 0 {
            return invalid(
                "--max-presence-per-channel and --max-presence-bytes-per-channel must be at least 1",
            );
        }
        if self.max_changes_per_join == 0 {
            return invalid("--max-changes-per-join must be at least 1");
        }
        if self.http_header_timeout.is_zero() {
            return invalid("--http-header-timeout must be greater than zero");
        }
        if self.max_pending_per_address == 0 {
            return invalid("--max-pending-per-address must be at least 1");
        }
        if self.max_pending_connections == 0 {
            return invalid("--max-pending-connections must be at least 1");
        }
        if self.join_error_delay >= Duration::from_secs(10) {
            return invalid("--join-error-delay must stay below the clients' 10s join timeout");
        }
        if self.rls_check_timeout.is_zero() {
            return invalid("--rls-check-timeout must be greater than zero");
        }
        if self.change_poll_interval.is_zero() {
            return invalid("--change-poll-interval must be greater than zero");
        }
        if self.change_read_spacing > Duration::from_secs(1) {
            return invalid("--change-read-spacing must be at most 1s");
        }
        if self.change_retention < Duration::from_secs(1) {
            return invalid("--change-retention must be at least 1s");
        }
        // A node whose listener reconnected delivers the database messages of the last ten
        // minutes it missed (`broadcast::bus::SEEN_FOR`): they must still be there.
        if self.message_retention < Duration::from_secs(600) {
            return invalid("--message-retention must be at least 10m");
        }
        if matches!(&self.admin_token, Some(t) if t.trim().len() < 16) {
            return invalid("--admin-token must be at least 16 characters");
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 16) {
            return invalid("--jwt-secret must be at least 16 characters");
        }
        self.jwt.check().map_err(|m| Error::Invalid(m.to_owned()))?;
        self.private
            .check()
            .map_err(|m| Error::Invalid(m.to_owned()))?;
        self.dashboard
            .check()
            .map_err(|m| Error::Invalid(m.to_owned()))?;
        self.diagnostics
            .check()
            .map_err(|m| Error::Invalid(m.to_owned()))?;
        if self.database_url.is_none() && !self.embedded_db {
            return invalid("--database-url (DATABASE_URL) is required when EMBEDDED_DB=false");
        }
        if self.database_url.is_some() && self.jwt_secret.is_none() {
            return invalid("--jwt-secret (JWT_SECRET) is required when --database-url is set");
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return invalid("--database-url must start with postgres:// or postgresql://");
            }
        }
        if self.auth_failure_window < Duration::from_millis(100) {
            return invalid("--auth-failure-window must be at least 100ms");
        }
        if (self.joins_per_second > 0 && self.join_burst == 0)
            || (self.events_per_second > 0 && self.event_burst == 0)
        {
            return invalid("--join-burst and --event-burst must be at least 1");
        }
        let node_id = match self.node_id {
            Some(id) if id.trim().is_empty() => return invalid("--node-id must not be empty"),
            Some(id) => id,
            None => default_node_id(self.listen),
        };
        Ok(Config {
            database_url: self.database_url,
            listen: self.listen,
            jwt_secret: self.jwt_secret,
            jwt: self.jwt,
            private: self.private,
            dashboard: self.dashboard,
            diagnostics: self.diagnostics,
            max_connections: self.max_connections,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            node_id,
            data_dir: self.data_dir,
            max_channels_per_connection: self.max_channels_per_connection,
            outbound_queue_frames: self.outbound_queue_frames,
            outbound_queue_bytes: self.outbound_queue_bytes,
            max_change_bytes: self.max_change_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_message_bytes: self.max_message_bytes,
            max_topic_bytes: self.max_topic_bytes,
            max_event_bytes: self.max_event_bytes,
            max_rest_messages: self.max_rest_messages,
            max_audit_detail_bytes: self.max_audit_detail_bytes,
            max_presence_per_channel: self.max_presence_per_channel,
            max_presence_bytes_per_channel: self.max_presence_bytes_per_channel,
            max_patterns_per_connection: self.max_patterns_per_connection,
            max_presence_bytes_per_connection: self.max_presence_bytes_per_connection,
            max_changes_per_join: self.max_changes_per_join,
            max_filter_bytes: self.max_filter_bytes,
            max_name_bytes: self.max_name_bytes,
            http_header_timeout: self.http_header_timeout,
            max_pending_connections: self.max_pending_connections,
            max_pending_per_address: self.max_pending_per_address,
            join_timeout: self.join_timeout,
            join_error_delay: self.join_error_delay,
            connect_error_delay: self.connect_error_delay,
            change_poll_interval: self.change_poll_interval,
            change_read_spacing: self.change_read_spacing,
            rls_check_timeout: self.rls_check_timeout,
            change_retention: self.change_retention,
            // Never longer than the outbox keeps changes.
            resume_window: self.resume_window.min(self.change_retention),
            audit_retention: self.audit_retention,
            registry_retention: self.registry_retention,
            message_retention: self.message_retention,
            registry_max_pending: self.registry_max_pending,
            audit_max_pending: self.audit_max_pending,
            db_pool_size: self.db_pool_size,
            shutdown_timeout: self.shutdown_timeout,
            log_format: self.log_format,
            metrics_auth: self.metrics_auth,
            admin_token: self.admin_token.map(|t| t.trim().to_owned()),
            max_auth_failures: self.max_auth_failures,
            auth_failure_window: self.auth_failure_window,
            max_connections_per_addr: self.max_connections_per_addr,
            max_connections_per_user: self.max_connections_per_user,
            joins_per_second: self.joins_per_second,
            join_burst: self.join_burst,
            events_per_second: self.events_per_second,
            event_burst: self.event_burst,
            trusted_proxies: self.trusted_proxies,
            cors_allowed_origins: self.cors_allowed_origins,
            replication_ready_timeout: self.replication_ready_timeout,
        })
    }
}

impl Config {
    /// Settings for tests and embedding: every default, with the given database and secret.
    pub fn for_database(database_url: String, jwt_secret: String) -> Config {
        let settings = Settings {
            database_url: Some(database_url),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt_secret: Some(jwt_secret),
            jwt: jwt::JwtSettings::default(),
            private: private::PrivateSettings::default(),
            dashboard: dashboard::DashboardSettings::default(),
            diagnostics: diagnostics::DiagnosticsSettings::default(),
            max_connections: 200,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(60),
            node_id: None,
            data_dir: PathBuf::from(".data"),
            embedded_db: false,
            max_channels_per_connection: 100,
            outbound_queue_frames: 16_384,
            outbound_queue_bytes: 8 * 1024 * 1024,
            max_change_bytes: 1024 * 1024,
            max_frame_bytes: 5_000_000,
            max_message_bytes: 3_000_000,
            max_topic_bytes: 1024,
            max_event_bytes: 255,
            max_rest_messages: 100,
            max_audit_detail_bytes: 4096,
            max_presence_per_channel: 10_000,
            max_presence_bytes_per_channel: 16 * 1024 * 1024,
            max_patterns_per_connection: 50,
            max_presence_bytes_per_connection: 4 * 1024 * 1024,
            max_changes_per_join: 100,
            max_filter_bytes: 8192,
            max_name_bytes: 255,
            http_header_timeout: Duration::from_secs(10),
            max_pending_connections: 1024,
            max_pending_per_address: 512,
            join_timeout: Duration::from_secs(60),
            join_error_delay: Duration::from_secs(5),
            connect_error_delay: Duration::from_secs(2),
            change_poll_interval: Duration::from_millis(50),
            change_read_spacing: Duration::from_millis(20),
            rls_check_timeout: Duration::from_secs(5),
            change_retention: Duration::from_secs(600),
            resume_window: Duration::from_secs(120),
            audit_retention: Duration::from_secs(30 * 24 * 3600),
            registry_retention: Duration::from_secs(7 * 24 * 3600),
            message_retention: Duration::from_secs(72 * 3600),
            registry_max_pending: 100_000,
            audit_max_pending: 100_000,
            db_pool_size: 8,
            shutdown_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            metrics_auth: false,
            admin_token: None,
            max_auth_failures: 5,
            auth_failure_window: Duration::from_secs(300),
            max_connections_per_addr: 0,
            max_connections_per_user: 0,
            joins_per_second: 100,
            join_burst: 100,
            events_per_second: 1000,
            event_burst: 1000,
            trusted_proxies: Vec::new(),
            cors_allowed_origins: AllowedOrigins::Any,
            replication_ready_timeout: Duration::from_secs(60),
        };
        let mut config = settings
            .check()
            // The defaults above satisfy every rule in `check`.
            .expect("default settings are valid");
        config.node_id = format!("node-{}", uuid::Uuid::new_v4().simple());
        config
    }
}

fn default_node_id(listen: SocketAddr) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", listen.port())
}

/// Parses durations written like `30s`, `500ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write durations like `30s` or `500ms`)"))
}

#[cfg(test)]
mod tests;
