//! The bell probe: PostgreSQL's own commit-to-LISTEN latency on this machine, as a floor for
//! the gateway's.
//!
//! The gateway's capture trigger rings `NOTIFY realtime_gateway` when a writer commits. The probe
//! LISTENs on that channel from its own connection, on a thread of its own, and timestamps each
//! bell on the run's clock. The writer is sequential, so a bell belongs to the last row whose
//! INSERT had been sent when it arrived; its latency is bell instant − that row's commit-return
//! instant. The difference between this and the delivery latency is what the gateway (outbox
//! read, routing, sockets) and the clients' runtime add.

use std::sync::Arc;

use anyhow::Context;
use hdrhistogram::Histogram;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::record::{CommitLog, Recorder};

/// The channel the gateway's capture trigger notifies.
const BELL_CHANNEL: &str = "realtime_gateway";

/// Starts the probe on its own thread. The first receiver fires once it is listening; the
/// second gives the bell instants when `stop` is cancelled.
pub(crate) fn spawn_thread(
    url: String,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<anyhow::Result<Vec<u64>>>,
) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("bell-probe".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("bell probe runtime")
                .and_then(|rt| rt.block_on(listen(&url, &rec, &stop, ready_tx)));
            // The receiver is gone only if the run was abandoned; nothing to tell then.
            let _sent = done_tx.send(result);
        });
    if let Err(e) = spawned {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _sent = tx.send(Err(anyhow::anyhow!(
            "cannot start the bell probe thread: {e}"
        )));
        return (ready_rx, rx);
    }
    (ready_rx, done_rx)
}

async fn listen(
    url: &str,
    rec: &Recorder,
    stop: &CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Vec<u64>> {
    // Named, so pg_stat_activity tells it apart from the gateway's sessions.
    let options: sqlx::postgres::PgConnectOptions = url.parse().context("database url")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.application_name("loadtest bell"));
    let mut listener = PgListener::connect_with(&pool)
        .await
        .context("bell probe connect")?;
    listener
        .listen(BELL_CHANNEL)
        .await
        .context("bell probe listen")?;
    // The caller may have stopped waiting; the probe runs regardless.
    let _ready = ready.send(());
    let mut bells = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            bell = listener.recv() => {
                bell.context("bell probe connection lost")?;
                bells.push(rec.clock.now_ns());
            }
        }
    }
    Ok(bells)
}

/// Bell latencies in microseconds, and how many bells came before the writer saw its commit
/// return (booked as 0).
pub(crate) fn latencies(bells: &[u64], log: &CommitLog) -> (Histogram<u64>, u64) {
    let mut hist = crate::record::histogram();
    let mut early = 0;
    let mut last: Option<u64> = None;
    for &bell in bells {
        // The largest n whose INSERT was sent at or before the bell (sends are monotonic in n).
        let (mut lo, mut hi) = (0u64, log.capacity());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if log.sent_ns(mid).is_some_and(|s| s <= bell) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let Some(n) = lo.checked_sub(1) else {
            continue;
        };
        if last == Some(n) {
            continue;
        }
        last = Some(n);
        if let Some(commit) = log.commit_ns(n) {
            if bell < commit {
                early += 1;
            }
            hist.saturating_record((bell.saturating_sub(commit) / 1000).max(1));
        }
    }
    (hist, early)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bells_are_matched_to_the_last_row_sent() {
        let log = CommitLog::new(3);
        log.sent(0, 1_000_000);
        log.committed(0, 2_000_000);
        log.sent(1, 10_000_000);
        log.committed(1, 11_000_000);
        // Row 0's bell 1 ms after its commit, a duplicate, then row 1's bell before its commit
        // returned.
        let (h, early) = latencies(&[3_000_000, 3_500_000, 10_500_000], &log);
        assert_eq!(h.len(), 2);
        assert_eq!(early, 1);
        assert_eq!(h.max() / 1000, 1);
    }
}
