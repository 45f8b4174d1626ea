//! [`AdminPage`]: headless Chromium on the admin dashboard (tests/clients/js/dashboard.mjs),
//! driven over stdin/stdout JSON lines, with the log of every request the page made.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Chromium on the admin page.
pub struct AdminPage {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl std::fmt::Debug for AdminPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminPage").finish_non_exhaustive()
    }
}

impl AdminPage {
    /// Installs the clients' packages if needed and starts the browser.
    pub async fn start() -> AdminPage {
        let super::node::Script {
            child,
            stdin,
            lines,
        } = super::node::spawn_script("dashboard.mjs", &[]).await;
        let mut page = AdminPage {
            child,
            stdin,
            lines,
        };
        page.answer("ready").await;
        page
    }

    /// The next line, which must be event `ev` (60 s at most: the browser's start included).
    async fn answer(&mut self, ev: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{ev}` from the browser within 60 s"))
            .expect("browser stdout")
            .unwrap_or_else(|| panic!("the browser driver exited before `{ev}` (see stderr)"));
        let value: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(value["ev"], ev, "{value}");
        value
    }

    async fn command(&mut self, command: Value, answer: &str) -> Value {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        self.answer(answer).await
    }

    /// Opens `url` in a fresh browser context (empty storage, empty request log); its status.
    pub async fn open(&mut self, url: &str) -> u16 {
        let opened = self
            .command(json!({"cmd": "open", "url": url}), "opened")
            .await;
        opened["status"].as_u64().map_or(0, |s| s as u16)
    }

    /// Types `text` into the field `selector`.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        self.command(
            json!({"cmd": "type", "selector": selector, "text": text}),
            "typed",
        )
        .await;
    }

    /// Clicks `selector`.
    pub async fn click(&mut self, selector: &str) {
        self.command(json!({"cmd": "click", "selector": selector}), "clicked")
            .await;
    }

    /// Waits until the page's JavaScript expression `expr` is truthy (30 s at most; the page is
    /// polled every 100 ms); returns its value.
    pub async fn wait(&mut self, what: &str, expr: &str) -> Value {
        let cmd = json!({"cmd": "wait", "expr": expr, "timeout": 30_000});
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer from the browser while waiting for {what}"))
            .expect("browser stdout")
            .expect("the browser driver exited");
        let value: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(
            value["ev"], "waited",
            "the page never showed {what}: {value}"
        );
        value["value"].clone()
    }

    /// The value of the page's JavaScript expression `expr`.
    pub async fn eval(&mut self, expr: &str) -> Value {
        self.command(json!({"cmd": "eval", "expr": expr}), "value")
            .await["value"]
            .clone()
    }

    /// Saves a screenshot of the whole page at `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        self.command(
            json!({"cmd": "screenshot", "path": path.to_str().unwrap()}),
            "saved",
        )
        .await;
    }

    /// Every request the page made since it was opened (`{url, method, type}`), and every line
    /// it wrote to its console (`<type>: <text>`, page errors and policy violations included).
    pub async fn log(&mut self) -> (Vec<Value>, Vec<String>) {
        let answer = self.command(json!({"cmd": "requests"}), "requests").await;
        let requests = answer["requests"].as_array().cloned().unwrap_or_default();
        let console = answer["console"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (requests, console)
    }

    /// Closes the browser.
    pub async fn exit(mut self) {
        self.stdin.write_all(b"{\"cmd\":\"exit\"}\n").await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
