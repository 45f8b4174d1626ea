//! [`spawn_script`]: a Node.js script of tests/clients/js, its packages installed first, talked
//! to over stdin and stdout lines.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

/// A running script: its process, its stdin, and its stdout's lines.
#[derive(Debug)]
pub struct Script {
    pub child: tokio::process::Child,
    pub stdin: tokio::process::ChildStdin,
    pub lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

/// Runs tests/clients/setup.sh (it installs what is missing), then `node tests/clients/js/<script>`
/// with `env`; the script's stderr is the test's.
pub async fn spawn_script(script: &str, env: &[(&str, String)]) -> Script {
    let clients = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let setup = tokio::process::Command::new(clients.join("setup.sh"))
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run tests/clients/setup.sh");
    assert!(setup.success(), "tests/clients/setup.sh failed");
    let mut command = tokio::process::Command::new("node");
    command.arg(clients.join("js").join(script));
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start node tests/clients/js/{script}: {e}"));
    let stdin = child.stdin.take().unwrap();
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    Script {
        child,
        stdin,
        lines,
    }
}
