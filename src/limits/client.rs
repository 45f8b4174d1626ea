//! Limits per client: the client address (socket peer, or `X-Forwarded-For` behind trusted
//! proxies), failed authentications per address (shared by every node through
//! `realtime.auth_failures`), and open connections per address and per user: this node's own
//! count refuses at once what the node alone exceeds, and the connection's slot row (migration
//! 0015) counts the address and user across every node.
//!
//! Failed authentications: a fixed window per address, started by its first failure. Each
//! failure is one upsert that returns the window's count. Each upgrade asks whether its address
//! is blocked (count at the limit in a window not yet over), unless this node already knows: a
//! blocked address is cached with its window's end, so a blocked client costs no query per
//! attempt. The upgrades waiting at one moment ask together, in one indexed look-up of all their
//! addresses, as their slots are batched (`super::batch`). Blocked upgrades are refused with 429
//! before their token is even read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::batch::{self, Batcher};
use super::Error;
use crate::config::{Cidr, Config};
use crate::shutdown::Shutdown;

/// How long a look-up may take before its batch's upgrades go on unchecked: the check fails
/// open, so waiting longer on a stalled database would hold every upgrade for nothing.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Reply text of an upgrade refused for failed authentications (HTTP 429).
pub const AUTH_FAILURES_TEXT: &str = "Too many failed authentication attempts";
/// Reply text of an upgrade refused by the per-address connection limit (HTTP 429).
pub const PER_ADDR_TEXT: &str = "Too many connections from this address";
/// Reply text of an upgrade refused by the per-user connection limit (HTTP 429).
pub const PER_USER_TEXT: &str = "Too many connections for this user";

/// Counts a refusal in `gateway_limits_rate_limited_total{kind}`.
pub fn count_refusal(kind: &'static str) {
    metrics::counter!("gateway_limits_rate_limited_total", "kind" => kind).increment(1);
}

/// The per-client limits of one node.
#[derive(Debug)]
pub struct ClientLimits {
    pool: PgPool,
    trusted: Vec<Cidr>,
    max_failures: u32,
    window: Duration,
    /// Addresses known to be blocked, until their window's end.
    blocked: Arc<DashMap<IpAddr, Instant>>,
    /// Where upgrades ask whether their address is blocked ([`CheckAddrs`]); none with the
    /// failed-authentication limit off.
    checks: Option<Batcher<IpAddr, bool>>,
    max_per_addr: u32,
    max_per_user: u32,
    per_addr: Arc<DashMap<IpAddr, u32>>,
    per_user: Arc<DashMap<Uuid, u32>>,
}

/// Why a connection was refused by a per-client limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-connections-per-addr`.
    PerAddr,
    /// `--max-connections-per-user`.
    PerUser,
}

/// A connection's place in the per-address and per-user counts; dropping it frees them.
#[derive(Debug)]
pub struct ClientGuard {
    addr: IpAddr,
    user: Option<Uuid>,
    per_addr: Arc<DashMap<IpAddr, u32>>,
    per_user: Arc<DashMap<Uuid, u32>>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.per_addr.remove_if_mut(&self.addr, |_, n| {
            *n -= 1;
            *n == 0
        });
        if let Some(user) = self.user {
            self.per_user.remove_if_mut(&user, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

impl ClientLimits {
    /// The limits of `config`, asking `pool` about failed authentications. With the
    /// failed-authentication limit on, starts the task that answers upgrades' checks on the
    /// shutdown tracker; it ends at shutdown.
    pub fn new(pool: PgPool, config: &Config, shutdown: &Shutdown) -> ClientLimits {
        let blocked = Arc::new(DashMap::new());
        let checks = (config.max_auth_failures > 0).then(|| {
            let statement = CheckAddrs {
                pool: pool.clone(),
                window: config.auth_failure_window,
                limit: limit_of(config.max_auth_failures),
                blocked: Arc::clone(&blocked),
            };
            Batcher::spawn("auth_failure_checks", statement, shutdown)
        });
        ClientLimits {
            pool,
            trusted: config.trusted_proxies.clone(),
            max_failures: config.max_auth_failures,
            window: config.auth_failure_window,
            blocked,
            checks,
            max_per_addr: config.max_connections_per_addr,
            max_per_user: config.max_connections_per_user,
            per_addr: Arc::default(),
            per_user: Arc::default(),
        }
    }

    /// The client's address: the socket peer, or, when the peer is a trusted proxy, the
    /// right-most address of `forwarded` (`X-Forwarded-For`) that is not a trusted proxy (the
    /// left-most when all are). Port 0 when it came from the header.
    pub fn client_addr(&self, peer: SocketAddr, forwarded: Option<&str>) -> SocketAddr {
        client_addr(&self.trusted, peer, forwarded)
    }

    /// Whether `addr` is blocked for failed authentications: asked of the database together
    /// with the other upgrades waiting (one indexed look-up per batch), unless this node already
    /// knows it is blocked.
    ///
    /// # Errors
    /// When the database cannot be asked, or the node is stopping.
    pub async fn is_blocked(&self, addr: IpAddr) -> Result<bool, Error> {
        let Some(checks) = &self.checks else {
            return Ok(false);
        };
        if self.is_known_blocked(addr) {
            return Ok(true);
        }
        checks.ask(addr).await
    }

    /// Whether this node knows `addr` is blocked for failed authentications (no query: REST
    /// requests are checked this way only, so a good one costs no round trip).
    pub fn is_known_blocked(&self, addr: IpAddr) -> bool {
        let now = Instant::now();
        match self.blocked.get(&addr).map(|u| *u) {
            Some(until) if until > now => true,
            Some(_) => {
                self.blocked.remove_if(&addr, |_, u| *u <= now);
                false
            }
            None => false,
        }
    }

    /// Counts a failed authentication of `addr` (one upsert); returns whether this attempt is
    /// itself over the limit (another node counted the address's last allowed failures
    /// meanwhile). From the limit's failure on, the address is blocked until the window ends.
    ///
    /// # Errors
    /// When the database cannot be asked.
    pub async fn record_failure(&self, addr: IpAddr) -> Result<bool, sqlx::Error> {
        if self.max_failures == 0 {
            return Ok(false);
        }
        let (failures, left): (i32, f64) = sqlx::query_as(
            "insert into realtime.auth_failures as f (addr, window_start, failures)
             values ($1, now(), 1)
             on conflict (addr) do update set
               failures = case when f.window_start <= now() - make_interval(secs => $2)
                               then 1 else f.failures + 1 end,
               window_start = case when f.window_start <= now() - make_interval(secs => $2)
                                   then now() else f.window_start end
             returning failures,
                       extract(epoch from window_start + make_interval(secs => $2) - now())::float8",
        )
        .bind(addr.to_string())
        .bind(self.window.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        if failures >= self.limit() {
            block(&self.blocked, addr, left);
        }
        Ok(failures > self.limit())
    }

    /// Deletes the rows of windows that are over.
    ///
    /// # Errors
    /// When the database cannot be asked.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        self.blocked.retain(|_, until| *until > Instant::now());
        let done = sqlx::query(
            "delete from realtime.auth_failures
              where window_start <= now() - make_interval(secs => $1)",
        )
        .bind(self.window.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The window of the failed-authentication limit.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Connections per address across the cluster (0: off).
    pub fn max_per_addr(&self) -> u32 {
        self.max_per_addr
    }

    /// Connections per user across the cluster (0: off).
    pub fn max_per_user(&self) -> u32 {
        self.max_per_user
    }

    /// The failed-authentication limit (0: off).
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    fn limit(&self) -> i32 {
        limit_of(self.max_failures)
    }

    /// Counts a connection of `addr` and `user`, unless one of them is at its limit.
    ///
    /// # Errors
    /// The limit that is reached.
    pub fn admit(&self, addr: IpAddr, user: Option<Uuid>) -> Result<ClientGuard, Refused> {
        {
            let mut n = self.per_addr.entry(addr).or_insert(0);
            if self.max_per_addr > 0 && *n >= self.max_per_addr {
                return Err(Refused::PerAddr);
            }
            *n += 1;
        }
        // From here the guard holds the address count: dropping it on refusal frees it.
        let mut guard = ClientGuard {
            addr,
            user: None,
            per_addr: Arc::clone(&self.per_addr),
            per_user: Arc::clone(&self.per_user),
        };
        if let Some(user) = user {
            let mut n = self.per_user.entry(user).or_insert(0);
            if self.max_per_user > 0 && *n >= self.max_per_user {
                return Err(Refused::PerUser);
            }
            *n += 1;
            guard.user = Some(user);
        }
        Ok(guard)
    }
}

/// The failed-authentication limit as the database counts it.
fn limit_of(max_failures: u32) -> i32 {
    i32::try_from(max_failures).unwrap_or(i32::MAX)
}

/// Notes that `addr` is blocked for `left_secs` more seconds.
fn block(blocked: &DashMap<IpAddr, Instant>, addr: IpAddr, left_secs: f64) {
    let left = Duration::from_secs_f64(left_secs.clamp(0.0, 365.0 * 86_400.0));
    blocked.insert(addr, Instant::now() + left);
}

/// Looks up which addresses of a batch of upgrades are blocked, in one statement.
struct CheckAddrs {
    pool: PgPool,
    window: Duration,
    limit: i32,
    blocked: Arc<DashMap<IpAddr, Instant>>,
}

impl batch::Statement for CheckAddrs {
    type Question = IpAddr;
    type Answer = bool;
    /// The blocked addresses, with the seconds left of their window.
    type Answers = HashMap<IpAddr, f64>;
    const BATCH_SIZE: &'static str = "gateway_limits_auth_check_batch_size";
    const WHAT: &'static str = "failed-authentication check";

    /// The addresses of `addrs` blocked now. No answer within [`CHECK_TIMEOUT`] fails the batch.
    async fn ask(&mut self, addrs: &[IpAddr]) -> Result<HashMap<IpAddr, f64>, crate::pg::Error> {
        let mut distinct = addrs.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        // Stored as text, the way `record_failure` writes them.
        let texts: Vec<String> = distinct.iter().map(ToString::to_string).collect();
        let query = sqlx::query_as(
            "select addr, extract(epoch from window_start + make_interval(secs => $2) - now())::float8
               from realtime.auth_failures
              where addr = any($1) and window_start > now() - make_interval(secs => $2)
                and failures >= $3",
        )
        .bind(&texts)
        .bind(self.window.as_secs_f64())
        .bind(self.limit)
        .fetch_all(&self.pool);
        let rows: Vec<(String, f64)> = match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(rows) => rows?,
            Err(_) => return Err(crate::pg::Error::Timeout(CHECK_TIMEOUT)),
        };
        // Every row matched one of the texts, each an address's own rendering.
        Ok(rows
            .into_iter()
            .filter_map(|(text, left)| text.parse().ok().map(|addr| (addr, left)))
            .collect())
    }

    /// Whether `addr` is blocked; a blocked one is remembered until its window ends.
    fn answer(&mut self, blocked: &mut HashMap<IpAddr, f64>, addr: &IpAddr) -> bool {
        let left = blocked.get(addr).copied();
        if let Some(left) = left {
            block(&self.blocked, *addr, left);
        }
        left.is_some()
    }

    fn failed(error: Arc<crate::pg::Error>) -> Error {
        Error::AuthFailures(error)
    }
}

/// See [`ClientLimits::client_addr`].
fn client_addr(trusted: &[Cidr], peer: SocketAddr, forwarded: Option<&str>) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let Some(forwarded) = forwarded.filter(|_| is_trusted(peer.ip())) else {
        return peer;
    };
    let hops: Vec<IpAddr> = forwarded
        .split(',')
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    let client = hops
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip))
        .or(hops.first());
    client.map_or(peer, |ip| SocketAddr::new(*ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_right_most_untrusted_hop() {
        let trusted = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let addr = |f| client_addr(&trusted, peer, f).to_string();
        assert_eq!(addr(None), "127.0.0.1:5000");
        assert_eq!(addr(Some("1.2.3.4")), "1.2.3.4:0");
        assert_eq!(addr(Some("6.6.6.6, 1.2.3.4, 10.0.0.2")), "1.2.3.4:0");
        assert_eq!(addr(Some("10.0.0.3, 10.0.0.2")), "10.0.0.3:0");
        assert_eq!(addr(Some("garbage")), "127.0.0.1:5000");
        let untrusted: SocketAddr = "8.8.8.8:1".parse().unwrap();
        assert_eq!(client_addr(&trusted, untrusted, Some("1.2.3.4")), untrusted);
    }
}
