//! Local mode: with no `DATABASE_URL`, a private PostgreSQL cluster under the data folder, a
//! generated JWT secret kept beside it, and ready-to-use `anon` and `service_role` keys.
//!
//! The cluster accepts loopback TCP connections only with its superuser's password
//! (`scram-sha-256`), generated on first start and kept in `<data dir>/pg_password` (mode 0600);
//! the database URL the gateway prints carries it. It has no Unix socket.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::config::Config;
use crate::error::Error;
use crate::pg::embedded::{Cluster, Running, Tuning};

/// Keys stay valid for ten years, like the keys of local Supabase tooling.
const KEY_TTL_SECS: i64 = 10 * 365 * 24 * 3600;

/// The embedded cluster of a local-mode gateway; stops it when stopped or dropped.
#[derive(Debug)]
pub struct LocalCluster {
    running: Option<Running>,
}

impl LocalCluster {
    /// Stops the cluster and waits for it to exit (a fast shutdown given 30 s).
    ///
    /// # Errors
    /// When the server does not stop in time.
    pub fn stop(self) -> Result<(), Error> {
        self.stop_within(std::time::Duration::from_secs(30))
    }

    /// Stops the cluster and waits for it to exit: a fast shutdown given `patience`, then an
    /// immediate one ([`Running::stop_within`]).
    ///
    /// # Errors
    /// When the server does not stop in time.
    pub fn stop_within(mut self, patience: std::time::Duration) -> Result<(), Error> {
        match self.running.take() {
            Some(running) => running
                .stop_within(patience)
                .map_err(|e| Error::Pg(e.into())),
            None => Ok(()),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            if let Err(e) = running.stop() {
                tracing::error!(error = %e, "cannot stop the embedded postgres");
            }
        }
    }
}

/// What a local-mode start tells the user.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Key for browsers (role `anon`).
    pub anon: String,
    /// Key for trusted servers (role `service_role`).
    pub service_role: String,
}

/// Fills in what local mode provides: when `config` has no database URL, starts the embedded
/// cluster (initialising it on first run) and points `config` at it; when it has no JWT secret,
/// loads or generates one under the data folder. Returns the cluster guard (if one was started)
/// and the keys signed with the secret.
///
/// # Errors
/// When the cluster cannot be started or the data folder cannot be written.
pub async fn prepare(config: &mut Config) -> Result<(Option<LocalCluster>, Keys), Error> {
    let mut guard = None;
    if config.database_url.is_none() {
        let pgdata = config.data_dir.join("pg");
        let password = load_or_create_secret(&config.data_dir, "pg_password")?;
        let (cluster, created) = tokio::task::spawn_blocking(move || -> Result<(Running, bool), Error> {
            let mut cluster = Cluster::new(&pgdata).map_err(|e| Error::Pg(e.into()))?;
            let created = !cluster.is_initialized();
            if created {
                tracing::info!(pgdata = %cluster.pgdata().display(), "creating the embedded postgres cluster");
            }
            cluster.init().map_err(|e| Error::Pg(e.into()))?;
            cluster
                .require_password(&password)
                .map_err(|e| Error::Pg(e.into()))?;
            let mut running = cluster
                .start(&Tuning::local())
                .map_err(|e| Error::Pg(e.into()))?;
            // The server has a process group of its own (terminal signals reach the gateway
            // only): should the gateway be killed outright, the watchdog stops it.
            if let Err(e) = running.guard(cluster.pgdata()) {
                // Running is dropped without a stop otherwise: stop it before failing.
                let _stopped = running.stop();
                return Err(Error::Pg(e.into()));
            }
            Ok((running, created))
        })
        .await
        .map_err(|e| Error::Local(std::io::Error::other(e)))??;
        let url = cluster.url("postgres");
        if created {
            grant_like_supabase(&url).await?;
        }
        tracing::info!(
            port = cluster.port,
            pid = cluster.pid,
            "embedded postgres started"
        );
        config.database_url = Some(url);
        guard = Some(LocalCluster {
            running: Some(cluster),
        });
    }
    if config.jwt_secret.is_none() {
        config.jwt_secret = Some(load_or_create_secret(&config.data_dir, "jwt_secret")?);
    }
    let secret = config.jwt_secret.as_deref().unwrap_or_default();
    let sign = |role: &str| {
        crate::auth::sign(secret, role, None, KEY_TTL_SECS)
            .map_err(|e| Error::Local(std::io::Error::other(e)))
    };
    let keys = Keys {
        anon: sign("anon")?,
        service_role: sign("service_role")?,
    };
    Ok((guard, keys))
}

/// On a new local cluster, tables later created in `public` may be read by `anon`,
/// `authenticated` and `service_role`, as on a new Supabase project: Postgres Changes then
/// reach every role until row-level security or a `revoke` says otherwise. A database of
/// one's own (`DATABASE_URL`) is never changed like this.
async fn grant_like_supabase(url: &str) -> Result<(), Error> {
    crate::pg::migrate(url).await.map_err(Error::Pg)?;
    let options =
        crate::pg::connect_options(url, crate::pg::APPLICATION_NAME).map_err(Error::Pg)?;
    let mut conn = crate::pg::connect_with_retry(&options, std::time::Duration::from_secs(30))
        .await
        .map_err(Error::Pg)?;
    sqlx::query(
        "alter default privileges in schema public \
         grant select on tables to anon, authenticated, service_role",
    )
    .execute(&mut conn)
    .await
    .map_err(|e| Error::Pg(e.into()))?;
    sqlx::Connection::close(conn).await.ok();
    Ok(())
}

/// Reads the secret kept in `<data_dir>/<name>` (and tries to make the file private, 0600), or generates
/// one (64 hex digits) and keeps it there.
fn load_or_create_secret(data_dir: &Path, name: &str) -> Result<String, Error> {
    let path: PathBuf = data_dir.join(name);
    if let Ok(text) = fs::read_to_string(&path) {
        let secret = text.trim().to_owned();
        if secret.len() >= 16 {
            // Best effort on a file that was there: it may be provided read-only.
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot make the file private");
            }
            return Ok(secret);
        }
    }
    fs::create_dir_all(data_dir).map_err(Error::Local)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::Local)?;
    writeln!(file, "{secret}").map_err(Error::Local)?;
    // `mode` applies only to a file created here: a file that was there is made private too.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(Error::Local)?;
    tracing::info!(path = %path.display(), "generated a secret");
    Ok(secret)
}
