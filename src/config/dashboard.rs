//! Admin dashboard settings: the share of the connection cap from which the cluster is in its
//! warning state, the share below which the warning ends (the watcher re-arms), and how often
//! the watcher checks and the dashboard's charts get a point.

use std::time::Duration;

use clap::Args;

/// When the connection count is a warning, and how often it is looked at.
#[derive(Debug, Clone, Args)]
pub struct DashboardSettings {
    /// Share of --max-connections, in percent (2–100, default 80), from which the cluster's open
    /// connections are a warning: the admin dashboard shows its warning state, and the node that
    /// sees the count cross it logs a warning and audits `cap_threshold_crossed`, once per
    /// crossing.
    #[arg(long, env = "ADMIN_WARN_PERCENT", default_value_t = 80)]
    pub admin_warn_percent: u8,

    /// Share of --max-connections, in percent (default 70; at least 1, below
    /// --admin-warn-percent), under which the warning ends and the next crossing is recorded
    /// again; the gap keeps a count that hovers around the threshold from recording a crossing
    /// at every check.
    #[arg(long, env = "ADMIN_CLEAR_PERCENT", default_value_t = 70)]
    pub admin_clear_percent: u8,

    /// How often the connection count is checked against the thresholds and the admin
    /// dashboard gets a new point (e.g. `1s`, the default; 100ms–1m).
    #[arg(long, env = "ADMIN_SAMPLE_INTERVAL", default_value = "1s", value_parser = super::parse_duration)]
    pub admin_sample_interval: Duration,
}

impl Default for DashboardSettings {
    fn default() -> DashboardSettings {
        DashboardSettings {
            admin_warn_percent: 80,
            admin_clear_percent: 70,
            admin_sample_interval: Duration::from_secs(1),
        }
    }
}

impl DashboardSettings {
    /// Checks the values and their relation.
    pub(super) fn check(&self) -> Result<(), &'static str> {
        if !(2..=100).contains(&self.admin_warn_percent) {
            return Err("--admin-warn-percent must be between 2 and 100");
        }
        if self.admin_clear_percent == 0 || self.admin_clear_percent >= self.admin_warn_percent {
            return Err("--admin-clear-percent must be at least 1 and below --admin-warn-percent");
        }
        if self.admin_sample_interval < Duration::from_millis(100)
            || self.admin_sample_interval > Duration::from_secs(60)
        {
            return Err("--admin-sample-interval must be between 100ms and 1m");
        }
        Ok(())
    }
}
