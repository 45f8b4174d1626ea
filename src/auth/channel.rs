//! Private channels: what a token may do on a channel, decided by the row-level-security
//! policies on `realtime.messages` (docs/protocol.md 7.5), as Supabase Realtime decides it.
//!
//! One check is one transaction on the pool, rolled back whatever happens:
//!
//! 1. as the gateway, insert one probe row per extension (`broadcast`, `presence`) for the
//!    channel's topic;
//! 2. act as the token: `role` (its `role` claim, `anon` when empty), `request.jwt.claims` (the
//!    whole claim set), `request.jwt.claim.sub` and `.role`, and `realtime.topic` (the channel
//!    name, read by `realtime.topic()`), all transaction-local;
//! 3. **read**: which probe rows the role can select (select policies);
//! 4. **write**: whether the role may insert a row of the topic per extension (insert policies),
//!    each in a savepoint, refused inserts (`42501`) meaning "no".
//!
//! Fed by the session's join and `access_token` handling and by the REST endpoints; feeds
//! nothing (the callers audit, count and answer). `service_role` may do everything without a
//! query; roles with `BYPASSRLS` pass the policies themselves. A check that cannot be evaluated
//! — the database unreachable or slower than the timeout, a policy that raises, an unknown role —
//! is an [`Error`], which every caller treats as a refusal (closed by default).

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use super::Claims;

pub use super::SERVICE_ROLE;

/// What one token may do on one private channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    /// Receive broadcasts (select policy, extension `broadcast`).
    pub read_broadcast: bool,
    /// Receive presence (select policy, extension `presence`).
    pub read_presence: bool,
    /// Send broadcasts (insert policy, extension `broadcast`).
    pub write_broadcast: bool,
    /// Track presence (insert policy, extension `presence`).
    pub write_presence: bool,
}

impl Rights {
    /// Everything (`service_role`, and public channels).
    pub const ALL: Rights = Rights {
        read_broadcast: true,
        read_presence: true,
        write_broadcast: true,
        write_presence: true,
    };

    /// Whether the channel may be joined: something of it can be read, as upstream.
    pub fn can_join(self) -> bool {
        self.read_broadcast || self.read_presence
    }

    /// Whether every read right of `self` is still in `now`.
    pub fn reads_kept_in(self, now: Rights) -> bool {
        (!self.read_broadcast || now.read_broadcast) && (!self.read_presence || now.read_presence)
    }
}

/// Which rights a check evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Read and write, both extensions (a join, a new token).
    Everything,
    /// Only whether broadcasts may be sent (REST).
    SendBroadcast,
}

/// Why an authorization could not be evaluated. Every caller refuses on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed the check: a policy raised, the role does not exist or
    /// may not be taken, a statement was cancelled.
    #[error("the database could not evaluate the channel's policies")]
    Policy(#[source] sqlx::Error),
    /// No connection, or no answer within the authorization timeout.
    #[error("the database did not answer the channel authorization")]
    Unavailable(#[source] Option<sqlx::Error>),
}

impl Error {
    /// The database's own message, for the audit log and the logs (never for clients).
    pub fn detail(&self) -> String {
        match self {
            Error::Policy(e) | Error::Unavailable(Some(e)) => match e.as_database_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().as_deref().unwrap_or("?")),
                None => e.to_string(),
            },
            Error::Unavailable(None) => "timed out".to_owned(),
        }
    }

    fn of(e: sqlx::Error) -> Error {
        match e {
            sqlx::Error::Database(_) => Error::Policy(e),
            other => Error::Unavailable(Some(other)),
        }
    }
}

/// Evaluates channel policies on the pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authorizer {
    pool: PgPool,
    timeout: Duration,
}

impl Authorizer {
    /// An authorizer whose checks use `pool` and take at most `timeout` each.
    pub fn new(pool: PgPool, timeout: Duration) -> Authorizer {
        Authorizer { pool, timeout }
    }

    /// What `claims` may do on the private channel `topic` (a name without `realtime:`).
    ///
    /// # Errors
    /// [`Error`] when the check cannot be evaluated; callers refuse.
    pub async fn check(&self, topic: &str, claims: &Claims, want: Want) -> Result<Rights, Error> {
        if claims.role == SERVICE_ROLE {
            return Ok(Rights::ALL);
        }
        match tokio::time::timeout(self.timeout, self.evaluate(topic, claims, want)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Unavailable(None)),
        }
    }

    async fn evaluate(&self, topic: &str, claims: &Claims, want: Want) -> Result<Rights, Error> {
        let mut tx = self.pool.begin().await.map_err(Error::of)?;
        let result = probe(&mut tx, topic, claims, want, self.timeout).await;
        // The probes never stay; a failed rollback only closes the connection.
        let _rolled_back = tx.rollback().await;
        result.map_err(Error::of)
    }
}

async fn probe(
    tx: &mut Transaction<'static, Postgres>,
    topic: &str,
    claims: &Claims,
    want: Want,
    timeout: Duration,
) -> Result<Rights, sqlx::Error> {
    // The server gives up too, so a slow policy does not hold a pool connection.
    let statement_ms = timeout.as_millis().max(1).to_string();
    let (broadcast_id, presence_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let read = want == Want::Everything;
    sqlx::query("select set_config('statement_timeout', $1, true)")
        .bind(&statement_ms)
        .execute(&mut **tx)
        .await?;
    if read {
        sqlx::query(
            "insert into realtime.messages (id, topic, extension, private) \
             values ($1, $3, 'broadcast', true), ($2, $3, 'presence', true)",
        )
        .bind(broadcast_id)
        .bind(presence_id)
        .bind(topic)
        .execute(&mut **tx)
        .await?;
    }
    let role = claims.db_role();
    // Tokens never act as a superuser, as the gateway's own login, or as a role the login may
    // not switch to (PostgREST refuses such tokens too): no rights, without a policy asked.
    let may_act: bool = sqlx::query_scalar("select realtime.may_act_as($1)")
        .bind(role)
        .fetch_one(&mut **tx)
        .await?;
    if !may_act {
        return Ok(Rights::default());
    }
    let claims_json = serde_json::to_string(claims).unwrap_or_else(|_| "{}".to_owned());
    let sub = claims.sub.clone().unwrap_or_default();
    sqlx::query(
        "select set_config('role', $1, true), set_config('realtime.topic', $2, true), \
                set_config('request.jwt.claims', $3, true), \
                set_config('request.jwt.claim.sub', $4, true), \
                set_config('request.jwt.claim.role', $1, true)",
    )
    .bind(role)
    .bind(topic)
    .bind(&claims_json)
    .bind(&sub)
    .execute(&mut **tx)
    .await?;
    let mut rights = Rights::default();
    if read {
        let seen: Vec<uuid::Uuid> =
            sqlx::query_scalar("select id from realtime.messages where id = any($1)")
                .bind(vec![broadcast_id, presence_id])
                .fetch_all(&mut **tx)
                .await?;
        rights.read_broadcast = seen.contains(&broadcast_id);
        rights.read_presence = seen.contains(&presence_id);
    }
    let extensions: &[&str] = match want {
        Want::Everything => &["broadcast", "presence"],
        Want::SendBroadcast => &["broadcast"],
    };
    for extension in extensions {
        let allowed = may_insert(tx, topic, extension).await?;
        match *extension {
            "broadcast" => rights.write_broadcast = allowed,
            _ => rights.write_presence = allowed,
        }
    }
    Ok(rights)
}

/// Whether the acting role may insert a row of `topic` and `extension` (in a savepoint: a
/// refused insert is an answer, not a failure of the check).
async fn may_insert(
    tx: &mut Transaction<'static, Postgres>,
    topic: &str,
    extension: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query("savepoint realtime_write_probe")
        .execute(&mut **tx)
        .await?;
    let inserted = sqlx::query(
        "insert into realtime.messages (topic, extension, private) values ($1, $2, true)",
    )
    .bind(topic)
    .bind(extension)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => {
            sqlx::query("rollback to savepoint realtime_write_probe")
                .execute(&mut **tx)
                .await?;
            Ok(true)
        }
        Err(e) if is_refused(&e) => {
            sqlx::query("rollback to savepoint realtime_write_probe")
                .execute(&mut **tx)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// `42501 insufficient_privilege`: a row-level-security `with check` refused the row (or the
/// role lacks the insert grant).
fn is_refused(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "42501")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: &str) -> Claims {
        Claims::new(role, 1, Some("u".to_owned()), Default::default())
    }

    #[test]
    fn joining_needs_one_read_right() {
        assert!(!Rights::default().can_join());
        let presence_only = Rights {
            read_presence: true,
            ..Rights::default()
        };
        assert!(presence_only.can_join());
        assert!(Rights::ALL.can_join());
    }

    #[test]
    fn lost_reads_are_detected_and_gained_ones_are_not_losses() {
        let none = Rights::default();
        assert!(Rights::ALL.reads_kept_in(Rights::ALL));
        assert!(!Rights::ALL.reads_kept_in(none));
        assert!(none.reads_kept_in(Rights::ALL));
        let write_lost = Rights {
            write_broadcast: false,
            ..Rights::ALL
        };
        assert!(Rights::ALL.reads_kept_in(write_lost));
    }

    #[test]
    fn an_empty_role_acts_as_anon() {
        assert_eq!(claims("").db_role(), "anon");
        assert_eq!(claims("authenticated").db_role(), "authenticated");
    }
}
