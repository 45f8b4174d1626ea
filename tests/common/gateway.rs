//! The gateway in this test's runtime ([`TestGateway`] on 127.0.0.1:0), the secret its tokens
//! are signed with ([`JWT_SECRET`], [`token`]) and [`eventually`] for polling its state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use realtime_gateway::{Config, Shutdown};

use super::db::TestDb;
use super::http::http_get;

/// Secret every test gateway verifies tokens with.
pub const JWT_SECRET: &str = "test-secret-with-at-least-32-characters";

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

    /// The sum of the `/metrics` samples whose line starts with `name` (every label set of a
    /// metric, when `name` is its whole name).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.addr, "/metrics").await.expect("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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
