//! [`Driver`]: a real client (realtime-js under Node.js, or the Python `realtime`) run as a
//! child process and driven over stdin/stdout JSON lines (see tests/clients/README.md).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::gateway::{token, TestGateway};

/// Which real client a [`Driver`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// npm `@supabase/realtime-js` under Node.js.
    Js,
    /// PyPI `realtime` (supabase-py's client).
    Py,
}

static CLIENTS_SETUP: OnceLock<()> = OnceLock::new();

/// The folder of the real clients, installed (once per process) by tests/clients/setup.sh.
pub fn clients_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    CLIENTS_SETUP.get_or_init(|| {
        let status = Command::new(root.join("setup.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run tests/clients/setup.sh");
        assert!(status.success(), "tests/clients/setup.sh failed");
    });
    root
}

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
        Driver::start_with_env(client, gw, params, &[]).await
    }

    /// [`Driver::start`] with extra environment variables for the driver (e.g.
    /// `REALTIME_SOCKET_EVENTS`, see tests/clients/README.md).
    pub async fn start_with_env(
        client: Client,
        gw: &TestGateway,
        params: serde_json::Value,
        env: &[(&str, &str)],
    ) -> Driver {
        let root = clients_dir();
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
            .envs(env.iter().copied())
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
