//! Reads a JWKS document from an `http://` or `https://` URL: one HTTP/1.0 GET (no chunked
//! bodies, no redirects), over TLS for `https://`.
//!
//! TLS is rustls (with the `ring` provider jsonwebtoken already brings). Servers are trusted
//! when their chain ends at one of the Mozilla roots compiled in (`webpki-roots`, so a container
//! without a CA bundle works too) or at a certificate of the extra CA file (`JWKS_CA_FILE`, for a
//! private PKI). The host name, or IP address, of the URL must be in the server's certificate.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The largest JWKS document read.
const MAX_BYTES: u64 = 1024 * 1024;

/// A parsed `http://` or `https://` URL.
#[derive(Clone)]
pub(super) struct Url {
    /// `host[:port]` as written (the `Host` header).
    authority: String,
    /// The host without brackets or port (the TLS server name).
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
    /// The TLS client for `https://`; `None` for `http://`.
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Url")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Url {
    /// Parses `url` when it starts with `http://` or `https://` (`Ok(None)` otherwise); an
    /// `https://` URL gets a TLS client trusting the built-in roots and `ca_file`'s
    /// certificates.
    ///
    /// # Errors
    /// A text saying what is wrong with the URL or the CA file.
    pub(super) fn parse(url: &str, ca_file: Option<&Path>) -> Result<Option<Url>, String> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, true, 443)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, false, 80)
        } else {
            return Ok(None);
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("the URL needs a host (and no user info)".to_owned());
        }
        let (host, port) = split_host_port(authority, default_port)?;
        let tls = if tls {
            Some(TlsConnector::from(client_config(ca_file)?))
        } else {
            None
        };
        Ok(Some(Url {
            authority: authority.to_owned(),
            host,
            port,
            path,
            tls,
        }))
    }

    /// GETs the URL; the body of a 200 answer.
    ///
    /// # Errors
    /// A text naming the step that failed (connect, TLS handshake, HTTP status, ...).
    pub(super) async fn get(&self) -> Result<String, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let Some(tls) = &self.tls else {
            return self.exchange(stream).await;
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| format!("{} is not a valid TLS server name", self.host))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        self.exchange(stream).await
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
    ) -> Result<String, String> {
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\
             Connection: close\r\n\r\n",
            self.path, self.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let read = (&mut stream)
            .take(MAX_BYTES + 1)
            .read_to_end(&mut raw)
            .await;
        // A TLS server that closes without `close_notify` ends in `UnexpectedEof`: the answer
        // is then used only if its `Content-Length` shows it whole.
        let truncated = match read {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => true,
            Err(e) => return Err(e.to_string()),
        };
        if raw.len() as u64 > MAX_BYTES {
            return Err(format!("answer longer than {MAX_BYTES} bytes"));
        }
        body(&raw, truncated)
    }
}

/// The body of a raw HTTP answer when its status is 200.
fn body(raw: &[u8], unterminated: bool) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "answer is not UTF-8".to_owned())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "incomplete HTTP answer".to_owned())?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP status {status}"));
    }
    let mut length = None;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            return Err("chunked answers are not supported".to_owned());
        }
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
    }
    match length {
        Some(n) if body.len() >= n => Ok(body[..n].to_owned()),
        Some(n) => Err(format!("answer cut short ({} of {n} bytes)", body.len())),
        None if unterminated => Err("connection closed without TLS close_notify".to_owned()),
        None => Ok(body.to_owned()),
    }
}

/// `host` and port of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`).
fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad_port = || format!("bad port in {authority}");
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad host {authority}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port())?,
            None if after.is_empty() => default_port,
            None => return Err(bad_port()),
        };
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), port.parse().map_err(|_| bad_port())?)),
        None => Ok((authority.to_owned(), default_port)),
    }
}

/// A TLS client trusting the built-in roots and the certificates of `ca_file`.
fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("CA file {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA file {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("CA file {shown} holds no PEM certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {shown}: {e}"))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let u = Url::parse("http://127.0.0.1:8080/.well-known/jwks.json", None)
            .unwrap()
            .unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(u.path, "/.well-known/jwks.json");
        assert!(u.tls.is_none());
        let u = Url::parse(
            "https://example.supabase.co/auth/v1/.well-known/jwks.json",
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!((u.host.as_str(), u.port), ("example.supabase.co", 443));
        assert_eq!(u.authority, "example.supabase.co");
        assert!(u.tls.is_some());
        let u = Url::parse("https://[::1]:8443?x=1", None).unwrap().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8443, "/?x=1")
        );
        assert!(Url::parse("/etc/jwks.json", None).unwrap().is_none());
        assert!(Url::parse("http://host:port/", None).is_err());
        assert!(Url::parse("https://user@host/", None).is_err());
        assert!(Url::parse("https://", None).is_err());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error() {
        let err = Url::parse("https://h/", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.starts_with("CA file /nonexistent/ca.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Url::parse("https://h/", Some(&empty)).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn answers_are_read_by_status_and_length() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(body(ok, false).unwrap(), "{}");
        assert_eq!(body(ok, true).unwrap(), "{}");
        let short = b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n{}";
        assert!(body(short, true).unwrap_err().contains("cut short"));
        let no_length = b"HTTP/1.0 200 OK\r\n\r\n{}";
        assert_eq!(body(no_length, false).unwrap(), "{}");
        assert!(body(no_length, true).is_err());
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert_eq!(body(missing, false).unwrap_err(), "HTTP status 404");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert!(body(chunked, false).unwrap_err().contains("chunked"));
    }
}
