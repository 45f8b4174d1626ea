//! Token settings beyond the shared secret: the JWKS for RS256/ES256 keys and the audience.

use std::path::PathBuf;

use clap::Args;

/// Where asymmetric keys come from and which audience tokens must name.
#[derive(Debug, Clone, Default, Args)]
pub struct JwtSettings {
    /// JWKS holding the public keys RS256/ES256 tokens are verified with: a file path, or an
    /// `http://` or `https://` URL (e.g. `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`).
    /// Read at start (start fails when it is unreadable or has no usable key), re-read every 10
    /// minutes and when a token names an unknown `kid` (at most once a minute). Unset: only
    /// HS256/384/512 with --jwt-secret.
    #[arg(long = "jwks", env = "JWKS")]
    pub jwks: Option<String>,

    /// PEM file of extra CA certificates an `https://` --jwks server may be signed by (a private
    /// PKI), trusted besides the well-known CAs built into the gateway. Unset: only those.
    #[arg(long = "jwks-ca-file", env = "JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,

    /// When set, a token's `aud` (a string, or an array of strings) must contain this value.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl JwtSettings {
    /// Checks the values on their own; the JWKS itself is read when the gateway starts.
    pub(super) fn check(&self) -> Result<(), &'static str> {
        match &self.jwks {
            Some(s) if s.trim().is_empty() => return Err("--jwks must not be empty"),
            _ => {}
        }
        let https = self
            .jwks
            .as_deref()
            .is_some_and(|s| s.starts_with("https://"));
        if self.jwks_ca_file.is_some() && !https {
            return Err("--jwks-ca-file needs an https:// --jwks URL");
        }
        if matches!(&self.jwt_audience, Some(a) if a.trim().is_empty()) {
            return Err("--jwt-audience must not be empty");
        }
        Ok(())
    }
}
