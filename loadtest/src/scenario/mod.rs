//! Scenarios and what they share: the run context, a population of client tasks, the
//! once-a-second sampler (timeline and progress line), and the result every run reports.
//!
//! - [`stream`]: `seed`, `fanout` and `soak`: subscribers plus a paced writer.
//! - [`idle`]: many idle joined connections: connect+join rate and memory per connection.
//! - [`cap`]: more clients than the cap at once.
//! - [`churn`]: connect/join/leave/disconnect storms and the return to baseline.
//! - [`capture`]: insert throughput with and without realtime on the table.

pub(crate) mod cap;
pub(crate) mod capture;
pub(crate) mod churn;
pub(crate) mod idle;
pub(crate) mod stream;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Plan, Scenario};
use crate::client::{self, ConnectError, JoinSpec};
use crate::probe::{Probe, ProcStats};
use crate::record::{CommitLog, Recorder, Sample, Tracker};
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
    /// The gateway.
    pub(crate) target: Target,
    /// Its process and database.
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
    /// The gateway's CPU seconds when the run started (its figure is cumulative).
    gateway_cpu_start: Option<f64>,
    /// CPU seconds of the gateway's child processes (its local-mode PostgreSQL) at the start.
    postgres_cpu_start: Option<f64>,
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
    /// Sets up the run: resolves the target, signs the key, opens the probe.
    pub(crate) async fn new(plan: Plan) -> anyhow::Result<Run> {
        let target = Target::resolve(&plan.url).await?;
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
        let probe = Probe::new(
            target.clone(),
            plan.gateway_pid,
            plan.database_url.as_deref(),
        );
        let run_id = i64::from(std::process::id()) << 20 | i64::from(nanos_now() & 0xf_ffff);
        let gateway_cpu_start = probe.process().map(|p| p.cpu_s);
        let postgres_cpu_start = plan.gateway_pid.and_then(crate::probe::descendants_cpu_s);
        Ok(Run {
            plan,
            target,
            probe,
            rec: Arc::new(Recorder::new()),
            token: Arc::from(token),
            channel_tokens: Arc::from(channel_tokens),
            run_id,
            gateway_cpu_start,
            postgres_cpu_start,
        })
    }

    /// Runs the plan's scenario.
    pub(crate) async fn execute(&self) -> anyhow::Result<Report> {
        self.target.wait_ready(READY_PATIENCE).await?;
        let sampler = Sampler::spawn(self);
        let report = match self.plan.scenario {
            Scenario::Seed | Scenario::Fanout | Scenario::Rls | Scenario::Soak => {
                stream::run(self).await
            }
            Scenario::Idle => idle::run(self).await,
            Scenario::Cap => cap::run(self).await,
            Scenario::Churn => churn::run(self).await,
            Scenario::Capture => capture::run(self).await,
        };
        sampler.stop().await;
        report
    }

    /// Prints a progress note on stderr (unless quiet).
    pub(crate) fn say(&self, text: &str) {
        if !self.plan.quiet {
            let mut err = std::io::stderr().lock();
            let _written = writeln!(
                err,
                "[{:>6.1}s] {text}",
                self.rec.clock.elapsed().as_secs_f64()
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

/// A population of long-lived clients: connected, joined, then reading until stopped.
#[derive(Debug)]
pub(crate) struct Population {
    tasks: JoinSet<()>,
    /// Clients whose setup (connect, join, presence) finished, well or not.
    settled: Arc<AtomicU64>,
    /// Cancel to make every client close.
    pub(crate) stop: CancellationToken,
    size: usize,
}

/// What each client of a population does after connecting.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    /// Subscribe to changes of the events table.
    pub(crate) changes: bool,
    /// Join with presence and track.
    pub(crate) presence: bool,
    /// Book deliveries of this run against this commit log.
    pub(crate) commits: Option<Arc<CommitLog>>,
}

impl Population {
    /// Starts `size` clients, paced by `--connect-rate` and `--connect-concurrency`.
    pub(crate) fn spawn(run: &Run, size: usize, behaviour: Behaviour) -> Population {
        let settled = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let gate = Arc::new(Semaphore::new(run.plan.connect_concurrency));
        let rate = run.plan.connect_rate;
        let ctx = Arc::new(ClientCtx {
            target: run.target.clone(),
            url: run.target.websocket_url(&run.token),
            rec: Arc::clone(&run.rec),
            token: Arc::clone(&run.token),
            channel_tokens: Arc::clone(&run.channel_tokens),
            run_id: run.run_id,
            heartbeat: run.plan.heartbeat_interval,
            behaviour,
            settled: Arc::clone(&settled),
            stop: stop.clone(),
            total: size,
        });
        let topics: Vec<String> = (0..run.plan.channels.min(size.max(1)))
            .map(|i| run.topic_for(i))
            .collect();
        let starter_stop = stop.clone();
        tasks.spawn(async move {
            let start = tokio::time::Instant::now();
            let mut clients = JoinSet::new();
            for i in 0..size {
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                    tokio::time::sleep_until(due).await;
                }
                let permit = tokio::select! {
                    () = starter_stop.cancelled() => break,
                    // The semaphore is never closed, so acquiring only waits.
                    p = Arc::clone(&gate).acquire_owned() => p.expect("semaphore never closed"),
                };
                let ctx = Arc::clone(&ctx);
                let topic = topics[i % topics.len()].clone();
                clients.spawn(async move { ctx.client(i, topic, permit).await });
            }
            while clients.join_next().await.is_some() {}
        });
        Population {
            tasks,
            settled,
            stop,
            size,
        }
    }

    /// Waits until every client finished its setup, up to `patience`; returns how many did.
    pub(crate) async fn settle(&self, run: &Run, patience: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let settled = self.settled.load(Ordering::Acquire);
            if settled >= self.size as u64 {
                return settled;
            }
            if tokio::time::Instant::now() >= deadline {
                run.say(&format!(
                    "setup still unfinished after {patience:?}: {settled}/{} clients",
                    self.size
                ));
                return settled;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tells every client to close and waits (bounded) for them.
    pub(crate) async fn stop(mut self, patience: Duration) {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(patience, all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Shared by the clients of one population.
#[derive(Debug)]
struct ClientCtx {
    target: Target,
    url: String,
    rec: Arc<Recorder>,
    token: Arc<str>,
    channel_tokens: Arc<[Arc<str>]>,
    run_id: i64,
    heartbeat: Duration,
    behaviour: Behaviour,
    settled: Arc<AtomicU64>,
    stop: CancellationToken,
    total: usize,
}

impl ClientCtx {
    /// One client's life: connect, join (and track), hand the connection slot back, read until
    /// stopped, close.
    async fn client(&self, index: usize, topic: String, permit: tokio::sync::OwnedSemaphorePermit) {
        let rec = &*self.rec;
        let c = &rec.counters;
        c.attempted.fetch_add(1, Ordering::Relaxed);
        let source = self.target.source_for(index, self.total);
        let mut client = match client::connect(&self.target, &self.url, source).await {
            Ok(client) => client,
            Err(e) => {
                book_connect_error(rec, &e);
                self.settled.fetch_add(1, Ordering::Release);
                return;
            }
        };
        c.connected.fetch_add(1, Ordering::Relaxed);
        c.open.fetch_add(1, Ordering::Relaxed);
        let user = format!("user-{index}");
        let spec = JoinSpec {
            topic,
            changes: self.behaviour.changes,
            presence_key: self.behaviour.presence.then(|| user.clone()),
            token: match self.channel_tokens.len() {
                0 => Arc::clone(&self.token),
                n => Arc::clone(&self.channel_tokens[index % n]),
            },
        };
        let joined = client.join(&spec, rec).await;
        if let Err(e) = &joined {
            rec.error(e);
        } else if self.behaviour.presence {
            match client.track(&user, rec).await {
                Ok(()) => {
                    c.presence_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    c.presence_refused.fetch_add(1, Ordering::Relaxed);
                    rec.error(&e);
                }
            }
        }
        drop(permit);
        self.settled.fetch_add(1, Ordering::Release);
        if joined.is_ok() {
            let mut tracker = Tracker::default();
            let deliveries = self
                .behaviour
                .commits
                .as_deref()
                .map(|log| (log, self.run_id, &mut tracker));
            let ended = client
                .run(self.heartbeat, &self.stop, rec, deliveries)
                .await;
            if ended == client::Ended::Stopped {
                client.close(rec).await;
            }
        } else {
            client.close(rec).await;
        }
        c.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Creates (or empties) the events table every subscriber listens to, realtime-enabled.
pub(crate) async fn prepare_events_table(run: &Run) -> anyhow::Result<()> {
    let url = run
        .plan
        .database_url
        .as_deref()
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
                let received = c.received.load(Ordering::Relaxed);
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
                    let line = progress_line(&sample, &rec);
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

fn progress_line(s: &Sample, rec: &Recorder) -> String {
    let c = &rec.counters;
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let mut line = format!(
        "[{:>6.1}s] open {} subscribed {} refused {} errors {} | written {} delivered/s {:.0} p50 {} p99 {} ms",
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
            " | gateway {} MiB {}% cpu",
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

/// The run's result: the shape the issue asks for, plus details.
pub(crate) fn result_json(run: &Run, report: &Report) -> Value {
    let c = &run.rec.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let latency = run.rec.latency();
    let unique = load(&c.unique);
    let lost = report.expected.saturating_sub(unique);
    let latency_ms = if latency.is_empty() {
        json!({"p50": null, "p95": null, "p99": null, "p999": null, "max": null, "mean": null, "samples": 0})
    } else {
        json!({
            "p50": ms(latency.value_at_quantile(0.5)),
            "p95": ms(latency.value_at_quantile(0.95)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "p999": ms(latency.value_at_quantile(0.999)),
            "max": ms(latency.max()),
            "mean": (latency.mean() / 1e3 * 1000.0).round() / 1000.0,
            "samples": latency.len(),
        })
    };
    let kib_per_connection = match (report.rss_baseline_kib, report.rss_loaded_kib) {
        (Some(base), Some(loaded)) if report.connections_for_memory > 0 => {
            let per = (loaded as f64 - base as f64) / report.connections_for_memory as f64;
            json!((per * 100.0).round() / 100.0)
        }
        _ => Value::Null,
    };
    let gateway = run.probe.process();
    let me = ProcStats::read(None);
    let timeline = run.rec.timeline();
    let peak_rss = timeline.iter().filter_map(|s| s.gateway_rss_kib).max();
    let deliveries_per_s = if report.delivery_window_s > 0.0 {
        json!((load(&c.received) as f64 / report.delivery_window_s).round())
    } else {
        Value::Null
    };
    json!({
        "scenario": run.plan.scenario.name(),
        "pass": report.failures.is_empty(),
        "failures": report.failures,
        "clients": {
            "attempted": load(&c.attempted),
            "connected": load(&c.connected),
            "refused": load(&c.refused),
            "errors": load(&c.errors),
            "joins_ok": load(&c.joins_ok),
            "subscribed": load(&c.subscribed),
        },
        "changes_written": report.written,
        "deliveries": {
            "expected": report.expected,
            "received": load(&c.received),
            "lost": lost,
            "duplicated": load(&c.duplicated),
            "out_of_order": load(&c.out_of_order),
            "early": load(&c.early),
            "foreign": load(&c.foreign),
        },
        "latency_ms": latency_ms,
        "deliveries_per_s": deliveries_per_s,
        "gateway": {
            "rss_kib": report.rss_loaded_kib.or(gateway.map(|g| g.rss_kib)),
            "rss_baseline_kib": report.rss_baseline_kib,
            "rss_peak_kib": peak_rss,
            "kib_per_connection": kib_per_connection,
            "pg_connections": run.rec.pg_connections_peak(),
            "cpu_s": gateway.map(|g| ((g.cpu_s - run.gateway_cpu_start.unwrap_or(0.0)) * 100.0).round() / 100.0),
            "open_files": gateway.map(|g| g.fds),
            "postgres_cpu_s": run
                .plan
                .gateway_pid
                .and_then(crate::probe::descendants_cpu_s)
                .zip(run.postgres_cpu_start)
                .map(|(now, start)| ((now - start) * 100.0).round() / 100.0),
            "missing": report.gateway_missing,
        },
        "presence": {
            "enabled": run.plan.presence,
            "tracked": load(&c.presence_ok),
            "refused": load(&c.presence_refused),
            "frames": load(&c.presence_frames),
        },
        "heartbeats": {
            "sent": load(&c.heartbeats),
            "replies": load(&c.heartbeat_replies),
            "missed": load(&c.heartbeats_missed),
        },
        "errors_by_kind": run.rec.error_kinds(),
        "targets": report.targets.iter().map(|(name, value, met)| json!({"name": name, "value": value, "met": met})).collect::<Vec<_>>(),
        "detail": report.detail,
        "loadtest": {
            "cpu_s": me.map(|m| (m.cpu_s * 100.0).round() / 100.0),
            "rss_kib": me.map(|m| m.rss_kib),
            "elapsed_s": (run.rec.clock.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        },
        "plan": run.plan.describe(),
    })
}

/// Failures every client-bearing scenario shares: lost, duplicated, out of order, client
/// errors and refusals.
pub(crate) fn delivery_failures(
    run: &Run,
    report: &Report,
    refusals_expected: bool,
) -> Vec<String> {
    let c = &run.rec.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    let lost = report.expected.saturating_sub(load(&c.unique));
    if lost > 0 {
        failures.push(format!("{lost} deliveries lost"));
    }
    if load(&c.duplicated) > 0 {
        failures.push(format!("{} deliveries duplicated", load(&c.duplicated)));
    }
    if load(&c.out_of_order) > 0 {
        failures.push(format!("{} deliveries out of order", load(&c.out_of_order)));
    }
    if load(&c.errors) > 0 {
        failures.push(format!("{} client errors", load(&c.errors)));
    }
    if !refusals_expected && load(&c.refused) > 0 {
        failures.push(format!("{} connections refused", load(&c.refused)));
    }
    failures
}
