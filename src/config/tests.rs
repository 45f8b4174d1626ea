use super::*;
use clap::{CommandFactory, FromArgMatches};

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["realtime-gateway"];
    argv.extend_from_slice(args);
    // Ignore the environment so a DATABASE_URL set for the test run does not leak in.
    let command = Cli::command().mut_args(|a| a.env(None::<&str>));
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    cli.settings.check().map_err(|e| e.to_string())
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = parse(&[]).expect("defaults");
    assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(c.max_connections, 200);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(60));
    assert!(c.database_url.is_none());
    assert!(!c.metrics_auth);
    assert!(c.admin_token.is_none());
    assert_eq!(c.max_auth_failures, 5);
    assert_eq!(c.auth_failure_window, Duration::from_secs(300));
    assert!(c.trusted_proxies.is_empty());
    assert_eq!(c.change_read_spacing, Duration::from_millis(20));
}

#[test]
fn read_spacing_goes_from_none_to_a_second() {
    let c = parse(&["--change-read-spacing", "0ms"]).unwrap();
    assert_eq!(c.change_read_spacing, Duration::ZERO);
    let c = parse(&["--change-read-spacing", "1s"]).unwrap();
    assert_eq!(c.change_read_spacing, Duration::from_secs(1));
    let e = parse(&["--change-read-spacing", "1001ms"]).unwrap_err();
    assert!(
        e.contains("--change-read-spacing must be at most 1s"),
        "{e}"
    );
}

#[test]
fn trusted_proxies_are_ips_or_cidrs() {
    let c = parse(&["--trusted-proxies", "10.0.0.0/8,127.0.0.1,::1"]).unwrap();
    assert_eq!(c.trusted_proxies.len(), 3);
    let net = c.trusted_proxies[0];
    assert!(net.contains("10.1.2.3".parse().unwrap()));
    assert!(!net.contains("11.0.0.1".parse().unwrap()));
    assert!(c.trusted_proxies[1].contains("::ffff:127.0.0.1".parse().unwrap()));
    assert!(c.trusted_proxies[2].contains("::1".parse().unwrap()));
    assert!(parse(&["--trusted-proxies", "10.0.0.0/33"]).is_err());
    assert!(parse(&["--trusted-proxies", "proxy"]).is_err());
}

#[test]
fn durations_read_like_30s_and_500ms() {
    let c = parse(&["--heartbeat-interval", "500ms", "--heartbeat-timeout", "2s"]).unwrap();
    assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(2));
}

#[test]
fn bad_settings_fail_with_a_clear_message() {
    let e = parse(&["--heartbeat-interval", "soon"]).unwrap_err();
    assert!(e.contains("write durations like"), "{e}");
    let e = parse(&["--heartbeat-interval", "60s", "--heartbeat-timeout", "30s"]).unwrap_err();
    assert!(e.contains("--heartbeat-timeout must be longer"), "{e}");
    let e = parse(&["--max-connections", "0"]).unwrap_err();
    assert!(e.contains("--max-connections must be at least 1"), "{e}");
    let e = parse(&["--database-url", "postgres://x@127.0.0.1/db"]).unwrap_err();
    assert!(e.contains("JWT_SECRET"), "{e}");
    let e = parse(&["--embedded-db", "false"]).unwrap_err();
    assert!(
        e.contains("DATABASE_URL) is required when EMBEDDED_DB=false"),
        "{e}"
    );
    let e = parse(&["--admin-token", "short"]).unwrap_err();
    assert!(e.contains("--admin-token must be at least 16"), "{e}");
    let e = parse(&["--listen", "nowhere"]).unwrap_err();
    assert!(e.contains("--listen"), "{e}");
}

#[test]
fn stored_messages_are_kept_72_hours_and_at_least_10_minutes() {
    assert_eq!(
        parse(&[]).unwrap().message_retention,
        Duration::from_secs(72 * 3600)
    );
    let c = parse(&["--message-retention", "1day"]).unwrap();
    assert_eq!(c.message_retention, Duration::from_secs(24 * 3600));
    let e = parse(&["--message-retention", "5m"]).unwrap_err();
    assert!(
        e.contains("--message-retention must be at least 10m"),
        "{e}"
    );
}

#[test]
fn dashboard_thresholds_default_to_80_and_70_percent_and_must_leave_a_gap() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.dashboard.admin_warn_percent, 80);
    assert_eq!(c.dashboard.admin_clear_percent, 70);
    assert_eq!(c.dashboard.admin_sample_interval, Duration::from_secs(1));
    let c = parse(&["--admin-warn-percent", "90", "--admin-clear-percent", "85"]).unwrap();
    assert_eq!(c.dashboard.admin_warn_percent, 90);
    let e = parse(&["--admin-warn-percent", "70"]).unwrap_err();
    assert!(
        e.contains("--admin-clear-percent must be at least 1 and below"),
        "{e}"
    );
    let e = parse(&["--admin-warn-percent", "101"]).unwrap_err();
    assert!(
        e.contains("--admin-warn-percent must be between 2 and 100"),
        "{e}"
    );
    let e = parse(&["--admin-clear-percent", "0"]).unwrap_err();
    assert!(
        e.contains("--admin-clear-percent must be at least 1"),
        "{e}"
    );
    let e = parse(&["--admin-sample-interval", "10ms"]).unwrap_err();
    assert!(
        e.contains("--admin-sample-interval must be between 100ms and 1m"),
        "{e}"
    );
    let e = parse(&["--admin-warn-percent", "many"]).unwrap_err();
    assert!(e.contains("--admin-warn-percent"), "{e}");
}

#[test]
fn diagnostics_depths_default_and_are_bounded() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.diagnostics.trace_changes_per_table, 64);
    assert_eq!(c.diagnostics.trace_broadcasts_per_channel, 16);
    let c = parse(&[
        "--trace-changes-per-table",
        "0",
        "--trace-broadcasts-per-channel",
        "0",
    ])
    .unwrap();
    assert_eq!(c.diagnostics.trace_changes_per_table, 0);
    let e = parse(&["--trace-changes-per-table", "10001"]).unwrap_err();
    assert!(
        e.contains("--trace-changes-per-table must be at most 10000"),
        "{e}"
    );
    let e = parse(&["--trace-broadcasts-per-channel", "many"]).unwrap_err();
    assert!(e.contains("--trace-broadcasts-per-channel"), "{e}");
}
