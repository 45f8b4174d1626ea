//! Load-test harness for realtime-gateway: `loadtest <scenario> [flags]`.
//!
//! It speaks the realtime protocol itself (the gateway's own frame codec) and writes to
//! PostgreSQL itself, so commit-to-client latency is measured on one clock. Targets are
//! loopback only; every run is bounded in clients and time, shows progress on stderr, and ends
//! by itself. The last line of stdout is the JSON result; the exit code is non-zero when
//! anything was lost, duplicated or out of order, or any client failed.
//!
//! - [`cli`]: flags and their per-scenario defaults. [`target`]: the gateway's address.
//! - [`client`]: one simulated realtime-js client, over [`socket`] (a WebSocket that parses
//!   frames in place) and [`scan`] (deliveries read from the bytes). [`writer`]: the paced
//!   writers. [`bell`]: PostgreSQL's own commit-to-LISTEN latency, the floor for the gateway's.
//! - [`baseline`]: the same jobs served by a minimal server of the tool's own, the reference
//!   the gateway is compared with ([`compare`]).
//! - [`record`]: clock, commit log, counters, histograms, timeline. [`probe`]: the gateway's
//!   processes and database as seen from outside. [`pgcost`]: what a phase costs PostgreSQL.
//! - [`scenario`]: the scenarios. [`report`]: the HTML report.

mod baseline;
mod bell;
mod cli;
mod client;
mod compare;
mod pgcost;
mod probe;
mod record;
mod report;
mod scan;
mod scenario;
mod socket;
mod target;
mod writer;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// The same allocator as the gateway, set up alike (no transparent huge pages): the load
/// tester shares the machine with it, every CPU second it saves is one the gateway can use, and
/// the baseline server (`serve-baseline`) holds its memory the way the gateway does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Without the setting (an old kernel), only more memory: nothing to report.
    realtime_gateway::memory::no_huge_pages().ok();
    let plan = match cli::Args::parse().plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    raise_open_files_limit();
    if plan.scenario == cli::Scenario::ServeBaseline {
        return match baseline::server::serve(plan.payload_bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest serve-baseline: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(plan)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the plan (after its baseline, when asked) and reports; `Ok(pass)`.
async fn run(plan: cli::Plan) -> anyhow::Result<bool> {
    let baseline = match plan.scenario {
        cli::Scenario::Baseline => None,
        _ if plan.baseline => Some(run_baseline(plan.clone()).await?),
        _ => None,
    };
    let (run, mut result) = match plan.scenario {
        cli::Scenario::Baseline => run_baseline(plan).await?,
        _ => {
            let run = scenario::Run::new(plan).await?;
            let outcome = run.execute().await;
            run.probe.close().await;
            let report = outcome?;
            let result = scenario::result_json(&run, &report);
            (run, result)
        }
    };
    if let Some((_, b)) = &baseline {
        compare::attach(&mut result, b);
    }
    if let Some(path) = &run.plan.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    }
    if let Some(path) = &run.plan.report {
        let page = report::html(&result, &run.rec.latency(), &run.rec.timeline());
        std::fs::write(path, page).map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if let Some((_, b)) = &baseline {
        out.write_all(summary(b).as_bytes())?;
    }
    out.write_all(summary(&result).as_bytes())?;
    if let Some(ratios) = result["vs_baseline"].as_object() {
        let mut line = "vs baseline ".to_owned();
        for (name, ratio) in ratios {
            line.push_str(&format!(" {name} {ratio}"));
        }
        writeln!(out, "{line}")?;
    }
    writeln!(out, "{result}")?;
    out.flush()?;
    Ok(result["pass"].as_bool() == Some(true))
}

/// Runs the plan's job against a baseline server started for it, and stops the server.
async fn run_baseline(plan: cli::Plan) -> anyhow::Result<(scenario::Run, serde_json::Value)> {
    let server = baseline::Server::spawn(plan.payload_bytes).await?;
    let run = scenario::Run::baseline(plan, &server).await?;
    let outcome = run.execute().await;
    // Read while the server still runs: its CPU and memory come from its /proc entry.
    let result = outcome.map(|report| scenario::result_json(&run, &report));
    server.stop().await;
    let result = result.map_err(|e| e.context("baseline"))?;
    Ok((run, result))
}

/// The human-readable summary printed before the JSON line.
fn summary(r: &serde_json::Value) -> String {
    let v = |p: &str| {
        let value = r.pointer(p).cloned().unwrap_or_default();
        match value {
            serde_json::Value::Null => "n/a".to_owned(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    };
    let mut s = format!(
        "\n== loadtest {} ({}) : {} ==\n\
         clients      connected {} refused {} errors {} joins ok {} subscribed {}\n\
         changes      written {}\n\
         deliveries   expected {} received {} lost {} duplicated {} out of order {} ({} before the commit returned)\n\
         latency ms   p50 {} p95 {} p99 {} p99.9 {} max {}\n\
         pg notify ms p50 {} p95 {} p99 {} (commit to LISTEN on this machine: the floor)\n\
         throughput   {} deliveries/s\n\
         {:<12} rss {} KiB ({} before the clients), {} KiB per connection, {} pg connections, {} s cpu\n\
         postgres     {} s cpu (the gateway's child processes: its local-mode cluster)\n\
         loadtest     {} s cpu\n\
         cpu/delivery gateway {} µs, loadtest {} µs, postgres {} µs\n\
         presence     tracked {} refused {}\n\
         heartbeats   sent {} replies {} missed {}\n",
        v("/scenario"),
        v("/server"),
        if r["pass"].as_bool() == Some(true) { "PASS" } else { "FAIL" },
        v("/clients/connected"),
        v("/clients/refused"),
        v("/clients/errors"),
        v("/clients/joins_ok"),
        v("/clients/subscribed"),
        v("/changes_written"),
        v("/deliveries/expected"),
        v("/deliveries/received"),
        v("/deliveries/lost"),
        v("/deliveries/duplicated"),
        v("/deliveries/out_of_order"),
        v("/deliveries/early"),
        v("/latency_ms/p50"),
        v("/latency_ms/p95"),
        v("/latency_ms/p99"),
        v("/latency_ms/p999"),
        v("/latency_ms/max"),
        v("/detail/bell_latency_ms/p50"),
        v("/detail/bell_latency_ms/p95"),
        v("/detail/bell_latency_ms/p99"),
        v("/deliveries_per_s"),
        v("/server"),
        v("/gateway/rss_kib"),
        v("/gateway/rss_baseline_kib"),
        v("/gateway/kib_per_connection"),
        v("/gateway/pg_connections"),
        v("/gateway/cpu_s"),
        v("/gateway/postgres_cpu_s"),
        v("/loadtest/cpu_s"),
        v("/cpu_per_delivery_us/gateway"),
        v("/cpu_per_delivery_us/loadtest"),
        v("/cpu_per_delivery_us/postgres"),
        v("/presence/tracked"),
        v("/presence/refused"),
        v("/heartbeats/sent"),
        v("/heartbeats/replies"),
        v("/heartbeats/missed"),
    );
    for t in r["targets"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "target       {} {}: {}\n",
            if t["met"].as_bool() == Some(true) {
                "MET   "
            } else {
                "MISSED"
            },
            t["name"].as_str().unwrap_or_default(),
            t["value"]
        ));
    }
    for f in r["failures"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "failure      {}\n",
            f.as_str().unwrap_or_default()
        ));
    }
    for m in r["gateway"]["missing"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "gateway lacks {}\n",
            m.as_str().unwrap_or_default()
        ));
    }
    if let Some(kinds) = r["errors_by_kind"].as_object() {
        for (kind, n) in kinds {
            s.push_str(&format!("  {n:>8} x {kind}\n"));
        }
    }
    s
}

/// Raises this process's soft open-files limit to its hard limit (each client is a socket).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("loadtest: cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("loadtest: cannot read the open-files limit: {e}"),
    }
}
