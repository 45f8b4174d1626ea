//! Delivery diagnostics settings: how much of what it routed each node remembers for the admin
//! API's diagnostics (`/admin/api/diagnostics/...`).

use clap::Args;

/// How many recent changes and broadcasts are kept.
#[derive(Debug, Clone, Args)]
pub struct DiagnosticsSettings {
    /// Changes remembered per table, with what became of each for every subscriber on this node
    /// (delivered, filtered, refused by row-level security, dropped), for the admin API's
    /// delivery diagnostics (default 64; 0 keeps none).
    #[arg(long, env = "TRACE_CHANGES_PER_TABLE", default_value_t = 64)]
    pub trace_changes_per_table: usize,

    /// Broadcasts remembered per channel with members on this node, with their counts
    /// (default 16; 0 keeps none).
    #[arg(long, env = "TRACE_BROADCASTS_PER_CHANNEL", default_value_t = 16)]
    pub trace_broadcasts_per_channel: usize,
}

impl Default for DiagnosticsSettings {
    fn default() -> DiagnosticsSettings {
        DiagnosticsSettings {
            trace_changes_per_table: 64,
            trace_broadcasts_per_channel: 16,
        }
    }
}

impl DiagnosticsSettings {
    /// Checks the values on their own.
    pub(super) fn check(&self) -> Result<(), &'static str> {
        if self.trace_changes_per_table > 10_000 {
            return Err("--trace-changes-per-table must be at most 10000");
        }
        if self.trace_broadcasts_per_channel > 1_000 {
            return Err("--trace-broadcasts-per-channel must be at most 1000");
        }
        Ok(())
    }
}
