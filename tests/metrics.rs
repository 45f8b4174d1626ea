//! `/metrics` from the first scrape: every metric of the catalog is there before any event,
//! the connection gauges follow clients, and no metric is recorded that the catalog lacks.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{eventually, http_get, TestDb, TestGateway, WsClient};
use realtime_gateway::admin::catalog::{Kind, METRICS};

/// The samples of a Prometheus text exposition (`name{labels}` → value) and the names with
/// `# HELP` and `# TYPE` lines.
#[derive(Debug, Default)]
struct Exposition {
    samples: HashMap<String, f64>,
    help: HashSet<String>,
    types: HashMap<String, String>,
}

fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            out.help
                .insert(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default().to_owned();
            out.types
                .insert(name, parts.next().unwrap_or_default().to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().expect("a number");
            out.samples.insert(series.to_owned(), value);
        }
    }
    out
}

async fn scrape(gw: &TestGateway) -> Exposition {
    let (status, body) = http_get(gw.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    parse(&body)
}

#[tokio::test]
async fn every_metric_is_listed_from_the_first_scrape_and_connections_follow_clients() {
    let db = TestDb::new().await;
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
    assert_eq!(first.samples["gateway_connections{scope=\"node\"}"], 0.0);
    assert_eq!(first.samples["gateway_connections{scope=\"cluster\"}"], 0.0);
    assert_eq!(
        first.samples["gateway_connections_max"],
        f64::from(gw.config.max_connections)
    );

    let a = WsClient::anon(&gw).await;
    let b = WsClient::anon(&gw).await;
    let now = scrape(&gw).await;
    assert_eq!(now.samples["gateway_connections{scope=\"node\"}"], 2.0);
    assert_eq!(now.samples["gateway_connections{scope=\"cluster\"}"], 2.0);
    drop((a, b));
    let gw_ref = &gw;
    eventually(
        Duration::from_secs(10),
        "connections back to 0",
        || async move {
            let s = scrape(gw_ref).await;
            s.samples["gateway_connections{scope=\"node\"}"] == 0.0
                && s.samples["gateway_connections{scope=\"cluster\"}"] == 0.0
        },
    )
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
