//! Shutdown of a local-mode gateway process: Ctrl-C reaches the gateway's whole process group,
//! as a terminal sends it; the gateway closes its sockets with a close the real clients
//! reconnect from, retires this node's registry rows as `shutdown` while its embedded postgres
//! is still up, stops that postgres last, and finishes within its shutdown timeout even when a
//! client does not read.

mod common;

use std::collections::HashSet;
use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, http_get, process_alive, read_line_containing};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use realtime_gateway::pg::embedded::{Cluster, Tuning};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_realtime-gateway");
const CLIENTS: usize = 100;

/// A local-mode gateway process in a process group of its own (as a terminal's foreground job
/// is), its log in a file.
struct LocalGateway {
    child: Child,
    addr: std::net::SocketAddr,
    anon: String,
    database_url: String,
    log: PathBuf,
    /// Holds the read end of stdout open (the banner is all it writes).
    _stdout: BufReader<ChildStdout>,
}

impl LocalGateway {
    async fn spawn(data_dir: &Path, args: &[&str]) -> LocalGateway {
        let log = data_dir.join("gateway.log");
        let mut child = Command::new(BIN)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                "drain-node",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("JWT_SECRET")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let api = read_line_containing(&mut out, "API URL").expect("banner");
        let anon = read_line_containing(&mut out, "anon key").expect("anon key");
        let database = read_line_containing(&mut out, "database:").expect("database url");
        let last_word = |line: &str| line.split_whitespace().last().unwrap().to_owned();
        let addr = api
            .rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        eventually(Duration::from_secs(60), "/ready 200", || async move {
            matches!(http_get(addr, "/ready").await, Ok((200, _)))
        })
        .await;
        LocalGateway {
            child,
            addr,
            anon: last_word(&anon),
            database_url: last_word(&database),
            log,
            _stdout: out,
        }
    }

    /// Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    fn interrupt_group(&self) {
        let group = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        killpg(group, Signal::SIGINT).unwrap();
    }

    /// Waits for the process to exit; returns its status and how long it took.
    async fn exited(mut self, patience: Duration) -> (std::process::ExitStatus, String) {
        let wait = tokio::task::spawn_blocking(move || self.child.wait());
        let status = tokio::time::timeout(patience, wait)
            .await
            .unwrap_or_else(|_| panic!("gateway did not exit in {patience:?}"))
            .unwrap()
            .unwrap();
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("pg/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// This node's registry rows as (active, ended as `shutdown`, all), read from the data folder's
/// cluster started again by the test (the gateway has stopped it).
async fn registry_rows_on_disk(data_dir: &Path) -> (i64, i64, i64) {
    let pgdata = data_dir.join("pg");
    let password = std::fs::read_to_string(data_dir.join("pg_password")).unwrap();
    let running = tokio::task::spawn_blocking(move || {
        let mut cluster = Cluster::new(&pgdata).unwrap();
        cluster.require_password(password.trim()).unwrap();
        cluster.start(&Tuning::default()).unwrap()
    })
    .await
    .unwrap();
    let rows = registry_rows(&running.url("postgres")).await;
    tokio::task::spawn_blocking(move || running.stop().unwrap())
        .await
        .unwrap();
    rows
}

async fn registry_rows(url: &str) -> (i64, i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let row: (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where is_active), \
                count(*) filter (where not is_active and close_reason = 'shutdown'), \
                count(*) \
         from public.realtime_subscription_registry where node_id = 'drain-node'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    row
}

/// Many realtime-js clients in one Node.js process (tests/clients/js/crowd.mjs).
async fn start_crowd(
    gw: &LocalGateway,
) -> (
    tokio::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let status = Command::new(root.join("setup.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("run tests/clients/setup.sh");
    assert!(status.success(), "tests/clients/setup.sh failed");
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("js/crowd.mjs"))
        .env("REALTIME_URL", format!("ws://{}/realtime/v1", gw.addr))
        .env("REALTIME_APIKEY", &gw.anon)
        .env("REALTIME_CLIENTS", CLIENTS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let event: serde_json::Value = serde_json::from_str(&line).expect("crowd prints JSON");
            assert_ne!(event["ev"], "fatal", "crowd failed: {event}");
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads crowd events until `done` says every client got there; fails after `patience`.
async fn until_all(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    patience: Duration,
    what: &str,
    mut seen: impl FnMut(&serde_json::Value) -> Option<usize>,
) {
    let mut clients = HashSet::new();
    let deadline = tokio::time::Instant::now() + patience;
    while clients.len() < CLIENTS {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: only {} of {CLIENTS}", clients.len()))
            .expect("crowd exited");
        if let Some(client) = seen(&event) {
            clients.insert(client);
        }
    }
}

fn client_of(event: &serde_json::Value) -> usize {
    usize::try_from(event["client"].as_u64().unwrap()).unwrap()
}

/// The operations promise: Ctrl-C (to the whole process group) closes every socket with 1001,
/// and realtime-js reconnects; every registry row of the node ends `shutdown`, written while
/// the embedded postgres was up; that postgres is stopped after, and nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_clients_and_stops_postgres_last() {
    let data_dir = common::temp_dir("rg-drain");
    let gw = LocalGateway::spawn(&data_dir, &[]).await;
    let pg_pid = postmaster_pid(&data_dir);
    let (mut crowd, mut events) = start_crowd(&gw).await;
    until_all(&mut events, Duration::from_secs(120), "subscribed", |e| {
        (e["ev"] == "status" && e["status"] == "SUBSCRIBED").then(|| client_of(e))
    })
    .await;
    let url = gw.database_url.clone();
    eventually(Duration::from_secs(30), "a registry row per client", || {
        let url = url.clone();
        async move { registry_rows(&url).await.0 == i64::try_from(CLIENTS).unwrap() }
    })
    .await;

    gw.interrupt_group();
    // Each client sees the gateway's close, 1001, and opens a new socket afterwards.
    let mut closed = HashSet::new();
    until_all(&mut events, Duration::from_secs(30), "reconnecting", |e| {
        if e["ev"] == "socket" && e["state"] == "close" && closed.insert(client_of(e)) {
            assert_eq!(e["code"], 1001, "{e}");
            assert_eq!(e["reason"], "server shutting down", "{e}");
        }
        (e["ev"] == "connecting" && closed.contains(&client_of(e))).then(|| client_of(e))
    })
    .await;
    let (status, log) = gw.exited(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        !process_alive(pg_pid),
        "postgres {pg_pid} outlived the gateway"
    );
    assert!(
        !data_dir.join("pg/postmaster.pid").exists(),
        "postgres did not shut down cleanly"
    );
    for complaint in [
        "cannot retire",
        "registry not flushed",
        "registry flush at shutdown",
    ] {
        assert!(!log.contains(complaint), "{complaint}; log:\n{log}");
    }
    let retired = log.find("stopped").expect("gateway stopped");
    let pg_stopped = log
        .find("stopping the embedded postgres")
        .expect("postgres stopped by the gateway");
    assert!(
        retired < pg_stopped,
        "postgres stopped before the gateway; log:\n{log}"
    );

    let (active, shutdown, all) = registry_rows_on_disk(&data_dir).await;
    assert_eq!(active, 0, "rows still active");
    assert_eq!(shutdown, all, "every row ends as shutdown");
    assert!(all >= i64::try_from(CLIENTS).unwrap(), "{all} rows");

    drop(crowd.stdin.take());
    let _ = crowd.wait().await;
    std::fs::remove_dir_all(&data_dir).ok();
}

/// A client that stops reading cannot hold the shutdown: with its socket buffers full, the
/// gateway still exits (and stops its postgres) within its shutdown timeout, well before the
/// patience a close frame gets from a client that reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_a_client_does_not_read() {
    let data_dir = common::temp_dir("rg-drain-stuck");
    let gw = LocalGateway::spawn(
        &data_dir,
        &[
            "--shutdown-timeout",
            "1s",
            "--outbound-queue-bytes",
            "268435456",
            "--outbound-queue-frames",
            "1000000",
            "--events-per-second",
            "0",
        ],
    )
    .await;
    let pg_pid = postmaster_pid(&data_dir);
    // The stuck client: a tiny receive buffer; it writes broadcasts echoed to itself and never
    // reads them.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let client_port = tcp.local_addr().unwrap().port();
    let url = format!(
        "ws://{}/realtime/v1/websocket?apikey={}&vsn=2.0.0",
        gw.addr, gw.anon
    );
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let mut stuck = common::WsClient::from_stream(ws);
    let reply = stuck
        .join("realtime:stuck", json!({"broadcast": {"self": true}}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let body = "x".repeat(64 * 1024);
    let server_port = gw.addr.port();
    let mut sent = 0;
    // Until the gateway's side of the socket holds a megabyte it cannot deliver.
    while unsent_bytes(server_port, client_port) < 1024 * 1024 {
        assert!(sent < 2000, "the gateway's send queue never filled");
        for _ in 0..16 {
            stuck
                .send(
                    Some("1"),
                    "realtime:stuck",
                    "broadcast",
                    json!({"type": "broadcast", "event": "fill", "payload": {"body": body}}),
                )
                .await;
            sent += 1;
        }
        tokio::task::yield_now().await;
    }

    let started = Instant::now();
    gw.interrupt_group();
    let (status, log) = gw.exited(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    // 1 s for sessions, the registry's flush (quick), and postgres's fast shutdown: well under
    // the 5 s a close frame may take on a socket that drains.
    assert!(
        took < Duration::from_secs(4),
        "shutdown took {took:?}; log:\n{log}"
    );
    assert!(
        !process_alive(pg_pid),
        "postgres {pg_pid} outlived the gateway"
    );
    let (active, _, _) = registry_rows_on_disk(&data_dir).await;
    assert_eq!(active, 0, "rows still active");
    drop(stuck);
    std::fs::remove_dir_all(&data_dir).ok();
}

/// Bytes the local TCP socket `local_port` -> `remote_port` holds unsent (`tx_queue` of
/// /proc/net/tcp).
fn unsent_bytes(local_port: u16, remote_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
            (port_of(local)? == local_port && port_of(remote)? == remote_port).then(|| {
                u64::from_str_radix(queues.split(':').next().unwrap_or("0"), 16).unwrap_or(0)
            })
        })
        .sum()
}

/// A gateway killed outright (SIGKILL, no shutdown at all) leaves no postgres running: its
/// watchdog stops the embedded server, and a new start on the same folder works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_leaves_no_postgres_running() {
    let data_dir = common::temp_dir("rg-drain-killed");
    let mut gw = LocalGateway::spawn(&data_dir, &[]).await;
    let pg_pid = postmaster_pid(&data_dir);
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    eventually(Duration::from_secs(30), "postgres stopped", || async move {
        !process_alive(pg_pid)
    })
    .await;
    let again = LocalGateway::spawn(&data_dir, &[]).await;
    again.interrupt_group();
    let (status, log) = again.exited(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    std::fs::remove_dir_all(&data_dir).ok();
}
