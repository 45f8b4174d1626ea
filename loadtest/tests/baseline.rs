//! The `loadtest` binary end to end, without a gateway or a database: the `baseline` scenario
//! starts its own server (a child process of the same executable), connects its clients to it
//! and checks every delivery.

use std::process::Command;

fn loadtest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
}

/// The baseline server and the clients agree on every frame: nothing lost, duplicated or out
/// of order, with two writers, and the server's process figures are read as the gateway's are.
#[test]
fn baseline_run_delivers_everything() {
    let json = std::env::temp_dir().join(format!("loadtest-baseline-{}.json", std::process::id()));
    let output = loadtest()
        .args([
            "baseline",
            "--clients",
            "20",
            "--rate",
            "100",
            "--writers",
            "2",
            "--duration",
            "2s",
            "--drain",
            "20s",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadtest baseline failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON result");
    std::fs::remove_file(&json).ok();
    let r: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(r["server"], "baseline");
    assert_eq!(r["deliveries"]["lost"], 0);
    assert_eq!(r["deliveries"]["out_of_order"], 0);
    assert_eq!(r["deliveries"]["duplicated"], 0);
    assert_eq!(r["deliveries"]["unstamped"], 0);
    let expected = r["deliveries"]["expected"].as_u64().unwrap();
    assert_eq!(r["clients"]["subscribed"], 20);
    assert_eq!(expected, 20 * r["changes_written"].as_u64().unwrap());
    assert!(expected > 0);
    assert_eq!(r["deliveries"]["received"].as_u64(), Some(expected));
    assert_eq!(r["detail"]["writer"]["writers"], 2);
    for figure in [
        "/gateway/cpu_s",
        "/gateway/kib_per_connection",
        "/cpu_per_delivery_us/gateway",
        "/cpu_per_delivery_us/loadtest",
        "/latency_ms/p99",
    ] {
        assert!(
            r.pointer(figure).is_some_and(serde_json::Value::is_number),
            "{figure} missing: {text}"
        );
    }
}

/// Every bad combination of flags is refused before anything starts, with exit code 2 and a
/// message naming the flag.
#[test]
fn bad_flags_are_refused_with_a_reason() {
    let secret = "0123456789abcdef0123";
    for (args, reason) in [
        (
            vec!["fanout", "--database-url", "postgres://127.0.0.1/x"],
            "--jwt-secret",
        ),
        (
            vec!["churn", "--url", "ws://127.0.0.1:1/a,ws://127.0.0.1:2/a"],
            "drives one gateway node",
        ),
        (
            vec![
                "fanout",
                "--url",
                "ws://127.0.0.1:1/a,ws://127.0.0.1:2/a",
                "--gateway-pid",
                "1",
            ],
            "one per --url",
        ),
        (vec!["churn", "--baseline"], "--baseline applies to"),
        (vec!["fanout", "--writers", "0"], "--writers"),
        (vec!["capture", "--rounds", "0"], "--rounds"),
    ] {
        let output = loadtest()
            .args(&args)
            .env(
                "JWT_SECRET",
                if reason == "--jwt-secret" { "" } else { secret },
            )
            .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
            .output()
            .expect("run loadtest");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
