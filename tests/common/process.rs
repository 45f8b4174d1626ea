//! The gateway as a separate process of the binary ([`GatewayProcess`]), and small helpers for
//! tests that run processes: [`read_line_containing`], [`process_alive`], [`temp_dir`].

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::db::TestDb;
use super::gateway::JWT_SECRET;
use super::http::http_get;

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

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process pauses as a frozen machine would.
    pub fn pause(&self, pause: bool) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let signal = if pause {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(pid, signal).expect("signal");
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
