//! [`Proxy`]: a TCP proxy between a gateway and PostgreSQL that a test can cut (new connections
//! refused, open ones killed) and restore, to stage a database outage for one node only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to a PostgreSQL server, in this test's runtime.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped at every cut: open connections end when it changes.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 to `upstream` (`host:port`).
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(serve(
            listener,
            upstream,
            Arc::clone(&cut),
            generation.clone(),
        ));
        Proxy {
            addr,
            cut,
            generation,
            task,
        }
    }

    /// A proxy to the server of the database URL `url` (`postgres://user@host:port/db`);
    /// returns it and the same URL through it.
    pub async fn for_url(url: &str) -> (Proxy, String) {
        let scheme_end = url.find("://").expect("scheme") + 3;
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let host_start = authority.rfind('@').map_or(0, |i| i + 1);
        let host_port = &authority[host_start..];
        let upstream = tokio::net::lookup_host(host_port)
            .await
            .unwrap_or_else(|e| panic!("resolve {host_port}: {e}"))
            .next()
            .expect("upstream address");
        let proxy = Proxy::start(upstream).await;
        let through = format!(
            "{}{}{}{}",
            &url[..scheme_end],
            &authority[..host_start],
            proxy.addr,
            &rest[authority_end..]
        );
        (proxy, through)
    }

    /// Cuts the link: open connections are killed and new ones refused until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if cut.load(Ordering::SeqCst) {
            // Refused: closed at once, before a byte is read.
            drop(client);
            continue;
        }
        let mut ended = generation.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                // Killed: both sockets are closed when this task ends.
                _ = ended.changed() => {}
            }
        });
    }
}
