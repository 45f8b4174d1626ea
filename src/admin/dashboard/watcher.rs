//! The connection-cap watcher: at every sample it counts the cluster's open connections (the
//! taken rows of `realtime.connection_slots`) and compares the count with the warning
//! thresholds in the row every node shares (`realtime.cap_alert`, migration 0022).
//!
//! A count at or above `--admin-warn-percent` of the cap while the row is armed is a crossing:
//! the same statement disarms the row and appends `cap_threshold_crossed` to the audit log, and
//! the node whose statement did it logs a warning and counts it
//! (`gateway_admin_cap_crossings_total`). Other nodes' statements, waiting on the row's lock,
//! find it disarmed and record nothing, so each crossing is recorded once in the cluster. A
//! count below `--admin-clear-percent` re-arms the row (logged at info); between the two the
//! state holds, so a count hovering at the threshold does not record a crossing per check.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The audit-log kind of a crossing.
pub const CROSSED: &str = "cap_threshold_crossed";

/// The cap and the two thresholds, in percent of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The connection cap across the cluster.
    pub cap: u32,
    /// From this share of the cap the cluster is in its warning state.
    pub warn_percent: u8,
    /// Under this share the warning ends and the watcher re-arms.
    pub clear_percent: u8,
}

impl Thresholds {
    /// The fewest connections that are a warning: `warn_percent` of the cap, rounded up.
    pub fn warn_at(&self) -> u64 {
        (u64::from(self.cap) * u64::from(self.warn_percent)).div_ceil(100)
    }

    /// The most connections that re-arm the watcher: below `clear_percent` of the cap.
    pub fn clear_at(&self) -> u64 {
        (u64::from(self.cap) * u64::from(self.clear_percent)).div_ceil(100) - 1
    }
}

/// What changed at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The count crossed the warning threshold, and this node recorded it.
    Crossed,
    /// The count fell below the clear threshold, and this node re-armed the watcher.
    Rearmed,
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Open connections across the cluster.
    pub in_use: i64,
    /// Whether the cluster is in its warning state (crossed, and not yet back below the clear
    /// threshold).
    pub warning: bool,
    /// When the state last changed.
    pub since: DateTime<Utc>,
    /// What this check changed, if anything.
    pub transition: Option<Transition>,
}

/// Makes sure the shared row exists (an operator may have deleted it); a new row is armed.
///
/// # Errors
/// When the database cannot be reached.
pub async fn prepare(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("insert into realtime.cap_alert (id) values (true) on conflict (id) do nothing")
        .execute(pool)
        .await?;
    Ok(())
}

/// Counts the cluster's connections and moves the shared state, in one statement: a crossing
/// disarms the row and is audited in it; a fall below the clear threshold re-arms it.
///
/// # Errors
/// When the database cannot be reached.
pub async fn check(
    pool: &PgPool,
    node_id: &str,
    thresholds: Thresholds,
) -> Result<Check, sqlx::Error> {
    let (in_use, crossed, rearmed, warning, since): (i64, bool, bool, bool, DateTime<Utc>) =
        sqlx::query_as(
            "with usage as ( \
                 select count(*)::int as in_use from realtime.connection_slots \
                 where node_id is not null), \
             crossed as ( \
                 update realtime.cap_alert a \
                 set armed = false, changed_at = now(), changed_by = $1, in_use = u.in_use, cap = $2 \
                 from usage u \
                 where a.armed and u.in_use::int8 * 100 >= $2::int8 * $3 \
                 returning a.changed_at), \
             rearmed as ( \
                 update realtime.cap_alert a \
                 set armed = true, changed_at = now(), changed_by = $1, in_use = u.in_use, cap = $2 \
                 from usage u \
                 where not a.armed and u.in_use::int8 * 100 < $2::int8 * $4 \
                 returning a.changed_at), \
             audited as ( \
                 insert into realtime.audit_log (kind, node_id, detail) \
                 select $5, $1, jsonb_build_object('in_use', u.in_use, 'cap', $2::int, \
                        'warn_percent', $3::int, 'clear_percent', $4::int) \
                 from usage u, crossed \
                 returning id) \
             select u.in_use::int8, \
                    exists (select from crossed), \
                    exists (select from rearmed), \
                    case when exists (select from crossed) then true \
                         when exists (select from rearmed) then false \
                         else coalesce((select not armed from realtime.cap_alert), false) end, \
                    coalesce((select changed_at from crossed), (select changed_at from rearmed), \
                             (select changed_at from realtime.cap_alert), now()) \
             from usage u",
        )
        .bind(node_id)
        .bind(i32::try_from(thresholds.cap).unwrap_or(i32::MAX))
        .bind(i32::from(thresholds.warn_percent))
        .bind(i32::from(thresholds.clear_percent))
        .bind(CROSSED)
        .fetch_one(pool)
        .await?;
    let transition = if crossed {
        Some(Transition::Crossed)
    } else if rearmed {
        Some(Transition::Rearmed)
    } else {
        None
    };
    Ok(Check {
        in_use,
        warning,
        since,
        transition,
    })
}

/// Logs and counts what `check` changed.
pub fn report(check: &Check, thresholds: Thresholds) {
    match check.transition {
        Some(Transition::Crossed) => {
            metrics::counter!("gateway_admin_cap_crossings_total").increment(1);
            tracing::warn!(
                in_use = check.in_use,
                cap = thresholds.cap,
                warn_percent = thresholds.warn_percent,
                "connections crossed the warning threshold of the cap"
            );
        }
        Some(Transition::Rearmed) => tracing::info!(
            in_use = check.in_use,
            cap = thresholds.cap,
            clear_percent = thresholds.clear_percent,
            "connections back below the clear threshold of the cap"
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_name_the_counts_that_cross_and_clear() {
        let small = Thresholds {
            cap: 5,
            warn_percent: 80,
            clear_percent: 70,
        };
        assert_eq!(small.warn_at(), 4);
        // Below 3.5 connections: 3.
        assert_eq!(small.clear_at(), 3);
        let default = Thresholds {
            cap: 200,
            warn_percent: 80,
            clear_percent: 70,
        };
        assert_eq!(default.warn_at(), 160);
        assert_eq!(default.clear_at(), 139);
        let one = Thresholds {
            cap: 1,
            warn_percent: 100,
            clear_percent: 1,
        };
        assert_eq!(one.warn_at(), 1);
        assert_eq!(one.clear_at(), 0);
    }
}
