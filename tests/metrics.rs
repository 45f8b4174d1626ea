//! `/metrics` from the first scrape: every metric of the catalog is there before any event,
//! the operator gauges and counters follow clients (connections, channels and subscriptions by
//! kind, deliveries by kind, the delivery latency histogram, the outbox backlog, the pool, the
//! registry queue), and no metric is recorded that the catalog lacks.
//!
//! The recorder is one per process, so one test here runs a gateway: two would overwrite each
//! other's gauges between a scrape's sampling and its rendering.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{eventually, http_get, realtime_table, TestDb, TestGateway, WsClient};
use realtime_gateway::admin::catalog::{Kind, METRICS, SERIES};
use serde_json::json;

/// The samples of a Prometheus text exposition (`name{labels}` → value) and the names with
/// `# HELP` and `# TYPE` lines.
#[derive(Debug, Default)]
struct Exposition {
    samples: HashMap<String, f64>,
    help: HashSet<String>,
    types: HashMap<String, String>,
}

impl Exposition {
    /// The value of `series`, 0 when absent (a labelled series before its first value).
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

fn is_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Reads the label set `{k="v",...}` at the start of `text`; returns the rest after `}`.
fn labels(text: &str, line: &str) -> (Vec<(String, String)>, usize) {
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    assert_eq!(bytes.first(), Some(&'{'), "labels in {line:?}");
    let mut i = 1;
    loop {
        if bytes.get(i) == Some(&'}') {
            return (out, i + 1);
        }
        let start = i;
        while bytes.get(i).is_some_and(|&c| c != '=') {
            i += 1;
        }
        let name: String = bytes[start..i].iter().collect();
        assert!(is_name(&name, false), "label name {name:?} in {line:?}");
        assert_eq!(bytes.get(i + 1), Some(&'"'), "quoted value in {line:?}");
        i += 2;
        let mut value = String::new();
        loop {
            match bytes.get(i) {
                Some('"') => break,
                Some('\\') => {
                    value.push(match bytes.get(i + 1) {
                        Some('n') => '\n',
                        Some('\\') => '\\',
                        Some('"') => '"',
                        other => panic!("escape {other:?} in {line:?}"),
                    });
                    i += 2;
                }
                Some(&c) => {
                    value.push(c);
                    i += 1;
                }
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            !out.iter().any(|(n, _)| *n == name),
            "label {name} twice in {line:?}"
        );
        out.push((name, value));
        i += 1;
        match bytes.get(i) {
            Some(',') => i += 1,
            Some('}') => {}
            other => panic!("{other:?} after a label in {line:?}"),
        }
    }
}

/// Parses the text exposition format strictly: names and labels well formed, every sample after
/// its family's `# TYPE`, histogram samples only as `_bucket` (with `le`), `_sum`, `_count`,
/// each series once, values numbers (or `+Inf`, `-Inf`, `NaN`).
fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(is_name(name, true), "HELP of {name:?}");
            out.help.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default().to_owned();
            let kind = parts.next().unwrap_or_default().to_owned();
            assert!(is_name(&name, true), "TYPE of {name:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()),
                "type {kind:?} of {name}"
            );
            assert!(parts.next().is_none(), "{line:?}");
            assert!(
                out.types.insert(name.clone(), kind).is_none(),
                "TYPE of {name} twice"
            );
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let name_end = line.find(['{', ' ']).expect("a sample line");
            let name = &line[..name_end];
            assert!(is_name(name, true), "sample name {name:?}");
            let (labels, rest) = if line[name_end..].starts_with('{') {
                let (labels, used) = labels(&line[name_end..], line);
                (labels, &line[name_end + used..])
            } else {
                (Vec::new(), &line[name_end..])
            };
            let mut fields = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("{line:?}"))
                .split(' ');
            let value = match fields.next().unwrap_or_default() {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
            };
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .unwrap_or_else(|_| panic!("timestamp of {line:?}"));
            }
            assert!(fields.next().is_none(), "{line:?}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    let kind = out.types.get(base)?;
                    (kind == "histogram" || kind == "summary").then_some(base)
                })
                .unwrap_or(name);
            let kind = out
                .types
                .get(family)
                .unwrap_or_else(|| panic!("sample of {name} before its TYPE"));
            if kind == "histogram" {
                assert_ne!(family, name, "bare sample of histogram {name}");
                let has_le = labels.iter().any(|(n, _)| n == "le");
                assert_eq!(has_le, name.ends_with("_bucket"), "le on {line:?}");
            }
            let series = line[..line.len() - rest.len()].to_owned();
            assert!(
                out.samples.insert(series, value).is_none(),
                "series twice: {line:?}"
            );
        }
    }
    out
}

async fn scrape(gw: &TestGateway) -> Exposition {
    let (status, body) = http_get(gw.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    parse(&body)
}

/// Polls `/metrics` until `check` holds for a scrape (a counter is recorded after its write
/// completes, so a client may see a frame before the gateway counts it).
async fn until(gw: &TestGateway, what: &str, check: impl Fn(&Exposition) -> bool) -> Exposition {
    eventually(Duration::from_secs(10), what, || async {
        check(&scrape(gw).await)
    })
    .await;
    scrape(gw).await
}

const NODE: &str = "gateway_connections{scope=\"node\"}";
const CLUSTER: &str = "gateway_connections{scope=\"cluster\"}";

fn channels(kind: &str) -> String {
    format!("gateway_channels{{kind=\"{kind}\"}}")
}

fn delivered(kind: &str) -> String {
    format!("gateway_messages_delivered_total{{kind=\"{kind}\"}}")
}

fn latency_count(kind: &str) -> String {
    format!("gateway_delivery_latency_seconds_count{{kind=\"{kind}\"}}")
}

const SUBSCRIPTIONS: &str = "gateway_subscriptions{kind=\"postgres_changes\"}";
const BACKLOG_ROWS: &str = "gateway_outbox_backlog_rows";
const BACKLOG_AGE: &str = "gateway_outbox_backlog_age_seconds";

/// Guards against a metric missing before its first event (a dashboard or alert finding no
/// series), and against an operator metric that does not move with what it measures.
#[tokio::test]
async fn every_metric_is_listed_from_the_first_scrape_and_follows_clients() {
    let db = TestDb::new().await;
    realtime_table(&db, "metered", "note text").await;
    let gw = TestGateway::start(&db).await;
    let first = scrape(&gw).await;
    for &(kind, name, _, labelled) in METRICS {
        if kind == Kind::Histogram || labelled {
            continue; // no series before the first value of a distribution or a label
        }
        assert!(first.help.contains(name), "no HELP for {name}");
        let expected = if kind == Kind::Counter {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(
            first.types.get(name).map(String::as_str),
            Some(expected),
            "{name}"
        );
        assert!(first.samples.contains_key(name), "no sample for {name}");
    }
    for &(name, label, values) in SERIES {
        assert!(first.help.contains(name), "no HELP for {name}");
        for value in values {
            let series = format!("{name}{{{label}=\"{value}\"}}");
            assert!(first.samples.contains_key(&series), "no sample {series}");
        }
    }
    assert_eq!(first.samples[NODE], 0.0);
    assert_eq!(first.samples[CLUSTER], 0.0);
    assert_eq!(
        first.samples["gateway_connections_max"],
        f64::from(gw.config.max_connections)
    );
    for kind in ["postgres_changes", "broadcast", "presence"] {
        assert_eq!(first.samples[&channels(kind)], 0.0, "{kind}");
    }
    assert_eq!(first.samples[SUBSCRIPTIONS], 0.0);
    for kind in ["changes", "broadcast", "presence", "system", "reply"] {
        assert_eq!(first.samples[&delivered(kind)], 0.0, "{kind}");
    }
    assert_eq!(first.samples[BACKLOG_ROWS], 0.0);

    // One client with Postgres Changes, one with broadcast (to itself).
    let mut a = WsClient::anon(&gw).await;
    let mut b = WsClient::anon(&gw).await;
    a.subscribe(
        "realtime:metered-changes",
        json!([{"event": "INSERT", "schema": "public", "table": "metered"}]),
    )
    .await;
    let reply = b
        .join(
            "realtime:metered-chat",
            json!({"broadcast": {"self": true}}),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let joined = until(&gw, "joins counted", |s| {
        s.get(&delivered("reply")) >= 2.0 && s.get(&delivered("system")) >= 1.0
    })
    .await;
    assert_eq!(joined.samples[NODE], 2.0);
    assert_eq!(joined.samples[CLUSTER], 2.0);
    assert_eq!(joined.samples[&channels("postgres_changes")], 1.0);
    assert_eq!(joined.samples[SUBSCRIPTIONS], 1.0);
    // Both channels are public: both receive broadcasts and presence.
    assert_eq!(joined.samples[&channels("broadcast")], 2.0);
    assert_eq!(joined.samples[&channels("presence")], 2.0);
    assert!(joined.get("gateway_db_pool_connections{state=\"in_use\"}") >= 0.0);
    assert!(
        joined.get("gateway_db_pool_connections{state=\"in_use\"}")
            + joined.get("gateway_db_pool_connections{state=\"idle\"}")
            >= 1.0,
        "the pool has a connection"
    );

    // A change and a broadcast, each delivered once.
    let before = joined;
    let mut conn = db.connect().await;
    sqlx::query("insert into metered (note) values ('one')")
        .execute(&mut conn)
        .await
        .unwrap();
    a.expect_event("realtime:metered-changes", "postgres_changes")
        .await;
    b.send(
        None,
        "realtime:metered-chat",
        "broadcast",
        json!({"type": "broadcast", "event": "ping", "payload": {"n": 1}}),
    )
    .await;
    b.expect_event("realtime:metered-chat", "broadcast").await;
    let after = until(&gw, "deliveries and latencies counted", |s| {
        s.get(&delivered("changes")) > before.get(&delivered("changes"))
            && s.get(&delivered("broadcast")) > before.get(&delivered("broadcast"))
            && s.get(&latency_count("changes")) > before.get(&latency_count("changes"))
            && s.get(&latency_count("broadcast")) > before.get(&latency_count("broadcast"))
    })
    .await;
    assert_eq!(
        after
            .types
            .get("gateway_delivery_latency_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert!(after.help.contains("gateway_delivery_latency_seconds"));
    for kind in ["changes", "broadcast"] {
        let inf = format!("gateway_delivery_latency_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}}");
        assert_eq!(after.get(&inf), after.get(&latency_count(kind)), "{kind}");
        let sum = format!("gateway_delivery_latency_seconds_sum{{kind=\"{kind}\"}}");
        assert!(after.get(&sum) >= 0.0, "{kind}");
        assert!(
            after.get(&sum) < 10.0 * after.get(&latency_count(kind)),
            "{kind}"
        );
    }
    until(&gw, "outbox read to the end", |s| {
        s.get(BACKLOG_ROWS) == 0.0 && s.get(BACKLOG_AGE) == 0.0
    })
    .await;

    drop((a, b));
    let left = until(&gw, "connections and channels back to 0", |s| {
        s.get(NODE) == 0.0
            && s.get(CLUSTER) == 0.0
            && ["postgres_changes", "broadcast", "presence"]
                .iter()
                .all(|kind| s.get(&channels(kind)) == 0.0)
            && s.get(SUBSCRIPTIONS) == 0.0
    })
    .await;
    assert!(left.get(&delivered("changes")) >= after.get(&delivered("changes")));
    until(&gw, "registry written", |s| {
        s.get("gateway_registry_pending") == 0.0
    })
    .await;
    gw.stop().await.unwrap();
}

/// Every metric name the source records is in the catalog, and the catalog names nothing the
/// source never records.
#[test]
fn the_catalog_lists_exactly_what_the_source_records() {
    let catalog: HashSet<&str> = METRICS.iter().map(|m| m.1).collect();
    let mut recorded = HashSet::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("admin/catalog.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Every string literal that looks like one of our metric names.
            for piece in text.split('"').skip(1).step_by(2) {
                if piece.starts_with("gateway_")
                    && piece
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    recorded.insert(piece.to_owned());
                }
            }
        }
    }
    let missing: Vec<&String> = recorded
        .iter()
        .filter(|n| !catalog.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "recorded but not in the catalog: {missing:?}"
    );
    let unused: Vec<&&str> = catalog.iter().filter(|n| !recorded.contains(**n)).collect();
    assert!(
        unused.is_empty(),
        "in the catalog but never recorded: {unused:?}"
    );
}
