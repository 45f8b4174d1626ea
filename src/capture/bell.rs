//! The bell's rest: while changes flow without a break, nobody needs the bell.
//!
//! Under sustained load a node reads the outbox at its own pace, every 20 ms at most
//! ([`super::schedule::Pace`]), and every bell that rings meanwhile only repeats what that read
//! will find. Each bell still costs: the writer's `NOTIFY` (the cluster-wide notification lock,
//! a signal to every listening backend) and, in each node's `LISTEN` backend, a wake-up to read
//! the queue (about 26 µs per notification; at 1,000 changes/s, 2.6 % of a core per node).
//!
//! So while a node reads at its sustained pace it holds the bell's advisory lock (class
//! `1381254999`, key 0) shared, on its `LISTEN` connection. A committing writer rings only when
//! it takes that lock exclusively (`realtime.ring_bell()`, migration 0023), which it cannot
//! while any node rests the bell: it commits without a notification, as it does when another
//! writer's bell is ringing. The node gives the rest back when a read finds nothing, then
//! follows up with another read: a writer that skipped its bell just before is found by it.
//!
//! Nothing depends on it. A node that does not read at its pace while another rests the bell
//! (it has just started, or its last read came up empty) is still read by its poll
//! (`--change-poll-interval`) and its follow-ups, and at that rate of changes its next reads
//! find rows and bring it to the same pace. A lost `LISTEN` connection takes the rest with its
//! session.

use std::time::Duration;

use sqlx::postgres::PgListener;

/// How long taking or giving back the rest may take before the connection counts as lost.
const PATIENCE: Duration = Duration::from_secs(2);

/// Whether this node rests the bell.
#[derive(Debug, Default)]
pub(super) struct Rest {
    held: bool,
}

impl Rest {
    /// Takes the rest when `sustained` and gives it back when not, on the `LISTEN` connection.
    /// Returns whether it was given back now (the caller then follows up with a read).
    ///
    /// # Errors
    /// When the connection failed or did not answer in time: it is to be treated as lost.
    pub(super) async fn follow(
        &mut self,
        conn: &mut PgListener,
        sustained: bool,
    ) -> Result<bool, sqlx::Error> {
        if sustained == self.held {
            return Ok(false);
        }
        let sql = if sustained {
            // Try, never wait: a writer ringing right now holds the lock for its commit.
            "select pg_catalog.pg_try_advisory_lock_shared(1381254999, 0)"
        } else {
            "select pg_catalog.pg_advisory_unlock_shared(1381254999, 0)"
        };
        let answer = tokio::time::timeout(PATIENCE, sqlx::query_scalar(sql).fetch_one(conn))
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the listener connection did not answer about the bell's rest",
                ))
            })?;
        let taken: bool = answer?;
        self.held = sustained && taken;
        metrics::gauge!("gateway_listener_bell_resting").set(f64::from(u8::from(self.held)));
        Ok(!sustained)
    }

    /// The `LISTEN` connection was lost, and its session's rest with it.
    pub(super) fn lost(&mut self) {
        self.held = false;
        metrics::gauge!("gateway_listener_bell_resting").set(0.0);
    }
}
