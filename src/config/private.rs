//! Private-channel settings: whether public channels are refused, and how long the database may
//! take to authorize a private channel (docs/protocol.md 7.5).

use std::time::Duration;

use clap::Args;

/// How private channels are authorized.
#[derive(Debug, Clone, Args)]
pub struct PrivateSettings {
    /// Refuse public channels: a join without `config.private: true` gets `PrivateOnly: This
    /// project only allows private channels` (default false).
    #[arg(long, env = "PRIVATE_CHANNELS_ONLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub private_channels_only: bool,

    /// Longest the database may take to evaluate the row-level-security policies that authorize
    /// a private channel (taking a pool connection included; e.g. `5s`). A check that takes
    /// longer refuses the join, the send or the REST request.
    #[arg(long, env = "AUTHORIZATION_TIMEOUT", default_value = "5s", value_parser = super::parse_duration)]
    pub authorization_timeout: Duration,
}

impl Default for PrivateSettings {
    fn default() -> PrivateSettings {
        PrivateSettings {
            private_channels_only: false,
            authorization_timeout: Duration::from_secs(5),
        }
    }
}

impl PrivateSettings {
    /// Checks the values on their own.
    pub(super) fn check(&self) -> Result<(), &'static str> {
        if self.authorization_timeout < Duration::from_millis(10) {
            return Err("--authorization-timeout must be at least 10ms");
        }
        if self.authorization_timeout > Duration::from_secs(60) {
            return Err("--authorization-timeout must be at most 60s");
        }
        Ok(())
    }
}
