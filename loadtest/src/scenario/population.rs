//! A population of long-lived clients: connected (to the run's nodes in turn), joined, then
//! reading until stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{book_connect_error, Run};
use crate::client::{self, JoinSpec};
use crate::record::{CommitLog, Recorder, Tracker};
use crate::target::Target;

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
    /// Writers the rows come from (each commits its own rows in order).
    pub(crate) writers: usize,
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
            nodes: run
                .targets
                .iter()
                .map(|t| (t.clone(), t.websocket_path(&run.token)))
                .collect(),
            rec: Arc::clone(&run.rec),
            token: Arc::clone(&run.token),
            channel_tokens: Arc::clone(&run.channel_tokens),
            run_id: run.run_id,
            heartbeat: run.plan.heartbeat_interval,
            behaviour,
            settled: Arc::clone(&settled),
            stop: stop.clone(),
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
    /// Each node and the upgrade path its clients ask for.
    nodes: Vec<(Target, String)>,
    rec: Arc<Recorder>,
    token: Arc<str>,
    channel_tokens: Arc<[Arc<str>]>,
    run_id: i64,
    heartbeat: Duration,
    behaviour: Behaviour,
    settled: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl ClientCtx {
    /// One client's life: connect, join (and track), hand the connection slot back, read until
    /// stopped, close.
    async fn client(&self, index: usize, topic: String, permit: tokio::sync::OwnedSemaphorePermit) {
        let rec = &*self.rec;
        let c = &rec.counters;
        c.attempted.fetch_add(1, Ordering::Relaxed);
        let (target, path) = &self.nodes[index % self.nodes.len()];
        let source = target.source_for(index);
        let mut client = match client::connect(target, path, source).await {
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
            let mut tracker = Tracker::new(index, self.behaviour.writers);
            let commits = self
                .behaviour
                .commits
                .as_deref()
                .map(|log| (log, self.run_id));
            let ended = client
                .run(self.heartbeat, &self.stop, rec, &mut tracker, commits)
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
