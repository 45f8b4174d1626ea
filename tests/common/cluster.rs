//! The PostgreSQL server the tests run against: `DATABASE_URL`, or a private cluster.
//!
//! With `DATABASE_URL` set, tests use that server. Otherwise the first test process starts one
//! private cluster (from the installed server binaries, as an unprivileged user when run as
//! root) in a folder under the system temp dir, keyed by this checkout. Every test process holds
//! a shared lock on `users.lock` for its lifetime; a small watchdog started with the cluster
//! stops it once no test process has held that lock for a few seconds, so a test run leaves no
//! server behind and the next run starts a fresh one.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use realtime_gateway::pg::embedded::{self, Cluster, Tuning};
use sqlx::PgConnection;

/// Server URL without a database name, e.g. `postgres://postgres@127.0.0.1:5432`.
static SERVER: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
/// The shared lock that keeps the test cluster alive while this process runs.
static USERS_LOCK: OnceLock<Flock<File>> = OnceLock::new();

/// Stops the cluster once no test process has used it for this long.
const IDLE_GRACE_SECS: u32 = 5;

const WATCHDOG: &str = r#"
dir="$1"; pid="$2"; grace="$3"
exec 9>>"$dir/users.lock"
while :; do
  flock -x 9; flock -u 9
  sleep "$grace"
  if flock -xn 9; then
    kill -INT "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$dir/state"
    exit 0
  fi
done
"#;

fn harness_dir() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_MANIFEST_DIR").hash(&mut h);
    nix::unistd::getuid().as_raw().hash(&mut h);
    std::env::temp_dir().join(format!("realtime-gateway-test-{:016x}", h.finish()))
}

fn lock(path: &PathBuf, arg: FlockArg) -> Flock<File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Flock::lock(file, arg).unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()))
}

/// Starts (or joins) the private test cluster; returns its server URL.
fn private_server() -> String {
    let dir = harness_dir();
    fs::create_dir_all(&dir).expect("create harness dir");
    // Held for the whole process: the watchdog stops the cluster only when nobody holds it.
    USERS_LOCK.get_or_init(|| lock(&dir.join("users.lock"), FlockArg::LockShared));
    let _start = lock(&dir.join("start.lock"), FlockArg::LockExclusive);
    let state = dir.join("state");
    if let Ok(text) = fs::read_to_string(&state) {
        let mut parts = text.split_whitespace().map(str::parse::<u32>);
        if let (Some(Ok(port)), Some(Ok(_pid))) = (parts.next(), parts.next()) {
            let port = u16::try_from(port).expect("port fits u16");
            if embedded::accepts_connections(port) {
                return format!("postgres://postgres@127.0.0.1:{port}");
            }
        }
    }
    // A fresh cluster for every run: databases of earlier runs are not kept.
    let pgdata = dir.join("pg");
    if pgdata.exists() {
        let old = Cluster::new(&pgdata).expect("describe old cluster");
        old.stop_leftover().expect("stop leftover cluster");
        fs::remove_dir_all(&pgdata).expect("remove old cluster");
    }
    let cluster = Cluster::new(&pgdata).unwrap_or_else(|e| panic!("test cluster: {e}"));
    cluster.init().unwrap_or_else(|e| panic!("initdb: {e}"));
    let running = cluster
        .start(&Tuning::for_tests())
        .unwrap_or_else(|e| panic!("start test cluster: {e}"));
    let (port, pid) = running.detach();
    fs::write(&state, format!("{port} {pid}\n")).expect("write state");
    // The watchdog outlives this process on purpose: it stops the cluster after the last test
    // process has gone, and is reaped by init.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(&dir)
        .arg(pid.to_string())
        .arg(IDLE_GRACE_SECS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the test cluster watchdog");
    format!("postgres://postgres@127.0.0.1:{port}")
}

pub(super) async fn server() -> &'static str {
    SERVER
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => server_of(&url),
                _ => tokio::task::spawn_blocking(private_server)
                    .await
                    .expect("start test cluster"),
            }
        })
        .await
}

/// `postgres://u@h:p/db?x` -> `postgres://u@h:p` (the query string is dropped).
fn server_of(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    match without_query[scheme_end..].find('/') {
        Some(i) => without_query[..scheme_end + i].to_owned(),
        None => without_query.to_owned(),
    }
}

pub(super) async fn admin_conn(server: &str) -> PgConnection {
    let url = format!("{server}/postgres");
    let options = realtime_gateway::pg::connect_options(&url, "realtime-gateway tests").unwrap();
    realtime_gateway::pg::connect_with_retry(&options, Duration::from_secs(30))
        .await
        .expect("connect to the test server")
}

#[cfg(test)]
mod tests {
    use super::server_of;

    #[test]
    fn server_of_drops_database_and_query() {
        assert_eq!(
            server_of("postgres://u@h:5432/db?sslmode=disable"),
            "postgres://u@h:5432"
        );
        assert_eq!(server_of("postgres://u@h:5432"), "postgres://u@h:5432");
    }
}
