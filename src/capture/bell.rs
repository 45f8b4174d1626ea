//! The bell's rest: while changes flow without a break, nobody needs the bell.
//!
//! Under sustained load a node reads the outbox at its own pace, every 20 ms at most
//! ([`super::schedule::Pace`]), and every bell that rings meanwhile only repeats what that read
//! will find. Each bell still costs: the writer's pull and `NOTIFY` (the cluster-wide
//! notification lock, a signal to every listening backend) and, in each node's `LISTEN` backend,
//! a wake-up to read the queue (about 26 µs per notification; at 1,000 changes/s, 2.6 % of a core
//! per node).
//!
//! So while a node reads at its sustained pace it holds, on its `LISTEN` connection, the bell's
//! advisory lock (class `1381254999`, key 0) shared, and tries to hold key 1 exclusively:
//!
//! - key 0: a committing writer rings only when it takes that lock exclusively
//!   (`realtime.ring_bell()`), which it cannot while any node rests the bell: it commits without
//!   a notification, as it does when another writer's bell is ringing;
//! - key 1: a transaction's first captured change tries it shared for an instant
//!   (`realtime.capture_change()`, migration 0034), and while a node holds it the transaction
//!   does not pull the bell at all: no deferred trigger queued, none run at commit. Only one node
//!   can hold it; the others rest with key 0 alone, and try for key 1 again now and then.
//!
//! The node gives both back when a read finds nothing, then follows up with another read: a
//! writer that skipped its bell just before is found by it.
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
/// A resting node without key 1 (another node has it) tries for it again this often.
const RETRY_ADVERTISE: Duration = Duration::from_millis(250);

/// Whether this node rests the bell.
#[derive(Debug, Default)]
pub(super) struct Rest {
    /// Key 0 held shared: writers that pulled ring nothing.
    held: bool,
    /// Key 1 held exclusively: writers do not pull.
    advertised: bool,
    /// When key 1 was last tried.
    tried: Option<tokio::time::Instant>,
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
        if sustained && self.held {
            if !self.advertised && self.tried.is_none_or(|t| t.elapsed() >= RETRY_ADVERTISE) {
                self.tried = Some(tokio::time::Instant::now());
                (self.advertised,) = ask(
                    conn,
                    sqlx::query_as("select pg_catalog.pg_try_advisory_lock(1381254999, 1)"),
                )
                .await?;
            }
            return Ok(false);
        }
        if sustained == self.held {
            return Ok(false);
        }
        if sustained {
            // Try, never wait: a writer ringing right now holds key 0 for its commit, and one
            // starting a transaction holds key 1 shared for an instant. Key 1 only with key 0.
            self.tried = Some(tokio::time::Instant::now());
            let (held, advertised): (bool, bool) = ask(
                conn,
                sqlx::query_as(
                    "select rest, case when rest \
                         then pg_catalog.pg_try_advisory_lock(1381254999, 1) else false end \
                     from (select pg_catalog.pg_try_advisory_lock_shared(1381254999, 0) as rest) s",
                ),
            )
            .await?;
            (self.held, self.advertised) = (held, advertised);
        } else {
            let _: (bool, Option<bool>) = ask(
                conn,
                sqlx::query_as(
                    "select pg_catalog.pg_advisory_unlock_shared(1381254999, 0), \
                            case when $1 then pg_catalog.pg_advisory_unlock(1381254999, 1) end",
                )
                .bind(self.advertised),
            )
            .await?;
            (self.held, self.advertised) = (false, false);
        }
        metrics::gauge!("gateway_listener_bell_resting").set(f64::from(u8::from(self.held)));
        Ok(!sustained)
    }

    /// The `LISTEN` connection was lost, and its session's rest with it.
    pub(super) fn lost(&mut self) {
        (self.held, self.advertised, self.tried) = (false, false, None);
        metrics::gauge!("gateway_listener_bell_resting").set(0.0);
    }
}

/// Runs `query` on the `LISTEN` connection within [`PATIENCE`].
async fn ask<T>(
    conn: &mut PgListener,
    query: sqlx::query::QueryAs<'_, sqlx::Postgres, T, sqlx::postgres::PgArguments>,
) -> Result<T, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    tokio::time::timeout(PATIENCE, query.fetch_one(conn))
        .await
        .map_err(|_| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the listener connection did not answer about the bell's rest",
            ))
        })?
}
