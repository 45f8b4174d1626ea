//! The gateway under test: where it is (loopback only), its HTTP endpoints, and TCP connections
//! to it, spread over 127.0.0.x source addresses so that none of them fills its port range.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address. The kernel finds a free local port for a connection by
/// probing the ephemeral range (32768–60999, ~28k) from a moving offset; the fuller the range is
/// for one address (with the previous phase's closed sockets waiting out their TIME_WAIT), the
/// longer each search: with 15,000 clients from 127.0.0.1, `__inet_check_established` and
/// `__inet_hash_connect` took 22 % of the load tester's CPU during the connect ramp, CPU that the
/// server under test lacked. At 2,000 per 127.0.0.x address the range stays mostly free, and a
/// run of `cli::MAX_CLIENTS` needs 100 addresses.
const CONNECTIONS_PER_SOURCE: usize = 2_000;

/// Whether `host` names this machine's loopback interface.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The gateway's address and the path its WebSocket endpoint lives under.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Resolved loopback address.
    pub(crate) addr: SocketAddr,
    /// `host:port` as given, for the Host header and URLs.
    authority: String,
    /// Path of the WebSocket base, e.g. `/realtime/v1` (no trailing slash).
    base_path: String,
}

impl Target {
    /// Parses `ws://host:port/base` and checks that host is a loopback address.
    pub(crate) async fn resolve(url: &str) -> anyhow::Result<Target> {
        let Some(rest) = url.strip_prefix("ws://") else {
            bail!("--url must start with ws:// (loopback targets only, no TLS): {url}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let host = match authority.rfind(':') {
            Some(i) if !authority.ends_with(']') => &authority[..i],
            _ => authority,
        };
        if !is_loopback_host(host) {
            bail!("--url host {host} is not a loopback address (loopback targets only)");
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_owned()
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolve {with_port}"))?
            .find(|a| a.ip().is_loopback())
            .with_context(|| format!("{host} resolves to no loopback address"))?;
        Ok(Target {
            addr,
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The path and query of the WebSocket URL a realtime-js client with `apikey` would open:
    /// what the upgrade request asks for.
    pub(crate) fn websocket_path(&self, apikey: &str) -> String {
        format!("{}/websocket?apikey={apikey}&vsn=2.0.0", self.base_path)
    }

    /// `host:port` as given: the upgrade's Host header.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// Source address for client number `index`: 127.0.0.1 for the first
    /// [`CONNECTIONS_PER_SOURCE`], then 127.0.0.2, and so on (the port is the system's choice);
    /// the system's choice of address for an IPv6 target.
    pub(crate) fn source_for(&self, index: usize) -> Option<SocketAddr> {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.octets()[0] == 127 => {
                let offset = u8::try_from(1 + index / CONNECTIONS_PER_SOURCE).unwrap_or(u8::MAX);
                Some(SocketAddr::from((Ipv4Addr::new(127, 0, 0, offset), 0)))
            }
            _ => None,
        }
    }

    /// Opens a TCP connection to the gateway, from `source` when given.
    pub(crate) async fn connect_tcp(
        &self,
        source: Option<SocketAddr>,
    ) -> std::io::Result<TcpStream> {
        let socket = self.socket_from(source)?;
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// An unconnected socket for a connection to the gateway, bound to `source` when given.
    fn socket_from(&self, source: Option<SocketAddr>) -> std::io::Result<TcpSocket> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(source) = source {
            // The port is then chosen at connect, where only the whole address pair must be
            // unique: a bind that reserved it would refuse ports any earlier socket of this
            // address still holds in TIME_WAIT, whatever it was connected to.
            #[cfg(target_os = "linux")]
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )?;
            socket.bind(source)?;
        }
        Ok(socket)
    }

    /// A minimal HTTP/1.1 GET: the status and body.
    pub(crate) async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.authority
            );
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .context("http request timed out")??;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Waits until `GET /ready` answers 200, up to `patience`.
    pub(crate) async fn wait_ready(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let last = match self.http_get("/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the gateway at {} is not ready after {patience:?}: {last}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_targets() {
        for host in ["127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "192.168.1.1",
            "example.com",
            "0.0.0.0",
            "8.8.8.8",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[tokio::test]
    async fn urls_are_parsed_and_checked() {
        let t = Target::resolve("ws://127.0.0.1:4000/realtime/v1/")
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(
            t.websocket_path("k"),
            "/realtime/v1/websocket?apikey=k&vsn=2.0.0"
        );
        assert_eq!(t.authority(), "127.0.0.1:4000");
        assert!(Target::resolve("ws://10.1.2.3:4000/realtime/v1")
            .await
            .is_err());
        assert!(Target::resolve("wss://127.0.0.1:4000").await.is_err());
        assert!(Target::resolve("http://127.0.0.1:4000").await.is_err());
    }

    #[tokio::test]
    async fn clients_are_spread_over_source_addresses() {
        let t = Target::resolve("ws://127.0.0.1:4000/realtime/v1")
            .await
            .unwrap();
        let source = |i| t.source_for(i).map(|a| a.to_string());
        assert_eq!(source(0).as_deref(), Some("127.0.0.1:0"));
        assert_eq!(source(1_999).as_deref(), Some("127.0.0.1:0"));
        assert_eq!(source(2_000).as_deref(), Some("127.0.0.2:0"));
        assert_eq!(source(14_999).as_deref(), Some("127.0.0.8:0"));
        // The largest run stays within 127.0.0.0/24.
        let last = crate::cli::MAX_CLIENTS - 1;
        assert_eq!(source(last).as_deref(), Some("127.0.0.100:0"));
        let v6 = Target::resolve("ws://[::1]:4000/realtime/v1")
            .await
            .unwrap();
        assert_eq!(v6.source_for(0), None);
    }

    /// Clients from the second source address reach a server on 127.0.0.1, which sees that
    /// address as their peer.
    #[tokio::test]
    async fn a_client_connects_from_its_source_address() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/realtime/v1", server.local_addr().unwrap());
        let t = Target::resolve(&url).await.unwrap();
        let (client, accepted) = tokio::join!(t.connect_tcp(t.source_for(2_000)), server.accept());
        let client = client.unwrap();
        let (_, peer) = accepted.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        assert_eq!(client.local_addr().unwrap(), peer);
    }

    /// Binding to a source address reserves no port: it is chosen at connect.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_source_address_is_bound_without_a_port() {
        let t = Target::resolve("ws://127.0.0.1:4000/realtime/v1")
            .await
            .unwrap();
        let socket = t.socket_from(t.source_for(4_000)).unwrap();
        assert_eq!(socket.local_addr().unwrap().to_string(), "127.0.0.3:0");
    }
}
