//! Shutdown: one cancellation token every task hears, and a tracker that shutdown waits on.
//!
//! Sessions and background tasks are spawned on the tracker under a name, so that a shutdown
//! that overruns its deadline can say which tasks were still running. Tasks that must outlive
//! the others — the registry writer records what closing sessions report — are spawned on the
//! final tracker ([`Shutdown::spawn_final`]) and awaited after the rest
//! ([`Shutdown::wait_final`]). No task is spawned outside these two trackers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap-to-clone handle on the gateway's lifetime.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    /// Tasks awaited after every task of `tracker` has finished.
    final_tracker: TaskTracker,
    /// Names of tracked tasks still running, by an id, for the overrun report.
    running: Arc<DashMap<u64, &'static str>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Shutdown {
    /// A new, not yet triggered, shutdown.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the shutdown: every task's `cancelled()` completes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when shutdown starts.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// A child token, cancelled with this shutdown or on its own (one per session).
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Spawns `task` on the tracker under `name`.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.track(name, task))
    }

    /// Spawns `task` on the final tracker under `name`: [`Shutdown::wait`] does not wait for
    /// it, [`Shutdown::wait_final`] does. For tasks that serve the others while they stop.
    pub fn spawn_final<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.final_tracker.track_future(task);
        // Not an async block, for the reason given in [`Shutdown::track`].
        tokio::spawn(futures_util::FutureExt::map(task, move |output| {
            tracing::debug!(task = name, "final task ended");
            output
        }))
    }

    /// Waits up to `timeout` for the tasks of the final tracker; logs when they overran.
    /// Returns whether all finished.
    pub async fn wait_final(&self, timeout: Duration) -> bool {
        self.final_tracker.close();
        let done = tokio::time::timeout(timeout, self.final_tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!("final tasks still running at shutdown deadline");
        }
        done
    }

    /// Tracks `task` under `name` without spawning it: shutdown waits for it like a spawned
    /// task (a session runs in the task its connection already has).
    pub fn track<F>(&self, name: &'static str, task: F) -> impl Future<Output = F::Output>
    where
        F: Future,
    {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.running.insert(id, name);
        let running = Running {
            names: Arc::clone(&self.running),
            id,
        };
        // Not an async block: one that moved `task` in and awaited it would hold it twice
        // (as its capture, then as what it awaits), and a session's task lives as long as
        // its connection.
        self.tracker
            .track_future(futures_util::FutureExt::map(task, move |output| {
                drop(running);
                output
            }))
    }

    /// Waits up to `timeout` for every tracked task to finish; logs the names of stragglers.
    /// Returns whether all finished.
    pub async fn wait(&self, timeout: Duration) -> bool {
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        let mut names: Vec<&'static str> = self.running.iter().map(|e| *e.value()).collect();
        names.sort_unstable();
        tracing::warn!(?names, "tasks still running at shutdown deadline");
        false
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("received sigint, shutting down"),
        () = terminate => tracing::info!("received sigterm, shutting down"),
    }
}

/// Removes a tracked task's name when it ends, panics included.
struct Running {
    names: Arc<DashMap<u64, &'static str>>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.names.remove(&self.id);
        crate::room::give_back_shared(&self.names);
    }
}
