//! The accept loop: every TCP connection is served by hyper's HTTP/1 server on the shutdown
//! tracker, with the bounds that keep half-open clients from holding the gateway's sockets.
//!
//! - A request head must arrive whole within `--http-header-timeout`; a client that sends
//!   half a head and waits is disconnected.
//! - At most `--max-pending-connections` connections may be in their HTTP phase at once
//!   (accepted, and neither upgraded to a WebSocket nor closed); past that, new connections
//!   are closed at once and counted in `gateway_http_pending_refused_total`. Upgraded
//!   WebSockets do not count: the connection cap governs them.
//! - At most `--max-pending-per-address` of them may come from one client address, so one
//!   source that holds half-sent heads (slowloris) cannot take all the places.
//! - Accept errors (out of file descriptors) are logged and retried after a short pause
//!   instead of ending the server.
//!
//! Connections still in their HTTP phase at shutdown finish their current request and close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::shutdown::Shutdown;

/// Pause after a failed accept (typically `EMFILE`), so a full descriptor table does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Bounds of the HTTP phase of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Longest time a request head may take to arrive.
    pub header_timeout: Duration,
    /// Most connections in their HTTP phase at once.
    pub max_pending: usize,
    /// Most of them from one client address.
    pub max_pending_per_address: usize,
}

/// Connections in their HTTP phase, by client address.
#[derive(Debug, Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerAddress {
    /// Takes a place for `addr` unless it holds `max` already.
    fn take(&self, addr: std::net::IpAddr, max: usize) -> bool {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = map.entry(addr).or_insert(0);
        if *held >= max {
            return false;
        }
        *held += 1;
        true
    }

    /// Gives `addr`'s place back.
    fn give_back(&self, addr: std::net::IpAddr) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = map.get_mut(&addr) {
            *held -= 1;
            if *held == 0 {
                map.remove(&addr);
            }
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` is triggered.
pub async fn run(listener: TcpListener, app: Router, shutdown: Shutdown, settings: Settings) {
    let pending = Arc::new(Semaphore::new(settings.max_pending));
    let per_address = Arc::new(PerAddress::default());
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                metrics::counter!("gateway_http_accept_errors_total").increment(1);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            metrics::counter!("gateway_http_pending_refused_total").increment(1);
            tracing::debug!(peer = %peer, "connection refused: too many in their http phase");
            drop(tcp);
            continue;
        };
        if !per_address.take(peer.ip(), settings.max_pending_per_address) {
            metrics::counter!("gateway_http_pending_refused_total").increment(1);
            tracing::debug!(peer = %peer, "connection refused: too many in their http phase from this address");
            drop(tcp);
            continue;
        }
        let places = Arc::clone(&per_address);
        // Frames are small and batched by the writer: Nagle's algorithm would only hold them.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = app
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request.map(axum::body::Body::new)
            });
        let stop = shutdown.clone();
        shutdown.spawn("http_connection", async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_timeout)
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer, error = %e, "http connection ended");
                    }
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    if let Err(e) = connection.await {
                        tracing::debug!(peer = %peer, error = %e, "http connection ended");
                    }
                }
            }
            // The HTTP phase is over: upgraded (the session runs in its own task) or closed.
            places.give_back(peer.ip());
            drop(permit);
        });
    }
}
