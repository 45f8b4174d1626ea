//! Token settings beyond the shared secret: the JWKS for RS256/ES256 keys and the audience.

use clap::Args;

/// Where asymmetric keys come from and which audience tokens must name.
#[derive(Debug, Clone, Default, Args)]
pub struct JwtSettings {
    /// JWKS holding the public keys RS256/ES256 tokens are verified with: a file path or an
    /// `http://` URL (`https://` is not supported yet). Read at start (start fails when it is
    /// unreadable or has no usable key), re-read every 10 minutes and when a token names an
    /// unknown `kid` (at most once a minute). Unset: only HS256/384/512 with --jwt-secret.
    #[arg(long = "jwks", env = "JWKS")]
    pub jwks: Option<String>,

    /// When set, a token's `aud` (a string, or an array of strings) must contain this value.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl JwtSettings {
    /// Checks the values on their own; the JWKS itself is read when the gateway starts.
    pub(super) fn check(&self) -> Result<(), &'static str> {
        match &self.jwks {
            Some(s) if s.trim().is_empty() => return Err("--jwks must not be empty"),
            Some(s) if s.starts_with("https://") => {
                return Err("--jwks: https:// URLs are not supported yet; use a file or http://")
            }
            _ => {}
        }
        if matches!(&self.jwt_audience, Some(a) if a.trim().is_empty()) {
            return Err("--jwt-audience must not be empty");
        }
        Ok(())
    }
}
