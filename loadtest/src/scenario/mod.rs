//! Scenarios and what they share: the run context, the once-a-second sampler (timeline and
//! progress line), and what every run reports.
//!
//! - [`stream`]: `seed`, `fanout`, `rls`, `soak` and `baseline`: subscribers plus paced
//!   writers.
//! - [`idle`]: many idle joined connections: connect+join rate and memory per connection.
//! - [`cap`]: more clients than the cap at once.
//! - [`churn`]: connect/join/leave/disconnect storms and the return to baseline.
//! - [`capture`]: insert throughput and WAL with and without realtime on the table.
//! - [`population`]: the long-lived clients of a run. [`result`]: the JSON result.
//!
//! A run targets either the gateway (one node or several sharing a database) or the baseline
//! server ([`crate::baseline`]); the scenarios are the same code for both, and skip only what
//! needs a database when they serve the baseline.

pub(crate) mod cap;
pub(crate) mod capture;
pub(crate) mod churn;
pub(crate) mod idle;
pub(crate) mod population;
pub(crate) mod result;
pub(crate) mod stream;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub(crate) use population::{Behaviour, Population};
pub(crate) use result::{delivery_failures, result_json};

use crate::baseline::{Feed, Server};
use crate::cli::{Plan, Scenario};
use crate::client::{self, ConnectError};
use crate::probe::{Probe, ProcStats};
use crate::record::{Recorder, Sample};
use crate::target::Target;

/// How long the gateway may take to answer `/ready` at the start.
const READY_PATIENCE: Duration = Duration::from_secs(30);
/// Token lifetime beyond the run's own length.
const TOKEN_SLACK_S: i64 = 3600;

/// What every scenario gets.
#[derive(Debug)]
pub(crate) struct Run {
    /// The resolved flags.
    pub(crate) plan: Plan,
    /// The gateway nodes (or the baseline server), in `--url` order: client `i` connects to
    /// `targets[i % len]`.
    pub(crate) targets: Vec<Target>,
    /// Their processes and database.
    pub(crate) probe: Probe,
    /// Counters, histograms, timeline.
    pub(crate) rec: Arc<Recorder>,
    /// The clients' key (role anon), signed with the gateway's secret.
    pub(crate) token: Arc<str>,
    /// Channel tokens of the rls scenario's users (role authenticated, one `sub` each);
    /// client `i` joins with token `i % len`. Empty otherwise: channels use the socket's key.
    pub(crate) channel_tokens: Arc<[Arc<str>]>,
    /// Run id written into every row, so rows of other runs are told apart.
    pub(crate) run_id: i64,
    /// The writers' way to the baseline server, when the run serves the baseline instead of
    /// the gateway.
    pub(crate) feed: Option<Feed>,
    /// CPU seconds of the server(s), their child processes and this process at the start
    /// (the figures are cumulative).
    start: CpuMark,
}

/// CPU seconds used so far by the servers under test, their children (the first gateway's
/// local-mode PostgreSQL) and the load tester itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuMark {
    /// The gateway nodes (or the baseline server).
    pub(crate) server: Option<f64>,
    /// Their child processes.
    pub(crate) children: Option<f64>,
    /// This process.
    pub(crate) loadtest: Option<f64>,
}

impl CpuMark {
    /// The figures now.
    pub(crate) fn take(probe: &Probe) -> CpuMark {
        CpuMark {
            server: probe.process().map(|p| p.cpu_s),
            children: probe.children_cpu_s(),
            loadtest: ProcStats::read(None).map(|p| p.cpu_s),
        }
    }

    /// CPU seconds used since `start`, each figure rounded to hundredths.
    pub(crate) fn since(self, start: CpuMark) -> CpuMark {
        let d = |now: Option<f64>, then: Option<f64>| {
            now.zip(then)
                .map(|(n, t)| ((n - t).max(0.0) * 100.0).round() / 100.0)
        };
        CpuMark {
            server: d(self.server, start.server),
            children: d(self.children, start.children),
            loadtest: d(self.loadtest, start.loadtest),
        }
    }
}

/// What a scenario hands back besides the recorder's counters.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Rows written.
    pub(crate) written: u64,
    /// Deliveries expected (rows written times subscribers).
    pub(crate) expected: u64,
    /// Seconds the deliveries/s figure is taken over.
    pub(crate) delivery_window_s: f64,
    /// Gateway RSS before any client connected, KiB.
    pub(crate) rss_baseline_kib: Option<u64>,
    /// Gateway RSS with every client connected, KiB.
    pub(crate) rss_loaded_kib: Option<u64>,
    /// Connections the per-connection memory is divided by.
    pub(crate) connections_for_memory: u64,
    /// CPU used while the deliveries flowed (writing and draining), and what it was spent on:
    /// `(cpu, deliveries received)`.
    pub(crate) delivery_cpu: Option<(CpuMark, u64)>,
    /// Scenario-specific figures.
    pub(crate) detail: Value,
    /// Why the run failed, if it did.
    pub(crate) failures: Vec<String>,
    /// What the gateway lacks for this scenario (registry, audit log, presence...).
    pub(crate) gateway_missing: Vec<String>,
    /// Targets of the issue, evaluated: (name, measured, met).
    pub(crate) targets: Vec<(String, Value, bool)>,
}

impl Run {
    /// Sets up a run against the gateway: resolves the nodes, signs the keys, opens the probe.
    pub(crate) async fn new(plan: Plan) -> anyhow::Result<Run> {
        let mut targets = Vec::with_capacity(plan.urls.len());
        for url in &plan.urls {
            targets.push(Target::resolve(url).await?);
        }
        let probe = Probe::new(
            targets.clone(),
            plan.gateway_pids.clone(),
            plan.database_url.as_deref(),
        );
        Run::with(plan, targets, probe, None)
    }

    /// Sets up the same run against the baseline server `server` (no database).
    pub(crate) async fn baseline(mut plan: Plan, server: &Server) -> anyhow::Result<Run> {
        plan.urls = vec![server.url()];
        plan.gateway_pids = vec![server.pid()];
        let target = Target::resolve(&plan.urls[0]).await?;
        let probe = Probe::new(vec![target.clone()], plan.gateway_pids.clone(), None);
        Run::with(plan, vec![target], probe, Some(server.feed()))
    }

    fn with(
        plan: Plan,
        targets: Vec<Target>,
        probe: Probe,
        feed: Option<Feed>,
    ) -> anyhow::Result<Run> {
        let ttl = i64::try_from(plan.duration.as_secs()).unwrap_or(i64::MAX / 2) + TOKEN_SLACK_S;
        let token = realtime_gateway::auth::sign(&plan.jwt_secret, "anon", None, ttl)
            .map_err(|e| anyhow::anyhow!("sign the client key: {e}"))?;
        let channel_tokens: Vec<Arc<str>> = if plan.scenario == Scenario::Rls {
            (0..plan.claim_sets)
                .map(|i| {
                    realtime_gateway::auth::sign(
                        &plan.jwt_secret,
                        "authenticated",
                        Some(&rls_user(i)),
                        ttl,
                    )
                    .map(Arc::from)
                    .map_err(|e| anyhow::anyhow!("sign a user's key: {e}"))
                })
                .collect::<anyhow::Result<_>>()?
        } else {
            Vec::new()
        };
        let run_id = i64::from(std::process::id()) << 20 | i64::from(nanos_now() & 0xf_ffff);
        let start = CpuMark::take(&probe);
        Ok(Run {
            plan,
            targets,
            probe,
            rec: Arc::new(Recorder::new()),
            token: Arc::from(token),
            channel_tokens: Arc::from(channel_tokens),
            run_id,
            feed,
            start,
        })
    }

    /// Runs the plan's scenario.
    pub(crate) async fn execute(&self) -> anyhow::Result<Report> {
        for target in &self.targets {
            target.wait_ready(READY_PATIENCE).await?;
        }
        let sampler = Sampler::spawn(self);
        let report = match self.plan.scenario {
            Scenario::Seed
            | Scenario::Fanout
            | Scenario::Rls
            | Scenario::Soak
            | Scenario::Baseline => stream::run(self).await,
            Scenario::Idle => idle::run(self).await,
            Scenario::Cap => cap::run(self).await,
            Scenario::Churn => churn::run(self).await,
            Scenario::Capture => capture::run(self).await,
            Scenario::ServeBaseline => Err(anyhow::anyhow!(
                "serve-baseline is the baseline server, not a scenario"
            )),
        };
        sampler.stop().await;
        report
    }

    /// The first (for cap, churn and capture: the only) gateway node.
    pub(crate) fn target(&self) -> &Target {
        &self.targets[0]
    }

    /// Whether this run serves the baseline instead of the gateway.
    pub(crate) fn is_baseline(&self) -> bool {
        self.feed.is_some()
    }

    /// The database, unless the run serves the baseline.
    pub(crate) fn database_url(&self) -> Option<&str> {
        if self.is_baseline() {
            None
        } else {
            self.plan.database_url.as_deref()
        }
    }

    /// CPU used since the run started.
    pub(crate) fn cpu_used(&self) -> CpuMark {
        CpuMark::take(&self.probe).since(self.start)
    }

    /// Prints a progress note on stderr (unless quiet).
    pub(crate) fn say(&self, text: &str) {
        if !self.plan.quiet {
            let mut err = std::io::stderr().lock();
            let _written = writeln!(
                err,
                "[{:>6.1}s]{} {text}",
                self.rec.clock.elapsed().as_secs_f64(),
                if self.is_baseline() { " baseline:" } else { "" }
            );
        }
    }

    /// The topic client `index` joins.
    pub(crate) fn topic_for(&self, index: usize) -> String {
        format!("realtime:loadtest-{}", index % self.plan.channels)
    }
}

fn nanos_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Creates (or empties) the events table every subscriber listens to, realtime-enabled.
pub(crate) async fn prepare_events_table(run: &Run) -> anyhow::Result<()> {
    let url = run
        .database_url()
        .ok_or_else(|| anyhow::anyhow!("--database-url is required"))?;
    let mut setup = crate::writer::connect(url, "setup").await?;
    crate::writer::prepare_table(&mut setup, client::EVENTS_TABLE, true).await?;
    let table = client::EVENTS_TABLE;
    let statements: Vec<String> = if run.plan.scenario == Scenario::Rls {
        vec![
            format!("alter table public.{table} add column if not exists owner uuid"),
            format!("drop policy if exists loadtest_owner on public.{table}"),
            format!(
                "create policy loadtest_owner on public.{table} for select to authenticated \
                 using (owner = auth.uid() or owner is null)"
            ),
            format!("alter table public.{table} enable row level security"),
        ]
    } else {
        vec![format!(
            "alter table public.{table} disable row level security"
        )]
    };
    for statement in &statements {
        sqlx::query(statement)
            .execute(&mut setup)
            .await
            .map_err(|e| anyhow::anyhow!("{statement}: {e}"))?;
    }
    sqlx::Connection::close(setup).await?;
    Ok(())
}

/// The `sub` of the rls scenario's user `i`.
fn rls_user(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// Counts a failed connection attempt: an HTTP refusal or an error.
pub(crate) fn book_connect_error(rec: &Recorder, e: &ConnectError) {
    match e {
        ConnectError::Refused { status, body } => {
            rec.counters.refused.fetch_add(1, Ordering::Relaxed);
            rec.note(&format!("refused {status} {}", body.trim()));
        }
        ConnectError::Failed(reason) => rec.error(reason),
    }
}

/// Waits until `done()` or `patience` passes, checking every 50 ms.
pub(crate) async fn wait_until(patience: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The once-a-second sampler: timeline samples and the progress line.
#[derive(Debug)]
struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn spawn(run: &Run) -> Sampler {
        let stop = CancellationToken::new();
        let rec = Arc::clone(&run.rec);
        let probe = run.probe.clone();
        let quiet = run.plan.quiet;
        let label = if run.is_baseline() { " baseline" } else { "" };
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_received = 0;
            let mut last_t = rec.clock.elapsed().as_secs_f64();
            let mut last_gw = probe.process();
            let mut last_self = ProcStats::read(None);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let t = rec.clock.elapsed().as_secs_f64();
                let dt = (t - last_t).max(1e-3);
                let c = &rec.counters;
                let received = c.deliveries.received.sum();
                let interval = rec.take_interval();
                let ms = |q: f64| {
                    (!interval.is_empty()).then(|| interval.value_at_quantile(q) as f64 / 1e3)
                };
                if let Some(n) = probe.pg_connections().await {
                    rec.note_pg_connections(n);
                }
                let gw = probe.process();
                let me = ProcStats::read(None);
                let pct = |now: Option<ProcStats>, before: Option<ProcStats>| match (now, before) {
                    (Some(n), Some(b)) => Some((n.cpu_s - b.cpu_s) / dt * 100.0),
                    _ => None,
                };
                let sample = Sample {
                    t_s: t,
                    open: c.open.load(Ordering::Relaxed),
                    subscribed: c.subscribed_now.load(Ordering::Relaxed),
                    deliveries_per_s: (received - last_received) as f64 / dt,
                    written: rec.written.load(Ordering::Relaxed),
                    p50_ms: ms(0.5),
                    p95_ms: ms(0.95),
                    p99_ms: ms(0.99),
                    max_ms: (!interval.is_empty()).then(|| interval.max() as f64 / 1e3),
                    gateway_rss_kib: gw.map(|g| g.rss_kib),
                    gateway_cpu_pct: pct(gw, last_gw),
                    loadtest_cpu_pct: pct(me, last_self),
                };
                if !quiet {
                    let line = progress_line(&sample, &rec, label);
                    let mut err = std::io::stderr().lock();
                    let _written = writeln!(err, "{line}");
                }
                rec.push_sample(sample);
                last_received = received;
                last_t = t;
                last_gw = gw;
                last_self = me;
            }
        });
        Sampler { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _joined = self.task.await;
    }
}

fn progress_line(s: &Sample, rec: &Recorder, label: &str) -> String {
    let c = &rec.counters;
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let mut line = format!(
        "[{:>6.1}s]{label} open {} subscribed {} refused {} errors {} | written {} delivered/s {:.0} p50 {} p99 {} ms",
        s.t_s,
        s.open,
        s.subscribed,
        c.refused.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        s.written,
        s.deliveries_per_s,
        opt(s.p50_ms),
        opt(s.p99_ms),
    );
    if let Some(rss) = s.gateway_rss_kib {
        line.push_str(&format!(
            " | {} {} MiB {}% cpu",
            if label.is_empty() {
                "gateway"
            } else {
                "server"
            },
            rss / 1024,
            opt(s.gateway_cpu_pct)
        ));
    }
    line
}

/// Milliseconds with three decimals, from a histogram value in microseconds.
pub(crate) fn ms(us: u64) -> f64 {
    (us as f64 / 1e3 * 1000.0).round() / 1000.0
}
