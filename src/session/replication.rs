//! `config.broadcast.replication_ready` (docs/protocol.md 6.6): a channel that asks for it hears
//! `Replication connection established` once this node's change stream runs (the listener has
//! its outbox cursor and its LISTEN connection), at once if it already does. If the stream does
//! not come up within `REPLICATION_READY_TIMEOUT`, the channel gets a `system` error and is
//! closed.
//!
//! Nothing waits in a task of its own: a waiting channel holds a deadline, and the session's read
//! loop wakes on the stream's readiness (a `watch`) or on the earliest deadline, so the wait
//! ends with the channel or the session.

use serde_json::json;

use super::Session;

/// Text of the `system` message once the change stream runs.
const ESTABLISHED: &str = "Replication connection established";

/// Text of the `system` error when it did not come up in time.
const NOT_IN_TIME: &str = "Replication connection was not established in time";

impl Session {
    /// After a successful join of `topic` that asked for `replication_ready`: confirms at once
    /// when the change stream runs, or makes the channel wait for it.
    pub(super) fn await_replication(&mut self, topic: &str) {
        let ready = *self.services.change_stream.borrow();
        if ready {
            self.replication_established(topic);
            return;
        }
        let deadline = tokio::time::Instant::now() + self.services.config.replication_ready_timeout;
        if let Some(joined) = self.channels.get_mut(topic) {
            joined.replication_deadline = Some(deadline);
        }
    }

    /// The earliest deadline of the channels waiting for the change stream.
    pub(super) fn next_replication_deadline(&self) -> Option<tokio::time::Instant> {
        self.channels
            .values()
            .filter_map(|joined| joined.replication_deadline)
            .min()
    }

    /// The change stream runs: every waiting channel is told.
    pub(super) fn replication_up(&mut self) {
        let waiting: Vec<String> = self
            .channels
            .values()
            .filter(|joined| joined.replication_deadline.is_some())
            .map(|joined| joined.topic.to_string())
            .collect();
        for topic in waiting {
            self.replication_established(&topic);
        }
    }

    /// Closes the waiting channels whose deadline has passed: a `system` error, then
    /// `phx_close`; their registry rows end `replication_timeout`.
    pub(super) fn replication_timed_out(&mut self, now: tokio::time::Instant) {
        let late: Vec<String> = self
            .channels
            .values()
            .filter(|joined| joined.replication_deadline.is_some_and(|at| at <= now))
            .map(|joined| joined.topic.to_string())
            .collect();
        for topic in late {
            let Some(joined) = self.leave(&topic, "replication_timeout") else {
                continue;
            };
            metrics::counter!("gateway_session_replication_timeouts_total").increment(1);
            tracing::debug!(topic = %topic, "change stream not ready in time");
            let jr = joined.join_ref.as_deref();
            let system = json!({"extension": "system", "status": "error",
                                "message": NOT_IN_TIME, "channel": joined.name()});
            self.push_json(jr, None, &topic, "system", &system);
            self.push_json(jr, jr, &topic, "phx_close", &json!({}));
        }
    }

    fn replication_established(&mut self, topic: &str) {
        let Some(joined) = self.channels.get_mut(topic) else {
            return;
        };
        joined.replication_deadline = None;
        let system = json!({"extension": "system", "status": "ok",
                            "message": ESTABLISHED, "channel": joined.name()});
        let jr = joined.join_ref.clone();
        self.push_json(jr.as_deref(), None, topic, "system", &system);
    }
}
