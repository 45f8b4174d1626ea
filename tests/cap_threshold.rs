//! The connection-cap watcher (README "Admin dashboard"): when the cluster's open connections
//! cross `ADMIN_WARN_PERCENT` of the cap, one warning is logged and one `cap_threshold_crossed`
//! audited, by one node of the cluster, however many nodes watch and however long the count
//! stays up; the watcher re-arms only below `ADMIN_CLEAR_PERCENT`, and the next crossing is
//! recorded again.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http_get, token, SseStream, TestDb, TestGateway, WsClient};
use serde_json::Value;

/// A `Write` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    /// Log lines containing `text`.
    fn lines_with(&self, text: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }
}

const CROSSED_LOG: &str = "connections crossed the warning threshold of the cap";
const CLEARED_LOG: &str = "connections back below the clear threshold of the cap";

/// One node's sample stream.
struct Samples {
    stream: SseStream,
    node: &'static str,
}

impl Samples {
    async fn open(gw: &TestGateway, node: &'static str) -> Samples {
        let bearer = format!("Bearer {}", token("service_role", None));
        let stream = SseStream::open(gw.addr, "/admin/stream", &[("Authorization", &bearer)])
            .await
            .unwrap_or_else(|answer| panic!("stream refused: {answer:?}"));
        Samples { stream, node }
    }

    /// Reads samples until one satisfies `check` (30 s at most); returns it.
    async fn until(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no sample with {what}; last: {last}",
                self.node
            );
            let event =
                tokio::time::timeout(left, self.stream.next_within(Duration::from_secs(60)))
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{}: no sample with {what}; last: {last}", self.node)
                    })
                    .unwrap_or_else(|| panic!("{}: the stream ended", self.node));
            if event.event != "sample" {
                continue;
            }
            let sample = event.json();
            if check(&sample) {
                return sample;
            }
            last = sample;
        }
    }

    /// Waits for a sample counting `n` connections in `state`, then for two samples more: the
    /// node checked the count against the thresholds at least twice more after seeing it.
    async fn settled(&mut self, n: i64, warning: bool) {
        let what = format!("{n} connections, warning {warning}");
        let seen = self
            .until(&what, |s| {
                s["connections"]["cluster"] == n && s["connections"]["warning"] == warning
            })
            .await;
        let seq = seen["seq"].as_u64().unwrap();
        let later = self
            .until("two samples more", |s| s["seq"].as_u64() >= Some(seq + 2))
            .await;
        assert_eq!(later["connections"]["cluster"], n, "{}: {later}", self.node);
        assert_eq!(
            later["connections"]["warning"], warning,
            "{}: {later}",
            self.node
        );
    }
}

/// The `cap_threshold_crossed` records, oldest first.
async fn crossings(db: &TestDb) -> Vec<Value> {
    let pool = db.pool().await;
    let rows: Vec<(Value, Option<String>)> = sqlx::query_as(
        "select detail, node_id from realtime.audit_log \
         where kind = 'cap_threshold_crossed' order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().map(|(detail, _)| detail).collect()
}

/// `gateway_admin_cap_crossings_total` as `/metrics` shows it (the process's recorder, shared
/// by both gateways of this test, the only test of this file).
async fn crossings_counted(gw: &TestGateway) -> f64 {
    let (status, body) = http_get(gw.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("gateway_admin_cap_crossings_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("gateway_admin_cap_crossings_total is exposed")
}

/// Guards against a warning per check (or per node) while the count stays above the
/// threshold, against flapping between the two thresholds, and against a watcher that never
/// re-arms: two nodes on one database with a cap of 5 (warning from 4, cleared below 3.5).
#[tokio::test]
async fn a_crossing_is_logged_and_audited_once_per_cluster_and_again_after_clearing() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(realtime_gateway::telemetry::filter("info"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test's runtime is one thread: both gateways log through this.
    let _guard = tracing::subscriber::set_default(subscriber);
    let db = TestDb::new().await;
    let settings = |c: &mut realtime_gateway::Config| {
        c.max_connections = 5;
        c.dashboard.admin_sample_interval = Duration::from_millis(100);
    };
    let a = TestGateway::start_with(&db, settings).await;
    let b = TestGateway::start_with(&db, settings).await;
    let counted_before = crossings_counted(&a).await;
    let mut on_a = Samples::open(&a, "a").await;
    let mut on_b = Samples::open(&b, "b").await;

    let mut a1 = WsClient::anon(&a).await;
    let _a2 = WsClient::anon(&a).await;
    let _b1 = WsClient::anon(&b).await;
    on_a.settled(3, false).await;
    on_b.settled(3, false).await;
    assert!(crossings(&db).await.is_empty());

    // 4 of 5: 80 %, a crossing.
    let b2 = WsClient::anon(&b).await;
    on_a.settled(4, true).await;
    on_b.settled(4, true).await;
    let recorded = crossings(&db).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["in_use"], 4);
    assert_eq!(recorded[0]["cap"], 5);
    assert_eq!(recorded[0]["warn_percent"], 80);
    assert_eq!(buffer.lines_with(CROSSED_LOG), 1);

    // Still above, at the cap, and back to 4: no new crossing on either node.
    let a3 = WsClient::anon(&a).await;
    on_a.settled(5, true).await;
    on_b.settled(5, true).await;
    drop(a3);
    on_a.settled(4, true).await;
    on_b.settled(4, true).await;
    assert_eq!(crossings(&db).await.len(), 1);
    assert_eq!(buffer.lines_with(CROSSED_LOG), 1);
    assert_eq!(buffer.lines_with(CLEARED_LOG), 0);

    // 3 of 5 is below 70 %: the watcher re-arms, once.
    drop(b2);
    on_a.settled(3, false).await;
    on_b.settled(3, false).await;
    assert_eq!(buffer.lines_with(CLEARED_LOG), 1);
    assert_eq!(crossings(&db).await.len(), 1);

    // Crossing again is recorded again.
    let _b3 = WsClient::anon(&b).await;
    on_a.settled(4, true).await;
    on_b.settled(4, true).await;
    assert_eq!(crossings(&db).await.len(), 2);
    assert_eq!(buffer.lines_with(CROSSED_LOG), 2);
    assert_eq!(crossings_counted(&a).await - counted_before, 2.0);

    // The first client's socket still works: the watcher closes nothing.
    a1.send(None, "phoenix", "heartbeat", serde_json::json!({}))
        .await;
    a1.expect_event("phoenix", "phx_reply").await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
