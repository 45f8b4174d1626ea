//! The command line: one scenario and its flags, resolved into a [`Plan`] with the scenario's
//! defaults and checked bounds (loopback targets only, bounded count and time).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

/// Most client connections one run may open (the loopback source range allows far more, but a
/// run is meant to stay bounded).
pub(crate) const MAX_CLIENTS: usize = 200_000;
/// Longest run.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Highest change rate the writer is asked for.
const MAX_RATE: u32 = 100_000;
/// Most rows one run writes (the commit-time table is preallocated from this).
const MAX_ROWS: u64 = 20_000_000;
/// Most gateway nodes one run spreads its clients over.
const MAX_NODES: usize = 16;

/// What a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// 180 users join a channel with Postgres Changes and presence, heartbeat like
    /// realtime-js; a writer inserts at --rate (50/s) for 60 s.
    Seed,
    /// --clients subscribers of one table, changes at --rate: deliveries/s and latency.
    Fanout,
    /// Fan-out through row-level security: --clients subscribers in --claim-sets distinct
    /// users on a table whose policy is `owner = auth.uid() or owner is null`, every row
    /// visible to all of them, so each claim set's check runs on every change.
    Rls,
    /// More clients than the gateway's cap, all at once: exactly --cap admitted, the rest
    /// refused with 429 "Too many connected users".
    Cap,
    /// Connect/join/leave/disconnect storms at --connect-rate; afterwards registry rows,
    /// connections and memory are back to baseline.
    Churn,
    /// A long fan-out run while the gateway's listener connection is killed periodically.
    Soak,
    /// --clients idle connections with one joined channel each: connect+join rate and gateway
    /// memory per connection.
    Idle,
    /// Capture cost: --writers concurrent inserters into a realtime-enabled table and into
    /// the same table not enabled, in --rounds alternating rounds; the median ratio of their
    /// throughputs and the WAL each insert writes.
    Capture,
    /// The fan-out job (--clients, --rate) served by the load tester's own minimal server:
    /// no gateway, no database. What `--baseline` compares the gateway with.
    Baseline,
    /// The baseline server itself (started by `--baseline` and `baseline`, not by hand).
    #[value(hide = true)]
    ServeBaseline,
}

impl Scenario {
    /// The scenario's name as typed on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Seed => "seed",
            Scenario::Fanout => "fanout",
            Scenario::Rls => "rls",
            Scenario::Cap => "cap",
            Scenario::Churn => "churn",
            Scenario::Soak => "soak",
            Scenario::Idle => "idle",
            Scenario::Capture => "capture",
            Scenario::Baseline => "baseline",
            Scenario::ServeBaseline => "serve-baseline",
        }
    }

    /// Whether `--baseline` applies: the scenarios whose job the baseline server can serve.
    fn has_baseline(self) -> bool {
        matches!(
            self,
            Scenario::Seed | Scenario::Fanout | Scenario::Rls | Scenario::Idle
        )
    }
}

/// `loadtest <scenario> [flags]`: load tests for realtime-gateway, loopback targets only.
///
/// Every run prints progress on stderr, a summary on stdout, and as the last line of stdout a
/// JSON result. It exits non-zero when anything was lost, duplicated or out of order, or any
/// client failed.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about, long_about = None)]
pub(crate) struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    pub(crate) scenario: Scenario,

    /// WebSocket base of the gateway (the clients append `/websocket`); loopback only. Several,
    /// comma-separated, are nodes sharing one database: client `i` connects to node
    /// `i mod nodes`.
    #[arg(
        long,
        env = "REALTIME_URL",
        default_value = "ws://127.0.0.1:4000/realtime/v1",
        value_delimiter = ','
    )]
    pub(crate) url: Vec<String>,

    /// PostgreSQL URL of the gateway's database (the writer and the probes use it); loopback
    /// or a Unix socket only.
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: Option<String>,

    /// HS256 secret the gateway verifies tokens with; the clients' keys are signed with it.
    /// Required for every scenario but `baseline`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,

    /// Client connections. Default: seed 180, fanout 1000, cap --cap + 50, churn 0 (unused),
    /// soak 200, idle 15000.
    #[arg(long)]
    pub(crate) clients: Option<usize>,

    /// How long the measured phase lasts (e.g. `60s`, `10m`). Default: 60 s; soak 10 min;
    /// capture 40 s (split over its phases); cap 5 s of holding.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,

    /// Changes written per second (by all writers together). Default: seed, soak and rls 50,
    /// fanout and baseline 1000, others 0.
    #[arg(long)]
    pub(crate) rate: Option<u32>,

    /// Channels the clients are spread over (all subscribe to the same table, so every client
    /// receives every change).
    #[arg(long, default_value_t = 1)]
    pub(crate) channels: usize,

    /// Whether clients join with presence and track themselves (docs/protocol.md 9). Default: on
    /// for seed, off otherwise.
    #[arg(long, action = clap::ArgAction::Set)]
    pub(crate) presence: Option<bool>,

    /// Bytes of filler in each written row's `payload` column.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload_bytes: usize,

    /// New connections started per second (0: as fast as --connect-concurrency allows).
    /// Default: churn 500, others 0.
    #[arg(long)]
    pub(crate) connect_rate: Option<u32>,

    /// Most connection handshakes (and joins) in flight at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) connect_concurrency: usize,

    /// Client heartbeat period (realtime-js: 25 s).
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub(crate) heartbeat_interval: Duration,

    /// The gateway's process id: its RSS, open files and CPU time are read from /proc. With
    /// several --url, one per node, comma-separated, in the same order (figures are summed).
    #[arg(long, value_delimiter = ',')]
    pub(crate) gateway_pid: Vec<u32>,

    /// The gateway's connection cap (its MAX_CONNECTIONS), for the cap scenario.
    #[arg(long, default_value_t = 200)]
    pub(crate) cap: usize,

    /// Distinct users (claim sets) the rls scenario's clients are spread over.
    #[arg(long, default_value_t = 50)]
    pub(crate) claim_sets: usize,

    /// Concurrent writer connections. Capture (default 16): inserting as fast as they can.
    /// Seed, fanout, rls, soak, baseline (default 1): sharing --rate, each committing its own
    /// rows in order (row `n` is writer `n mod writers`'s).
    #[arg(long)]
    pub(crate) writers: Option<usize>,

    /// Capture: alternating rounds (each a plain and a realtime phase of
    /// --duration / (2 x rounds)); the ratio reported is the median of the rounds'.
    #[arg(long, default_value_t = 6)]
    pub(crate) rounds: usize,

    /// Also run the same job against the load tester's own minimal server (seed, fanout, rls,
    /// idle), right before the gateway, and report gateway / baseline for deliveries/s, p99
    /// latency, memory and CPU per connection and per delivery.
    #[arg(long)]
    pub(crate) baseline: bool,

    /// Soak: terminate the gateway's listener connection this often (e.g. `20s`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) kill_listener_every: Duration,

    /// Writer session's `synchronous_commit` (seed, fanout, soak). `off` keeps a single
    /// sequential writer ahead of the disk's flush rate; visibility is the same either way.
    #[arg(long, default_value = "off")]
    pub(crate) synchronous_commit: String,

    /// After the writer stops, wait at most this long for deliveries still in flight.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) drain: Duration,

    /// Churn: wait at most this long for the gateway to return to its baseline.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) settle: Duration,

    /// Write the JSON result to this file as well.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Write a self-contained HTML report (charts inline, no external resources) here.
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,

    /// No progress lines on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// The resolved run: every default filled in for the scenario, every bound checked.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The scenario.
    pub(crate) scenario: Scenario,
    /// WebSocket base URLs, as given: one per node.
    pub(crate) urls: Vec<String>,
    /// Database URL, when given.
    pub(crate) database_url: Option<String>,
    /// Token secret.
    pub(crate) jwt_secret: String,
    /// Client connections.
    pub(crate) clients: usize,
    /// Measured phase.
    pub(crate) duration: Duration,
    /// Changes per second.
    pub(crate) rate: u32,
    /// Channels.
    pub(crate) channels: usize,
    /// Presence on joins.
    pub(crate) presence: bool,
    /// Row filler bytes.
    pub(crate) payload_bytes: usize,
    /// Connections started per second, 0 for unpaced.
    pub(crate) connect_rate: u32,
    /// Handshakes in flight.
    pub(crate) connect_concurrency: usize,
    /// Heartbeat period.
    pub(crate) heartbeat_interval: Duration,
    /// Gateway pids, one per node (or none).
    pub(crate) gateway_pids: Vec<u32>,
    /// Expected cap.
    pub(crate) cap: usize,
    /// Writer connections.
    pub(crate) writers: usize,
    /// Capture rounds.
    pub(crate) rounds: usize,
    /// Run the baseline before the gateway.
    pub(crate) baseline: bool,
    /// Distinct users of the rls scenario.
    pub(crate) claim_sets: usize,
    /// Soak kill period.
    pub(crate) kill_listener_every: Duration,
    /// Writer's synchronous_commit.
    pub(crate) synchronous_commit: String,
    /// Drain patience.
    pub(crate) drain: Duration,
    /// Churn settle patience.
    pub(crate) settle: Duration,
    /// JSON output file.
    pub(crate) json: Option<PathBuf>,
    /// HTML report file.
    pub(crate) report: Option<PathBuf>,
    /// No progress lines.
    pub(crate) quiet: bool,
}

impl Args {
    /// Fills in the scenario's defaults and checks every bound.
    pub(crate) fn plan(self) -> anyhow::Result<Plan> {
        use Scenario::*;
        let s = self.scenario;
        let clients = self.clients.unwrap_or(match s {
            Seed => 180,
            Fanout | Rls | Baseline => 1000,
            Cap => self.cap + 50,
            Churn | Capture | ServeBaseline => 0,
            Soak => 200,
            Idle => 15_000,
        });
        let duration = self.duration.unwrap_or(match s {
            Soak => Duration::from_secs(600),
            Cap => Duration::from_secs(5),
            _ => Duration::from_secs(60),
        });
        let rate = self.rate.unwrap_or(match s {
            Seed | Soak | Rls => 50,
            Fanout | Baseline => 1000,
            _ => 0,
        });
        let writers = self.writers.unwrap_or(match s {
            Capture => 16,
            _ => 1,
        });
        let connect_rate = self.connect_rate.unwrap_or(match s {
            Churn => 500,
            _ => 0,
        });
        if clients > MAX_CLIENTS {
            bail!("--clients is bounded at {MAX_CLIENTS}");
        }
        if duration > MAX_DURATION || duration.is_zero() {
            bail!("--duration must be between 1 ms and 24 h");
        }
        if rate > MAX_RATE {
            bail!("--rate is bounded at {MAX_RATE} changes/s");
        }
        if u64::from(rate).saturating_mul(duration.as_secs() + 1) > MAX_ROWS {
            bail!("--rate x --duration is bounded at {MAX_ROWS} rows");
        }
        if connect_rate > MAX_RATE {
            bail!("--connect-rate is bounded at {MAX_RATE}/s");
        }
        if self.channels == 0 {
            bail!("--channels must be at least 1");
        }
        if self.connect_concurrency == 0 || self.connect_concurrency > 10_000 {
            bail!("--connect-concurrency must be between 1 and 10000");
        }
        if writers == 0 || writers > 256 {
            bail!("--writers must be between 1 and 256");
        }
        if s == Capture && (self.rounds == 0 || self.rounds > 1000) {
            bail!("--rounds must be between 1 and 1000");
        }
        if s == Capture && duration < Duration::from_millis(200) * self.rounds as u32 {
            bail!("--duration must give each of the 2 x --rounds phases at least 100ms");
        }
        if self.url.is_empty() || self.url.len() > MAX_NODES {
            bail!("--url: between 1 and {MAX_NODES} gateway nodes");
        }
        if !self.gateway_pid.is_empty() && self.gateway_pid.len() != self.url.len() {
            bail!(
                "--gateway-pid: one per --url ({} urls, {} pids)",
                self.url.len(),
                self.gateway_pid.len()
            );
        }
        if self.url.len() > 1 && matches!(s, Cap | Churn | Capture) {
            bail!(
                "the {} scenario drives one gateway node: give one --url",
                s.name()
            );
        }
        if self.baseline && !s.has_baseline() {
            bail!(
                "--baseline applies to seed, fanout, rls and idle, not to {}",
                s.name()
            );
        }
        if self.payload_bytes > 1_000_000 {
            bail!("--payload-bytes is bounded at 1000000");
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            bail!("--heartbeat-interval must be at least 100ms");
        }
        if !matches!(
            self.synchronous_commit.as_str(),
            "on" | "off" | "local" | "remote_write" | "remote_apply"
        ) {
            bail!("--synchronous-commit must be on, off, local, remote_write or remote_apply");
        }
        let jwt_secret = match (self.jwt_secret, s) {
            (Some(secret), _) if secret.len() >= 16 => secret,
            // The baseline server checks no token; the clients still send one, as to a gateway.
            (None, Baseline | ServeBaseline) => "baseline-server-checks-no-token".to_owned(),
            _ => {
                bail!("--jwt-secret (JWT_SECRET) must be the gateway's secret (16+ characters)")
            }
        };
        if self.claim_sets == 0 || self.claim_sets > 100_000 {
            bail!("--claim-sets must be between 1 and 100000");
        }
        let needs_db = matches!(s, Seed | Fanout | Rls | Soak | Capture | Churn | Idle);
        if needs_db && self.database_url.is_none() {
            bail!(
                "--database-url (DATABASE_URL) is required for the {} scenario",
                s.name()
            );
        }
        if let Some(url) = &self.database_url {
            check_database_url(url).context("--database-url")?;
        }
        Ok(Plan {
            scenario: s,
            urls: self.url,
            database_url: self.database_url,
            jwt_secret,
            clients,
            duration,
            rate,
            channels: self.channels,
            presence: self.presence.unwrap_or(s == Seed),
            payload_bytes: self.payload_bytes,
            connect_rate,
            connect_concurrency: self.connect_concurrency,
            heartbeat_interval: self.heartbeat_interval,
            gateway_pids: self.gateway_pid,
            cap: self.cap,
            writers,
            rounds: self.rounds,
            baseline: self.baseline,
            claim_sets: self.claim_sets,
            kill_listener_every: self.kill_listener_every,
            synchronous_commit: self.synchronous_commit,
            drain: self.drain,
            settle: self.settle,
            json: self.json,
            report: self.report,
            quiet: self.quiet,
        })
    }
}

impl Plan {
    /// The flags that shaped this run, for the JSON result and the report.
    pub(crate) fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.urls,
            "clients": self.clients,
            "duration_s": self.duration.as_secs_f64(),
            "rate": self.rate,
            "channels": self.channels,
            "presence": self.presence,
            "payload_bytes": self.payload_bytes,
            "connect_rate": self.connect_rate,
            "connect_concurrency": self.connect_concurrency,
            "heartbeat_interval_s": self.heartbeat_interval.as_secs_f64(),
            "cap": self.cap,
            "writers": self.writers,
            "rounds": self.rounds,
            "baseline": self.baseline,
            "kill_listener_every_s": self.kill_listener_every.as_secs_f64(),
            "synchronous_commit": self.synchronous_commit,
        })
    }
}

/// The database must be on this machine: a loopback host or a Unix socket.
fn check_database_url(url: &str) -> anyhow::Result<()> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().context("not a postgres url")?;
    let host = options.get_host();
    if host.starts_with('/') || crate::target::is_loopback_host(host) {
        Ok(())
    } else {
        bail!("database host {host} is not a loopback address (loopback targets only)")
    }
}

/// Parses durations written like `30s`, `500ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write durations like `30s` or `500ms`)"))
}
