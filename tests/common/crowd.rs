//! [`Crowd`]: unmodified realtime-js clients in one Node.js process
//! (tests/clients/js/crowd.mjs), each subscribed to a channel of its own, and their events.

use std::time::Duration;

use serde_json::Value;

use super::gateway::{token, TestGateway};

/// realtime-js clients in one process; they disconnect when it is dropped.
#[derive(Debug)]
pub struct Crowd {
    child: tokio::process::Child,
    /// Held open: the script runs until its stdin closes or it is killed.
    _stdin: tokio::process::ChildStdin,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    /// Every event read so far, for failure messages.
    pub log: Vec<Value>,
}

impl Crowd {
    /// Starts `clients` clients against `gw`; client `i` subscribes to channel `crowd<i>`.
    pub async fn start(gw: &TestGateway, clients: usize) -> Crowd {
        let super::node::Script {
            child,
            stdin,
            mut lines,
        } = super::node::spawn_script(
            "crowd.mjs",
            &[
                ("REALTIME_URL", format!("ws://{}/realtime/v1", gw.addr)),
                ("REALTIME_APIKEY", token("anon", None)),
                ("REALTIME_CLIENTS", clients.to_string()),
            ],
        )
        .await;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event: Value = serde_json::from_str(&line).expect("crowd prints JSON");
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Crowd {
            child,
            _stdin: stdin,
            events,
            log: Vec::new(),
        }
    }

    /// The next event satisfying `check` (others are kept in `log`); fails after `patience`.
    pub async fn until(&mut self, patience: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    assert_ne!(event["ev"], "fatal", "crowd failed: {event}");
                    self.log.push(event.clone());
                    if check(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("the crowd exited; events: {:#?}", self.log),
                Err(_) => panic!("timed out; crowd events so far: {:#?}", self.log),
            }
        }
    }

    /// The events already received and not read yet (they are kept in `log` too).
    pub fn pending(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            self.log.push(event.clone());
            events.push(event);
        }
        events
    }

    /// Waits until every one of `clients` clients reported `SUBSCRIBED`.
    pub async fn subscribed(&mut self, clients: usize) {
        let mut done = std::collections::HashSet::new();
        while done.len() < clients {
            let event = self
                .until(Duration::from_secs(30), |e| {
                    e["ev"] == "status" && e["status"] == "SUBSCRIBED"
                })
                .await;
            done.insert(event["client"].as_u64().unwrap());
        }
    }

    /// Disconnects every client (EOF on stdin) and waits for the process.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
