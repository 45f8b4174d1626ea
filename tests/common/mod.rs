//! Test harness: a real PostgreSQL, a fresh database per test, the gateway on 127.0.0.1:0.
//!
//! With `DATABASE_URL` set, tests use that server. Otherwise the first test process starts one
//! private cluster (from the installed server binaries, as an unprivileged user when run as
//! root) in a folder under the system temp dir, keyed by this checkout. Every test process holds
//! a shared lock on `users.lock` for its lifetime; a small watchdog started with the cluster
//! stops it once no test process has held that lock for a few seconds, so a test run leaves no
//! server behind and the next run starts a fresh one. Each test gets its own database, created
//! from a migrated template and dropped when the test ends.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use realtime_gateway::pg::embedded::{self, Cluster, Tuning};
use realtime_gateway::{Config, Shutdown};
use sqlx::{Connection, PgConnection};

/// Secret every test gateway verifies tokens with.
pub const JWT_SECRET: &str = "test-secret-with-at-least-32-characters";

/// Server URL without a database name, e.g. `postgres://postgres@127.0.0.1:5432`.
static SERVER: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
/// The shared lock that keeps the test cluster alive while this process runs.
static USERS_LOCK: OnceLock<Flock<File>> = OnceLock::new();

/// Advisory lock taken while one process builds the migrated template database.
const TEMPLATE_LOCK: i64 = 0x7470_656d_706c; // "tmpl"

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

async fn server() -> &'static str {
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

fn template_name() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in realtime_gateway::pg::MIGRATOR.iter() {
        m.version.hash(&mut h);
        m.checksum.hash(&mut h);
    }
    format!("realtime_tmpl_{:016x}", h.finish())
}

async fn admin_conn(server: &str) -> PgConnection {
    let url = format!("{server}/postgres");
    let options = realtime_gateway::pg::connect_options(&url, "realtime-gateway tests").unwrap();
    realtime_gateway::pg::connect_with_retry(&options, Duration::from_secs(30))
        .await
        .expect("connect to the test server")
}

/// A database of its own for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    server: String,
}

impl TestDb {
    /// A fresh database with every migration applied.
    pub async fn new() -> TestDb {
        let server = server().await.to_owned();
        let template = template_name();
        let mut conn = admin_conn(&server).await;
        // Cross-process: only one creates the template.
        sqlx::query("select pg_advisory_lock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut conn)
            .await
            .unwrap();
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
                .bind(&template)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if !exists {
            let building = format!("{template}_building");
            sqlx::query(&format!("drop database if exists {building}"))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(&format!("create database {building}"))
                .execute(&mut conn)
                .await
                .unwrap();
            realtime_gateway::pg::migrate(&format!("{server}/{building}"))
                .await
                .expect("migrate the template");
            sqlx::query(&format!("alter database {building} rename to {template}"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut conn)
            .await
            .unwrap();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!(
            "create database {name} template {template} strategy file_copy"
        ))
        .execute(&mut conn)
        .await
        .expect("create test database");
        conn.close().await.ok();
        TestDb {
            url: format!("{server}/{name}"),
            name,
            server,
        }
    }

    /// An empty database with no migrations applied.
    pub async fn empty() -> TestDb {
        let server = server().await.to_owned();
        let mut conn = admin_conn(&server).await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        TestDb {
            url: format!("{server}/{name}"),
            name,
            server,
        }
    }

    /// A connection to this database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    /// A small pool on this database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("pool")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on a plain thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = admin_conn(&server).await;
                sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut conn)
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A gateway running in this test's runtime on 127.0.0.1:0.
#[derive(Debug)]
pub struct TestGateway {
    pub addr: SocketAddr,
    pub config: Arc<Config>,
    pub state: realtime_gateway::state::AppState,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), realtime_gateway::Error>>,
}

impl TestGateway {
    /// Starts a gateway on `db` with default settings changed by `adjust`.
    pub async fn start_with(db: &TestDb, adjust: impl FnOnce(&mut Config)) -> TestGateway {
        Self::start_url(&db.url, adjust).await
    }

    /// Starts a gateway on the database at `url` with default settings changed by `adjust`.
    pub async fn start_url(url: &str, adjust: impl FnOnce(&mut Config)) -> TestGateway {
        realtime_gateway::telemetry::init(realtime_gateway::config::LogFormat::Text);
        let mut config = Config::for_database(url.to_owned(), JWT_SECRET.to_owned());
        // Tests should not wait for the anti-retry-storm delays unless they set them.
        config.join_error_delay = Duration::ZERO;
        config.connect_error_delay = Duration::ZERO;
        adjust(&mut config);
        let listener = realtime_gateway::http::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(config);
        let shutdown = Shutdown::new();
        let gateway = realtime_gateway::Gateway::start(Arc::clone(&config), shutdown.clone())
            .await
            .expect("gateway starts");
        let state = gateway.state().clone();
        let task = tokio::spawn(gateway.serve(listener));
        let gw = TestGateway {
            addr,
            config,
            state,
            shutdown,
            task,
        };
        gw.wait_ready().await;
        gw
    }

    /// Starts a gateway on `db` with default settings.
    pub async fn start(db: &TestDb) -> TestGateway {
        Self::start_with(db, |_| {}).await
    }

    /// Polls `/ready` until it answers 200 (up to 30 s).
    pub async fn wait_ready(&self) {
        let addr = self.addr;
        eventually(Duration::from_secs(30), "gateway ready", || async move {
            matches!(http_get(addr, "/ready").await, Ok((200, _)))
        })
        .await;
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(self) -> Result<(), realtime_gateway::Error> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("gateway stops within 30 s")
            .expect("gateway task did not panic")
    }

    /// `ws://addr/realtime/v1/websocket?apikey=..&vsn=..`.
    pub fn ws_url(&self, apikey: &str, vsn: &str) -> String {
        format!(
            "ws://{}/realtime/v1/websocket?apikey={apikey}&vsn={vsn}",
            self.addr
        )
    }
}

/// A token signed with the test secret.
pub fn token(role: &str, sub: Option<&str>) -> String {
    realtime_gateway::auth::sign(JWT_SECRET, role, sub, 3600).unwrap()
}

/// Polls `check` until it is true, failing the test after `patience`.
pub async fn eventually<F, Fut>(patience: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET: returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], "").await
}

/// A minimal HTTP/1.1 request with extra headers and a body: returns the status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Reads a child's stdout until a line containing `needle`, returning that line.
pub fn read_line_containing(reader: &mut impl std::io::BufRead, needle: &str) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line.contains(needle) => return Some(line.trim_end().to_owned()),
            Ok(_) => {}
        }
    }
}

/// Whether process `pid` is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    let mut stat = String::new();
    match File::open(format!("/proc/{pid}/stat")).and_then(|mut f| f.read_to_string(&mut stat)) {
        Ok(_) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Writes `text` to a fresh file in a temp folder and returns the folder.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&dir).unwrap();
    let _ = File::create(dir.join(".keep")).and_then(|mut f| f.write_all(b""));
    dir
}

/// A raw Phoenix client over tokio-tungstenite, speaking vsn 2.0.0 JSON arrays.
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ref: u64,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").finish_non_exhaustive()
    }
}

/// A received frame: `[join_ref, ref, topic, event, payload]`.
#[derive(Debug, Clone)]
pub struct Msg {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: serde_json::Value,
}

impl WsClient {
    /// Connects to `url` (vsn 2.0.0 expected in it).
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        WsClient { ws, next_ref: 1 }
    }

    /// Wraps a stream connected by the caller (e.g. over a tuned socket).
    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> WsClient {
        WsClient { ws, next_ref: 1 }
    }

    /// Connects to the gateway with a fresh anon key.
    pub async fn anon(gw: &TestGateway) -> WsClient {
        WsClient::connect(&gw.ws_url(&token("anon", None), "2.0.0")).await
    }

    /// Sends a frame; returns the ref used.
    pub async fn send(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: serde_json::Value,
    ) -> String {
        use futures_util::SinkExt;
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        let frame = serde_json::json!([join_ref, r, topic, event, payload]);
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                frame.to_string().into(),
            ))
            .await
            .expect("send");
        r
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                text.to_owned().into(),
            ))
            .await
            .expect("send");
    }

    /// The next text frame, or `Err(close code)` when the socket closes; fails after 10 s.
    pub async fn next(&mut self) -> Result<Msg, Option<u16>> {
        self.next_within(Duration::from_secs(10)).await
    }

    /// The next text frame within `patience`.
    pub async fn next_within(&mut self, patience: Duration) -> Result<Msg, Option<u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(patience, self.ws.next())
                .await
                .expect("a frame within the patience");
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                    let s = |i: usize| v[i].as_str().map(str::to_owned);
                    return Ok(Msg {
                        join_ref: s(0),
                        msg_ref: s(1),
                        topic: s(2).unwrap_or_default(),
                        event: s(3).unwrap_or_default(),
                        payload: v[4].clone(),
                    });
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next text frame unparsed, or `Err(close code)` when the socket closes.
    pub async fn next_raw(&mut self, patience: Duration) -> Result<String, Option<u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let frame = tokio::time::timeout(patience, self.ws.next())
                .await
                .expect("a frame within the patience");
            match frame {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Skips frames until one with `event` on `topic` arrives.
    pub async fn expect_event(&mut self, topic: &str, event: &str) -> Msg {
        loop {
            let m = self.next().await.unwrap_or_else(|code| {
                panic!("socket closed ({code:?}) while waiting for {event} on {topic}")
            });
            if m.topic == topic && m.event == event {
                return m;
            }
        }
    }

    /// Joins `topic` with `config`; returns the reply payload.
    pub async fn join(&mut self, topic: &str, config: serde_json::Value) -> serde_json::Value {
        let r = self.next_ref.to_string();
        self.send(
            Some(&r),
            topic,
            "phx_join",
            serde_json::json!({ "config": config }),
        )
        .await;
        let reply = self.expect_event(topic, "phx_reply").await;
        assert_eq!(
            reply.msg_ref.as_deref(),
            Some(r.as_str()),
            "reply echoes the ref"
        );
        assert_eq!(
            reply.join_ref.as_deref(),
            Some(r.as_str()),
            "reply echoes the join_ref"
        );
        reply.payload
    }

    /// Joins with Postgres Changes subscriptions and waits for "Subscribed to PostgreSQL".
    pub async fn subscribe(&mut self, topic: &str, changes: serde_json::Value) -> Vec<u32> {
        let reply = self
            .join(topic, serde_json::json!({ "postgres_changes": changes }))
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let system = self.expect_event(topic, "system").await;
        assert_eq!(
            system.payload["status"], "ok",
            "subscription failed: {}",
            system.payload
        );
        reply["response"]["postgres_changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| u32::try_from(e["id"].as_u64().unwrap()).unwrap())
            .collect()
    }

    /// Reads the raw stream until the server's close frame; returns its code.
    pub async fn closed_with(&mut self, patience: Duration) -> Option<u16> {
        loop {
            match self.next_within(patience).await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    /// Stops reading: the caller keeps the socket but drains nothing.
    pub fn into_inner(
        self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        self.ws
    }
}

/// Creates `public.<table>` with `id bigint primary key` plus `columns`, and enables it for
/// realtime the Supabase way (publication).
pub async fn realtime_table(db: &TestDb, table: &str, columns: &str) {
    let mut conn = db.connect().await;
    sqlx::query(&format!(
        "create table public.{table} (id bigint generated by default as identity primary key{}{columns})",
        if columns.is_empty() { "" } else { ", " }
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(&format!(
        "alter publication supabase_realtime add table public.{table}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// Which real client a [`Driver`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// npm `@supabase/realtime-js` under Node.js.
    Js,
    /// PyPI `realtime` (supabase-py's client).
    Py,
}

static CLIENTS_SETUP: OnceLock<()> = OnceLock::new();

/// A real client driven over stdin/stdout JSON lines (see tests/clients/README.md).
#[derive(Debug)]
pub struct Driver {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// Every event seen so far, for failure messages.
    pub log: Vec<serde_json::Value>,
}

impl Driver {
    /// Installs the clients (once per process) and starts `client` against `gw`.
    pub async fn start(client: Client, gw: &TestGateway, params: serde_json::Value) -> Driver {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        CLIENTS_SETUP.get_or_init(|| {
            let status = Command::new(root.join("setup.sh"))
                .stdout(Stdio::null())
                .status()
                .expect("run tests/clients/setup.sh");
            assert!(status.success(), "tests/clients/setup.sh failed");
        });
        let mut cmd = match client {
            Client::Js => {
                let mut c = tokio::process::Command::new("node");
                c.arg(root.join("js/driver.mjs"));
                c
            }
            Client::Py => {
                let mut c = tokio::process::Command::new(root.join("py/.venv/bin/python"));
                c.arg(root.join("py/driver.py"));
                c.env("REALTIME_PY_MAX_RETRIES", "2")
                    .env("REALTIME_PY_INITIAL_BACKOFF", "0.2");
                c
            }
        };
        let mut child = cmd
            .env("REALTIME_URL", format!("ws://{}/realtime/v1", gw.addr))
            .env("REALTIME_APIKEY", token("anon", None))
            .env("REALTIME_PARAMS", params.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the client driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("driver printed a non-JSON line: {line}"),
                }
            }
        });
        let mut driver = Driver {
            child,
            stdin,
            events,
            log: Vec::new(),
        };
        driver.expect(|e| e["ev"] == "ready").await;
        driver
    }

    /// Sends one command.
    pub async fn send(&mut self, command: serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("driver stdin");
        self.stdin.flush().await.expect("driver stdin");
    }

    /// The next event matching `pred` (others are kept in `log`); fails after 20 s.
    pub async fn expect(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match next {
                Ok(Some(event)) => {
                    self.log.push(event.clone());
                    assert_ne!(event["ev"], "fatal", "driver failed: {event}");
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("driver exited; events: {:#?}", self.log),
                Err(_) => panic!("timed out; events so far: {:#?}", self.log),
            }
        }
    }

    /// Asks the driver to exit and waits for it.
    pub async fn exit(mut self) {
        self.send(serde_json::json!({"cmd": "exit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A gateway running as a separate process of the binary (to be killed, or to form a cluster).
#[derive(Debug)]
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub node_id: String,
}

impl GatewayProcess {
    /// Starts the binary on `db` as node `node_id` with extra environment `env`, on a free
    /// loopback port, and waits for `/ready`.
    pub async fn spawn(db: &TestDb, node_id: &str, env: &[(&str, &str)]) -> GatewayProcess {
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_realtime-gateway"));
            cmd.env("DATABASE_URL", &db.url)
                .env("JWT_SECRET", JWT_SECRET)
                .env("NODE_ID", node_id)
                .env("LISTEN_ADDR", addr.to_string())
                .env("JOIN_ERROR_DELAY", "0s")
                .env("CONNECT_ERROR_DELAY", "0s")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn gateway process");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken, or failed: try again
                }
                if matches!(http_get(addr, "/ready").await, Ok((200, _))) {
                    return GatewayProcess {
                        child,
                        addr,
                        node_id: node_id.to_owned(),
                    };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gateway {node_id} not ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("gateway process {node_id} would not start");
    }

    /// `ws://addr/realtime/v1/websocket?apikey=..&vsn=2.0.0`.
    pub fn ws_url(&self, apikey: &str) -> String {
        format!(
            "ws://{}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0",
            self.addr
        )
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
        self.child.wait().expect("wait")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
