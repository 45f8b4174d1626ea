//! Looking at the gateway from outside: its processes in /proc (with `--gateway-pid`), its
//! metrics endpoints, and what it holds in PostgreSQL (connections in `pg_stat_activity`,
//! registry rows, audit entries). With several nodes, process figures and metrics are summed
//! over them.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::target::Target;

/// Clock ticks per second of /proc CPU times (USER_HZ, 100 on every Linux target).
const TICKS_PER_S: f64 = 100.0;

/// A process's resources as /proc shows them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcStats {
    /// Resident memory, KiB.
    pub(crate) rss_kib: u64,
    /// Open file descriptors.
    pub(crate) fds: u64,
    /// User plus system CPU time, seconds.
    pub(crate) cpu_s: f64,
}

impl ProcStats {
    /// The sum of several processes' figures; `None` when any of them cannot be read.
    pub(crate) fn sum(pids: &[u32]) -> Option<ProcStats> {
        let mut total = ProcStats::default();
        for &pid in pids {
            let p = ProcStats::read(Some(pid))?;
            total.rss_kib += p.rss_kib;
            total.fds += p.fds;
            total.cpu_s += p.cpu_s;
        }
        (!pids.is_empty()).then_some(total)
    }

    /// Reads `/proc/<pid>` (`None` for this process: `/proc/self`).
    pub(crate) fn read(pid: Option<u32>) -> Option<ProcStats> {
        let dir = match pid {
            Some(pid) => format!("/proc/{pid}"),
            None => "/proc/self".to_owned(),
        };
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let fds = std::fs::read_dir(format!("{dir}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Some(ProcStats {
            rss_kib,
            fds,
            cpu_s: ticks / TICKS_PER_S,
        })
    }
}

/// The gateway's side of a run.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    targets: Vec<Target>,
    pids: Vec<u32>,
    db: Option<PgPool>,
}

impl Probe {
    /// A probe of the gateway nodes at `targets`, their processes `pids` (one per node, or
    /// none) and their database `database_url`.
    pub(crate) fn new(targets: Vec<Target>, pids: Vec<u32>, database_url: Option<&str>) -> Probe {
        let db = database_url.and_then(|url| {
            let options: PgConnectOptions = url.parse().ok()?;
            let options = options
                .application_name("loadtest probe")
                .disable_statement_logging();
            Some(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(options),
            )
        });
        Probe { targets, pids, db }
    }

    /// The gateway processes' /proc figures, summed (with `--gateway-pid`).
    pub(crate) fn process(&self) -> Option<ProcStats> {
        ProcStats::sum(&self.pids)
    }

    /// CPU seconds of the gateways' live child processes (in local mode, the first node's
    /// PostgreSQL).
    pub(crate) fn children_cpu_s(&self) -> Option<f64> {
        let mut total = None;
        for &pid in &self.pids {
            if let Some(cpu) = descendants_cpu_s(pid) {
                *total.get_or_insert(0.0) += cpu;
            }
        }
        total
    }

    /// The database pool, when the run has a database.
    pub(crate) fn db(&self) -> Option<&PgPool> {
        self.db.as_ref()
    }

    /// Gateway RSS in KiB: from /proc, else from the metrics endpoint's
    /// `gateway_process_resident_memory_bytes` (or the conventional
    /// `process_resident_memory_bytes`).
    pub(crate) async fn rss_kib(&self) -> Option<u64> {
        if let Some(p) = self.process() {
            return Some(p.rss_kib);
        }
        for name in [
            "gateway_process_resident_memory_bytes",
            "process_resident_memory_bytes",
        ] {
            if let Some(bytes) = self.metric(name).await {
                return Some((bytes / 1024.0) as u64);
            }
        }
        None
    }

    /// A gauge or counter from `GET /metrics` (Prometheus text), summed over its labels and
    /// over the nodes that report it.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for target in &self.targets {
            let Ok((200, body)) = target.http_get("/metrics").await else {
                continue;
            };
            for line in body.lines().filter(|l| !l.starts_with('#')) {
                let Some((key, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let metric = key.split('{').next().unwrap_or(key);
                if metric == name {
                    if let Ok(v) = value.parse::<f64>() {
                        *found.get_or_insert(0.0) += v;
                    }
                }
            }
        }
        found
    }

    /// Connections the gateway holds to PostgreSQL (pool and listener), by application name.
    pub(crate) async fn pg_connections(&self) -> Option<i64> {
        let db = self.db.as_ref()?;
        sqlx::query_scalar(
            "select count(*) from pg_stat_activity where application_name like 'realtime-gateway%'",
        )
        .fetch_one(db)
        .await
        .ok()
    }

    /// Active rows of `public.realtime_subscription_registry`; `None` without the table.
    pub(crate) async fn registry_active(&self) -> Option<i64> {
        let db = self.db.as_ref()?;
        let exists: Option<String> =
            sqlx::query_scalar("select to_regclass('public.realtime_subscription_registry')::text")
                .fetch_one(db)
                .await
                .ok()?;
        exists?;
        sqlx::query_scalar(
            "select count(*) from public.realtime_subscription_registry where is_active",
        )
        .fetch_one(db)
        .await
        .ok()
    }

    /// Entries of `realtime.audit_log` with `kind = 'cap_refused'`; `None` without the table.
    pub(crate) async fn audit_cap_refused(&self) -> Option<i64> {
        let db = self.db.as_ref()?;
        let exists: Option<String> =
            sqlx::query_scalar("select to_regclass('realtime.audit_log')::text")
                .fetch_one(db)
                .await
                .ok()?;
        exists?;
        sqlx::query_scalar("select count(*) from realtime.audit_log where kind = 'cap_refused'")
            .fetch_one(db)
            .await
            .ok()
    }

    /// Terminates the gateway's listener connection(s); returns how many were terminated.
    pub(crate) async fn kill_listener(&self) -> anyhow::Result<i64> {
        let Some(db) = self.db.as_ref() else {
            anyhow::bail!("no database url");
        };
        let killed: i64 = sqlx::query_scalar(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
             where application_name = 'realtime-gateway listener') t",
        )
        .fetch_one(db)
        .await?;
        Ok(killed)
    }

    /// Closes the pool.
    pub(crate) async fn close(&self) {
        if let Some(db) = &self.db {
            db.close().await;
        }
    }
}

/// TCP sockets on this machine whose local port is `port` (the gateway's side of its client
/// connections), by state: `(established, other)` where other is every state but LISTEN and
/// TIME_WAIT (CLOSE_WAIT sockets are connections the gateway has not closed yet).
pub(crate) fn server_sockets(port: u16) -> (u64, u64) {
    let mut established = 0;
    let mut other = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) =
                (fields.nth(1), fields.next(), fields.next())
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match state {
                // LISTEN, and TIME_WAIT (no longer held by any process).
                "0A" | "06" => {}
                "01" => established += 1,
                _ => other += 1,
            }
        }
    }
    (established, other)
}

/// `(parent pid, CPU seconds, CPU seconds of its exited children)` of process `pid`, from
/// `/proc/<pid>/stat` (utime + stime, and cutime + cstime: children it has waited for).
pub(crate) fn parent_and_cpu_s(pid: u32) -> Option<(u32, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let own = field(11)? + field(12)?;
    let children = field(13)? + field(14)?;
    Some((ppid, own / TICKS_PER_S, children / TICKS_PER_S))
}

/// CPU seconds used so far by the live descendants of `pid` (in local mode, the gateway's
/// PostgreSQL: postmaster and backends). Backends that already exited are not counted.
pub(crate) fn descendants_cpu_s(pid: u32) -> Option<f64> {
    let mut parent_of = std::collections::HashMap::new();
    let mut cpu_of = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let (Some(ppid), Some(utime), Some(stime)) = (
            fields.get(1).and_then(|f| f.parse::<u32>().ok()),
            fields.get(11).and_then(|f| f.parse::<f64>().ok()),
            fields.get(12).and_then(|f| f.parse::<f64>().ok()),
        ) else {
            continue;
        };
        parent_of.insert(child, ppid);
        cpu_of.insert(child, (utime + stime) / TICKS_PER_S);
    }
    let is_descendant = |mut p: u32| {
        for _ in 0..64 {
            match parent_of.get(&p) {
                Some(&parent) if parent == pid => return true,
                Some(&parent) if parent > 1 => p = parent,
                _ => return false,
            }
        }
        false
    };
    parent_of.contains_key(&pid).then(|| {
        cpu_of
            .iter()
            .filter(|(&p, _)| is_descendant(p))
            .map(|(_, cpu)| cpu)
            .sum()
    })
}
