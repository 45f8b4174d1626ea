//! The `realtime-gateway` binary: parse settings, start logging, run.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use realtime_gateway::config::{Cli, Command};
use realtime_gateway::{local, pg, telemetry, Error, Shutdown};

/// mimalloc, without transparent huge pages (`realtime_gateway::memory`): faster than the
/// system allocator on the per-delivery and per-connection paths, and it returns freed memory
/// to the system. The `system-allocator` feature leaves it out, for heap profilers that hook
/// `malloc` (heaptrack, valgrind): see BENCHMARKS.md.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let huge_pages = realtime_gateway::memory::no_huge_pages();
    let cli = Cli::parse();
    let mut config = match cli.settings.check() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    if let Err(e) = huge_pages {
        tracing::debug!(error = %e, "transparent huge pages left as the system has them");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let result = runtime.block_on(async move {
        let (cluster, keys) = local::prepare(&mut config).await?;
        let patience = config.shutdown_timeout;
        let outcome = match command {
            Command::Migrate => migrate(&config).await,
            Command::Serve => serve(config, &keys, cluster.is_some()).await,
        };
        // Last: the gateway has closed its sessions and written this node's end by now.
        if let Some(cluster) = cluster {
            tracing::info!("stopping the embedded postgres");
            tokio::task::spawn_blocking(move || cluster.stop_within(patience))
                .await
                .map_err(|e| Error::Local(std::io::Error::other(e)))??;
        }
        outcome
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.one_line());
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: &realtime_gateway::Config) -> Result<(), Error> {
    let url = config.database_url.as_deref().unwrap_or_default();
    pg::migrate(url).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(
    config: realtime_gateway::Config,
    keys: &local::Keys,
    local_mode: bool,
) -> Result<(), Error> {
    let listener = realtime_gateway::http::listen(config.listen).map_err(Error::Serve)?;
    if local_mode {
        print_banner(&listener, keys, &config);
    }
    let shutdown = Shutdown::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        realtime_gateway::shutdown::signal().await;
        on_signal.trigger();
    });
    realtime_gateway::run(Arc::new(config), listener, shutdown).await
}

/// Tells a local-mode user what to give supabase-js, the way local Supabase tooling does.
fn print_banner(
    listener: &tokio::net::TcpListener,
    keys: &local::Keys,
    config: &realtime_gateway::Config,
) {
    let mut addr = listener.local_addr().unwrap_or(config.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let text = format!(
        "\nrealtime-gateway (local mode)\n\
         \x20 API URL (createClient):  http://{addr}\n\
         \x20 Realtime URL:            ws://{addr}/realtime/v1\n\
         \x20 anon key:                {anon}\n\
         \x20 service_role key:        {service}\n\
         \x20 database:                {db}\n\n",
        anon = keys.anon,
        service = keys.service_role,
        db = config.database_url.as_deref().unwrap_or_default(),
    );
    let mut out = std::io::stdout().lock();
    // The banner is a courtesy; a closed stdout must not stop the gateway.
    let _written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
