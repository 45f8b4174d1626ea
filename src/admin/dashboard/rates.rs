//! Messages per second and delivery latency between two samples, read from what `/metrics`
//! exposes: the delivered-messages counter and the delivery-latency histogram of the
//! Changes, broadcast and presence kinds (the ones clients subscribe to). The dashboard thus
//! shows the numbers an operator's Prometheus sees, with no second count on the hot path.
//!
//! The metrics recorder is the process's, so these are this process's deliveries: one node's.

/// The metric kinds counted: what clients subscribed to (not replies and system messages).
const KINDS: [&str; 3] = ["changes", "broadcast", "presence"];

/// Running totals read from one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Messages delivered so far.
    pub delivered: f64,
    /// The latency histogram's cumulative counts by upper bound (seconds, ascending; the last
    /// is infinite), summed over the kinds.
    pub buckets: Vec<(f64, f64)>,
}

/// What happened between two [`Totals`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Messages delivered per second.
    pub messages_per_second: f64,
    /// Median delivery latency in milliseconds; `None` without deliveries.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of delivery latency in milliseconds; `None` without deliveries.
    pub latency_p99_ms: Option<f64>,
}

/// The label `name` of a series' label text `a="x",b="y"`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

impl Totals {
    /// Reads the totals from a Prometheus text exposition; series it does not know are skipped.
    pub fn read(exposition: &str) -> Totals {
        let mut totals = Totals::default();
        for line in exposition.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if !label(labels, "kind").is_some_and(|kind| KINDS.contains(&kind)) {
                continue;
            }
            match name {
                "gateway_messages_delivered_total" => totals.delivered += value,
                "gateway_delivery_latency_seconds_bucket" => {
                    let bound = match label(labels, "le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse::<f64>() {
                            Ok(bound) => bound,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    match totals.buckets.iter_mut().find(|(b, _)| *b == bound) {
                        Some((_, count)) => *count += value,
                        None => totals.buckets.push((bound, value)),
                    }
                }
                _ => {}
            }
        }
        totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        totals
    }

    /// What happened from `earlier` to these totals, `seconds` apart.
    pub fn since(&self, earlier: &Totals, seconds: f64) -> Rates {
        let delivered = (self.delivered - earlier.delivered).max(0.0);
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|&(bound, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (bound, (count - before).max(0.0))
            })
            .collect();
        Rates {
            messages_per_second: if seconds > 0.0 {
                delivered / seconds
            } else {
                0.0
            },
            latency_p50_ms: quantile(&buckets, 0.5).map(|s| s * 1000.0),
            latency_p99_ms: quantile(&buckets, 0.99).map(|s| s * 1000.0),
        }
    }
}

/// The `q` quantile of cumulative `buckets` (ascending upper bounds), interpolated linearly
/// within its bucket as Prometheus's `histogram_quantile` does; an observation above the last
/// finite bound counts as that bound. `None` without observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let share = if count > lower.1 {
                (target - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE gateway_messages_delivered_total counter
gateway_messages_delivered_total{kind=\"changes\"} 10
gateway_messages_delivered_total{kind=\"broadcast\"} 5
gateway_messages_delivered_total{kind=\"reply\"} 1000
gateway_delivery_latency_seconds_bucket{kind=\"changes\",le=\"0.001\"} 2
gateway_delivery_latency_seconds_bucket{kind=\"changes\",le=\"0.01\"} 8
gateway_delivery_latency_seconds_bucket{kind=\"changes\",le=\"+Inf\"} 10
gateway_delivery_latency_seconds_sum{kind=\"changes\"} 0.2
gateway_delivery_latency_seconds_count{kind=\"changes\"} 10
";

    const AFTER: &str = "\
gateway_messages_delivered_total{kind=\"changes\"} 110
gateway_messages_delivered_total{kind=\"broadcast\"} 105
gateway_messages_delivered_total{kind=\"reply\"} 9000
gateway_delivery_latency_seconds_bucket{kind=\"changes\",le=\"0.001\"} 2
gateway_delivery_latency_seconds_bucket{kind=\"changes\",le=\"0.01\"} 108
gateway_delivery_latency_seconds_bucket{kind=\"changes\",le=\"+Inf\"} 110
gateway_delivery_latency_seconds_bucket{kind=\"broadcast\",le=\"0.001\"} 0
gateway_delivery_latency_seconds_bucket{kind=\"broadcast\",le=\"0.01\"} 0
gateway_delivery_latency_seconds_bucket{kind=\"broadcast\",le=\"+Inf\"} 100
gateway_delivery_latency_seconds_bucket{kind=\"reply\",le=\"0.001\"} 50
";

    /// Replies do not count, kinds are summed, and a bucket missing from the earlier
    /// exposition (a kind seen for the first time) counts from zero.
    #[test]
    fn rates_count_subscribed_kinds_between_two_expositions() {
        let before = Totals::read(BEFORE);
        assert_eq!(before.delivered, 15.0);
        assert_eq!(
            before.buckets,
            vec![(0.001, 2.0), (0.01, 8.0), (f64::INFINITY, 10.0)]
        );
        let after = Totals::read(AFTER);
        let rates = after.since(&before, 2.0);
        assert_eq!(rates.messages_per_second, 100.0);
        // 200 deliveries in the interval: 100 between 1 ms and 10 ms, 100 above 10 ms.
        let p50 = rates.latency_p50_ms.unwrap();
        assert!((p50 - 10.0).abs() < 1e-9, "{p50}");
        // Above the last finite bound: reported as that bound.
        assert_eq!(rates.latency_p99_ms, Some(10.0));
        let idle = after.since(&after, 1.0);
        assert_eq!(idle.messages_per_second, 0.0);
        assert_eq!(idle.latency_p50_ms, None);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let buckets = [(0.001, 0.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        let median = quantile(&buckets, 0.5).unwrap();
        assert!((median - 0.0055).abs() < 1e-12, "{median}");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(
            Totals::read("garbage\nx{kind=\"changes\"} y\n"),
            Totals::default()
        );
    }
}
