//! The self-contained HTML report: the result as tables, and SVG charts drawn with plotters
//! (latency histogram, latency percentiles over time, connections over time, deliveries per
//! second, gateway memory and CPU). Everything is inline; the page loads nothing.

use std::fmt::Write as _;

use plotters::prelude::*;
use serde_json::Value;

use crate::record::Sample;

/// Chart size in pixels.
const SIZE: (u32, u32) = (900, 340);

/// One line of a time chart.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Renders the report page.
pub(crate) fn html(
    result: &Value,
    latency: &hdrhistogram::Histogram<u64>,
    timeline: &[Sample],
) -> String {
    let scenario = result["scenario"].as_str().unwrap_or("run");
    let mut page = String::new();
    let verdict = if result["pass"].as_bool() == Some(true) {
        "<span class=pass>pass</span>"
    } else {
        "<span class=fail>fail</span>"
    };
    put(&mut page, format_args!("<!doctype html><html><head><meta charset=utf-8><title>loadtest {scenario}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
         .pass{{color:#080;font-weight:bold}}.fail{{color:#b00;font-weight:bold}}\
         pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>\
         <h1>realtime-gateway loadtest: {scenario} {verdict}</h1>"
    ));
    if let Some(failures) = result["failures"].as_array().filter(|f| !f.is_empty()) {
        page.push_str("<h2>Failures</h2><ul>");
        for f in failures {
            put(
                &mut page,
                format_args!("<li>{}</li>", escape(f.as_str().unwrap_or_default())),
            );
        }
        page.push_str("</ul>");
    }
    if let Some(targets) = result["targets"].as_array().filter(|t| !t.is_empty()) {
        page.push_str(
            "<h2>Targets</h2><table><tr><th>target</th><th>measured</th><th>met</th></tr>",
        );
        for t in targets {
            let met = if t["met"].as_bool() == Some(true) {
                "<span class=pass>yes</span>"
            } else {
                "<span class=fail>no</span>"
            };
            put(
                &mut page,
                format_args!(
                    "<tr><td>{}</td><td>{}</td><td>{met}</td></tr>",
                    escape(t["name"].as_str().unwrap_or_default()),
                    escape(&plain(&t["value"]))
                ),
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Results</h2><table>");
    for key in [
        "clients",
        "deliveries",
        "latency_ms",
        "cpu_per_delivery_us",
        "gateway",
        "presence",
        "heartbeats",
    ] {
        push_rows(&mut page, key, &result[key]);
    }
    if result["vs_baseline"].is_object() {
        page.push_str(
            "</table><h2>Against the baseline</h2><p>Ratios gateway / baseline server, same job, \
             same invocation.</p><table>",
        );
        push_rows(&mut page, "vs_baseline", &result["vs_baseline"]);
        for key in ["deliveries", "latency_ms", "cpu_per_delivery_us", "gateway"] {
            push_rows(
                &mut page,
                &format!("baseline.{key}"),
                &result["baseline"][key],
            );
        }
    }
    put(&mut page, format_args!("<tr><th>changes_written</th><td>{}</td></tr><tr><th>deliveries_per_s</th><td>{}</td></tr></table>",
        plain(&result["changes_written"]),
        plain(&result["deliveries_per_s"])
    ));
    page.push_str("<h2>Charts</h2>");
    if !latency.is_empty() {
        push_chart(&mut page, latency_histogram(latency));
    }
    let t = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t_s, v)))
            .collect()
    };
    if timeline.iter().any(|s| s.p50_ms.is_some()) {
        push_chart(
            &mut page,
            time_chart(
                "Delivery latency per second",
                "ms",
                &[
                    ("p50", BLUE, t(&|s| s.p50_ms)),
                    ("p95", GREEN, t(&|s| s.p95_ms)),
                    ("p99", RGBColor(230, 140, 0), t(&|s| s.p99_ms)),
                    ("max", RED, t(&|s| s.max_ms)),
                ],
            ),
        );
    }
    push_chart(
        &mut page,
        time_chart(
            "Connections",
            "clients",
            &[
                ("open sockets", BLUE, t(&|s| Some(s.open as f64))),
                (
                    "subscribed channels",
                    GREEN,
                    t(&|s| Some(s.subscribed as f64)),
                ),
            ],
        ),
    );
    if timeline.iter().any(|s| s.deliveries_per_s > 0.0) {
        push_chart(
            &mut page,
            time_chart(
                "Deliveries per second",
                "deliveries/s",
                &[("received", BLUE, t(&|s| Some(s.deliveries_per_s)))],
            ),
        );
    }
    if timeline.iter().any(|s| s.gateway_rss_kib.is_some()) {
        push_chart(
            &mut page,
            time_chart(
                "Gateway resident memory",
                "MiB",
                &[(
                    "rss",
                    BLUE,
                    t(&|s| s.gateway_rss_kib.map(|k| k as f64 / 1024.0)),
                )],
            ),
        );
    }
    push_chart(
        &mut page,
        time_chart(
            "CPU (100% = one core)",
            "%",
            &[
                ("gateway", BLUE, t(&|s| s.gateway_cpu_pct)),
                ("loadtest", RED, t(&|s| s.loadtest_cpu_pct)),
            ],
        ),
    );
    put(
        &mut page,
        format_args!(
            "<h2>JSON result</h2><pre>{}</pre></body></html>",
            escape(&serde_json::to_string_pretty(result).unwrap_or_default())
        ),
    );
    page
}

/// One table row per field of the object `value`, labelled `prefix.field`.
fn push_rows(page: &mut String, prefix: &str, value: &Value) {
    if let Some(obj) = value.as_object() {
        for (k, v) in obj {
            put(
                page,
                format_args!(
                    "<tr><th>{prefix}.{k}</th><td>{}</td></tr>",
                    escape(&plain(v))
                ),
            );
        }
    }
}

/// Appends formatted text; writing into a `String` cannot fail, so the result is dropped.
fn put(page: &mut String, args: std::fmt::Arguments<'_>) {
    page.write_fmt(args).ok();
}

fn push_chart(page: &mut String, chart: Result<String, String>) {
    match chart {
        Ok(svg) => {
            page.push_str("<div>");
            page.push_str(&svg);
            page.push_str("</div>");
        }
        Err(e) => {
            put(page, format_args!("<p>chart failed: {}</p>", escape(&e)));
        }
    }
}

/// A value as plain text (strings without quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "n/a".to_owned(),
        other => other.to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency histogram: log-spaced buckets of the whole run, in ms.
fn latency_histogram(h: &hdrhistogram::Histogram<u64>) -> Result<String, String> {
    // Bucket edges: 20 per decade between the smallest and largest value.
    let lo = (h.min().max(1) as f64 / 1e3).log10().floor();
    let hi = (h.max().max(1) as f64 / 1e3).log10().ceil().max(lo + 1.0);
    let steps = ((hi - lo) * 20.0) as usize;
    let edges: Vec<f64> = (0..=steps)
        .map(|i| 10f64.powf(lo + i as f64 / 20.0))
        .collect();
    let mut bars = Vec::with_capacity(steps);
    for w in edges.windows(2) {
        let (a, b) = ((w[0] * 1e3) as u64, (w[1] * 1e3) as u64);
        let count = h.count_between(a, b.saturating_sub(1).max(a));
        bars.push((w[0], w[1], count as f64));
    }
    let top = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Delivery latency, whole run", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((edges[0]..edges[steps]).log_scale(), 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("latency, ms (log scale)")
            .y_desc("deliveries")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                bars.iter()
                    .map(|&(a, b, n)| Rectangle::new([(a, 0.0), (b, n)], BLUE.mix(0.6).filled())),
            )
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Lines over the run's seconds.
fn time_chart(title: &str, unit: &str, series: &[Series<'_>]) -> Result<String, String> {
    let t_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc(unit)
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, color, points) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_self_contained_with_charts() {
        let mut h = crate::record::histogram();
        for us in [800, 1200, 1500, 3000, 40_000] {
            h.record(us).unwrap();
        }
        let timeline: Vec<Sample> = (1..5)
            .map(|i| Sample {
                t_s: f64::from(i),
                open: 10,
                subscribed: 10,
                deliveries_per_s: 100.0,
                p50_ms: Some(1.0),
                p99_ms: Some(3.0),
                gateway_rss_kib: Some(20_000),
                ..Sample::default()
            })
            .collect();
        let result = serde_json::json!({
            "scenario": "seed",
            "pass": true,
            "clients": {"connected": 10},
            "vs_baseline": {"p99_ms": 1.5},
            "baseline": {"latency_ms": {"p99": 2.0}},
        });
        let page = html(&result, &h, &timeline);
        assert!(page.contains("vs_baseline.p99_ms</th><td>1.5"));
        assert!(page.contains("baseline.latency_ms.p99</th><td>2.0"));
        assert!(page.contains("<svg"), "charts are inline svg");
        assert!(page.matches("<svg").count() >= 4);
        assert!(!page.contains("<script"), "no scripts");
        assert!(
            !page.contains("src=\"http") && !page.contains("<link"),
            "nothing fetched"
        );
    }
}
