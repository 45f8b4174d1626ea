//! Gateway against baseline: the figures of the two runs of one invocation side by side, as
//! ratios `gateway / baseline`, and the targets stated as ratios.
//!
//! The baseline ran the same job, with the same clients, on the same machine just before; what
//! the ratio leaves out is everything both have to do (the clients, the sockets, the kernel),
//! so it is what the gateway's own work costs, whatever else the machine was doing.

use serde_json::{json, Value};

/// Figures a ratio is taken of: (name, JSON pointer in a result).
const RATIOS: [(&str, &str); 6] = [
    ("deliveries_per_s", "/deliveries_per_s"),
    ("p50_ms", "/latency_ms/p50"),
    ("p99_ms", "/latency_ms/p99"),
    ("kib_per_connection", "/gateway/kib_per_connection"),
    ("server_cpu_us_per_delivery", "/cpu_per_delivery_us/gateway"),
    ("connect_join_per_s", "/detail/connect_join_per_s"),
];

/// The targets stated against the baseline for this scenario (see BENCHMARKS.md):
/// (name, ratio, bound, higher is better).
fn ratio_targets(result: &Value) -> Vec<(&'static str, &'static str, f64, bool)> {
    let clients = result.pointer("/plan/clients").and_then(Value::as_u64);
    match result["scenario"].as_str() {
        Some("fanout") if clients.is_some_and(|c| c >= 10_000) => {
            vec![("p99 <= 2x baseline p99", "p99_ms", 2.0, false)]
        }
        Some("fanout") => vec![(
            "deliveries/s >= 0.5x baseline",
            "deliveries_per_s",
            0.5,
            true,
        )],
        Some("idle") => vec![(
            "<= 1.3x baseline memory per connection",
            "kib_per_connection",
            1.3,
            false,
        )],
        _ => Vec::new(),
    }
}

/// Adds the baseline run to the gateway's result: its figures under `baseline`, the ratios
/// under `vs_baseline`, the ratio targets to `targets`, and the baseline's own failures (a
/// reference that lost deliveries is no reference) to `failures`.
pub(crate) fn attach(gateway: &mut Value, baseline: &Value) {
    let mut ratios = serde_json::Map::new();
    for (name, pointer) in RATIOS {
        let g = gateway.pointer(pointer).and_then(Value::as_f64);
        let b = baseline.pointer(pointer).and_then(Value::as_f64);
        let ratio = g
            .zip(b)
            .filter(|&(_, b)| b > 0.0)
            .map(|(g, b)| (g / b * 1000.0).round() / 1000.0);
        ratios.insert(name.to_owned(), json!(ratio));
    }
    for (name, key, bound, higher) in ratio_targets(gateway) {
        let ratio = ratios.get(key).and_then(Value::as_f64);
        let met = ratio.is_some_and(|r| if higher { r >= bound } else { r <= bound });
        if let Some(targets) = gateway["targets"].as_array_mut() {
            targets.push(json!({"name": name, "value": ratio, "met": met}));
        }
    }
    let baseline_failures: Vec<Value> = baseline["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|f| json!(format!("baseline: {f}")))
        .collect();
    if let Some(failures) = gateway["failures"].as_array_mut() {
        failures.extend(baseline_failures);
        let pass = failures.is_empty();
        gateway["pass"] = json!(pass);
    }
    gateway["vs_baseline"] = Value::Object(ratios);
    let mut summary = baseline.clone();
    if let Some(obj) = summary.as_object_mut() {
        // The plan is the gateway's own; the timeline-free figures are what is compared.
        obj.remove("plan");
    }
    gateway["baseline"] = summary;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, clients: u64, per_s: f64, p99: f64, kib: f64) -> Value {
        json!({
            "scenario": scenario,
            "pass": true,
            "failures": [],
            "targets": [],
            "plan": {"clients": clients},
            "deliveries_per_s": per_s,
            "latency_ms": {"p50": 1.0, "p99": p99},
            "gateway": {"kib_per_connection": kib},
        })
    }

    #[test]
    fn ratios_and_targets_are_gateway_over_baseline() {
        let mut g = result("fanout", 1000, 400_000.0, 50.0, 20.0);
        attach(&mut g, &result("fanout", 1000, 1_000_000.0, 10.0, 10.0));
        assert_eq!(g["vs_baseline"]["deliveries_per_s"], 0.4);
        assert_eq!(g["vs_baseline"]["p99_ms"], 5.0);
        assert_eq!(g["vs_baseline"]["server_cpu_us_per_delivery"], Value::Null);
        assert_eq!(g["targets"][0]["name"], "deliveries/s >= 0.5x baseline");
        assert_eq!(g["targets"][0]["met"], false);
        assert_eq!(g["baseline"]["deliveries_per_s"], 1_000_000.0);

        let mut g = result("fanout", 10_000, 1.0, 30.0, 0.0);
        attach(&mut g, &result("fanout", 10_000, 1.0, 20.0, 0.0));
        assert_eq!(g["targets"][0]["name"], "p99 <= 2x baseline p99");
        assert_eq!(g["targets"][0]["met"], true);
    }

    #[test]
    fn a_failed_baseline_fails_the_comparison() {
        let mut g = result("idle", 100, 0.0, 0.0, 9.0);
        let mut b = result("idle", 100, 0.0, 0.0, 8.0);
        b["failures"] = json!(["3 deliveries lost"]);
        attach(&mut g, &b);
        assert_eq!(g["pass"], false);
        assert_eq!(g["failures"][0], "baseline: 3 deliveries lost");
        assert_eq!(g["targets"][0]["met"], true, "9 / 8 <= 1.3");
    }
}
