//! The baseline: the same job served by a minimal server of the load tester's own, so every
//! gateway figure has a reference measured on the same machine at the same moment.
//!
//! [`Server::spawn`] starts this same executable as `loadtest serve-baseline` (a child
//! process, so its memory and CPU are read from /proc exactly as the gateway's are, apart from
//! the clients'). The clients are the same code as for the gateway; the writer, instead of
//! inserting a row, hands `(run, n)` to the server through its stdin ([`Feed`]), and the
//! latency runs from that hand-over to the client's read. See [`server`] for how it serves.

pub(crate) mod frame;
pub(crate) mod server;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

/// Bytes of one message on the server's stdin: `run` (i64) and `n` (u64), little-endian.
pub(crate) const MESSAGE_LEN: usize = 16;
/// How long the server may take to stop once its stdin is closed.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// `(run, n)` from a message.
pub(crate) fn decode(message: &[u8; MESSAGE_LEN]) -> (i64, u64) {
    let mut run = [0u8; 8];
    let mut n = [0u8; 8];
    run.copy_from_slice(&message[..8]);
    n.copy_from_slice(&message[8..]);
    (i64::from_le_bytes(run), u64::from_le_bytes(n))
}

/// A message for `(run, n)`.
fn encode(run: i64, n: u64) -> [u8; MESSAGE_LEN] {
    let mut message = [0u8; MESSAGE_LEN];
    message[..8].copy_from_slice(&run.to_le_bytes());
    message[8..].copy_from_slice(&n.to_le_bytes());
    message
}

/// The writers' way to the server: its stdin. Cloned by every writer thread.
#[derive(Debug, Clone)]
pub(crate) struct Feed(Arc<Mutex<Option<ChildStdin>>>);

impl Feed {
    /// Hands row `n` of run `run` to the server, which fans it out at once.
    pub(crate) fn send(&self, run: i64, n: u64) -> std::io::Result<()> {
        let mut stdin = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("feed lock poisoned"))?;
        match stdin.as_mut() {
            Some(pipe) => pipe.write_all(&encode(run, n)),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// A running baseline server.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    addr: SocketAddr,
    feed: Feed,
}

impl Server {
    /// Starts `loadtest serve-baseline` and waits until it listens.
    pub(crate) async fn spawn(payload_bytes: usize) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("find the load tester's own executable")?;
        let mut child = Command::new(exe)
            .args([
                "serve-baseline",
                "--payload-bytes",
                &payload_bytes.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the baseline server")?;
        let stdout = child.stdout.take().context("baseline server stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        });
        let line = match tokio::time::timeout(Duration::from_secs(30), line).await {
            Ok(Ok(Ok(line))) => line,
            _ => {
                // Nothing useful to report beyond "it did not start": its stderr is ours.
                let _killed = child.kill();
                let _reaped = child.wait();
                bail!("the baseline server did not start");
            }
        };
        let Some(addr) = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
        else {
            let _killed = child.kill();
            let _reaped = child.wait();
            bail!("the baseline server said {line:?} instead of its address");
        };
        let stdin = child.stdin.take().context("baseline server stdin")?;
        Ok(Server {
            child,
            addr,
            feed: Feed(Arc::new(Mutex::new(Some(stdin)))),
        })
    }

    /// The WebSocket base URL the clients are given.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/realtime/v1", self.addr)
    }

    /// The server's process id (its RSS and CPU are read from /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The writers' way to the server.
    pub(crate) fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Closes the server's stdin, which ends it, and waits for it (killing it after
    /// [`STOP_PATIENCE`]).
    pub(crate) async fn stop(mut self) {
        if let Ok(mut stdin) = self.feed.0.lock() {
            stdin.take();
        }
        let deadline = tokio::time::Instant::now() + STOP_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stopped already, or the run is being abandoned: either way no server is left behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for (run, n) in [(0, 0), (-5, 7), (i64::MAX, u64::MAX)] {
            assert_eq!(decode(&encode(run, n)), (run, n));
        }
    }
}
