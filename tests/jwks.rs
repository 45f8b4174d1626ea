//! RS256/ES256 tokens verified with a JWKS served over HTTP and HTTPS: the WebSocket upgrade
//! accepts an RS256 token, refuses one with an unknown `kid` (which asks for one re-read), and
//! HS256 with the shared secret keeps working; an unreadable JWKS, or an HTTPS server whose
//! certificate is not trusted, fails the start. The HTTPS server is a real TLS server on
//! loopback with a certificate of a CA made by the test (`JWKS_CA_FILE`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, token, TestDb, TestGateway, WsClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JWKS: &str = include_str!("fixtures/jwks/jwks.json");
const RSA: &str = include_str!("fixtures/jwks/rsa_private.pem");

/// Serves `JWKS` on 127.0.0.1:0 to any GET; returns its URL and the number of requests served.
async fn serve_jwks() -> (String, Arc<AtomicUsize>) {
    serve_jwks_over(None).await
}

/// Serves `JWKS` over TLS with `tls` when given (an `https://` URL), else over plain HTTP.
async fn serve_jwks_over(tls: Option<tokio_rustls::TlsAcceptor>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!(
        "{scheme}://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        // A refused handshake (an untrusting client) ends here.
                        if let Ok(stream) = tls.accept(stream).await {
                            answer(stream, &count).await;
                        }
                    }
                    None => answer(stream, &count).await,
                }
            });
        }
    });
    (url, served)
}

/// Reads one request head and answers it with `JWKS`, counting it.
async fn answer<S>(mut stream: S, count: &AtomicUsize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    count.fetch_add(1, Ordering::SeqCst);
    let answer = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{JWKS}",
        JWKS.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    // Over TLS this sends close_notify.
    let _ = stream.shutdown().await;
}

/// A CA made for the test, and a TLS server config whose certificate (for 127.0.0.1 and
/// localhost) it signed; returns the CA's PEM and the acceptor.
fn test_ca() -> (String, tokio_rustls::TlsAcceptor) {
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("test CA {}", uuid::Uuid::new_v4()),
    );
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Writes `pem` to a file of its own in the temp folder.
fn ca_file(pem: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("jwks-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, pem).unwrap();
    path
}

fn rs256(kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({
        "role": "authenticated",
        "aud": "authenticated",
        "exp": realtime_gateway::auth::now_secs() + 60,
    });
    let key = EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn refusal(gw: &TestGateway, key: &str) -> (u16, serde_json::Value) {
    let err = tokio_tungstenite::connect_async(gw.ws_url(key, "2.0.0"))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an http refusal, got {err}");
    };
    let body = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
    (response.status().as_u16(), body)
}

#[tokio::test]
async fn an_rs256_token_from_the_jwks_url_upgrades_and_joins() {
    let (url, served) = serve_jwks().await;
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.jwt.jwks = Some(url);
        c.jwt.jwt_audience = Some("authenticated".to_owned());
        c.max_auth_failures = 0;
    })
    .await;
    assert_eq!(served.load(Ordering::SeqCst), 1, "read once at start");

    let mut c = WsClient::connect(&gw.ws_url(&rs256("rsa-test-1"), "2.0.0")).await;
    let reply = c.join("realtime:jwks", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");

    // An unknown kid is refused at once and asks for one re-read; a second one within the
    // minute does not ask again.
    for _ in 0..2 {
        let (status, body) = refusal(&gw, &rs256("rotated-away")).await;
        assert_eq!(status, 401);
        assert_eq!(body, json!({"error": "Failed to validate JWT signature"}));
    }
    // The decision is taken while verifying: both refusals are answered, so it is final.
    let jwks = gw.state.session.verifier.jwks().unwrap();
    assert_eq!(jwks.refetch_requests(), 1, "at most one re-read a minute");
    eventually(Duration::from_secs(10), "the re-read served", || {
        let served = Arc::clone(&served);
        async move { served.load(Ordering::SeqCst) == 2 }
    })
    .await;

    // HS256 with the shared secret still works, but the audience is now required.
    let (status, body) = refusal(&gw, &token("anon", None)).await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error": "Token audience is not accepted"}));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn hs256_keeps_working_with_a_jwks_file() {
    let db = TestDb::new().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks/jwks.json");
    let gw = TestGateway::start_with(&db, |c| c.jwt.jwks = Some(path.to_owned())).await;
    let mut c = WsClient::anon(&gw).await;
    let reply = c.join("realtime:hs", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let mut c = WsClient::connect(&gw.ws_url(&rs256("rsa-test-1"), "2.0.0")).await;
    let reply = c.join("realtime:rs", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_jwks_fails_the_start() {
    let db = TestDb::new().await;
    let mut config =
        realtime_gateway::Config::for_database(db.url.clone(), common::JWT_SECRET.to_owned());
    config.jwt.jwks = Some("/nonexistent/jwks.json".to_owned());
    let err = realtime_gateway::Gateway::start(Arc::new(config), realtime_gateway::Shutdown::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--jwks"), "{err}");
}

/// `https://` JWKS (e.g. Supabase's `/auth/v1/.well-known/jwks.json`): an RS256 token is
/// verified with a key read over a real TLS handshake with a server of a private CA trusted
/// through `JWKS_CA_FILE`, and an unknown `kid` still asks for one re-read, over TLS too.
#[tokio::test]
async fn an_rs256_token_is_verified_with_a_jwks_over_https() {
    let (ca_pem, acceptor) = test_ca();
    let (url, served) = serve_jwks_over(Some(acceptor)).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = ca_file(&ca_pem);
    let db = TestDb::new().await;
    let gw = TestGateway::start_with(&db, |c| {
        c.jwt.jwks = Some(url);
        c.jwt.jwks_ca_file = Some(ca.clone());
        c.max_auth_failures = 0;
    })
    .await;
    std::fs::remove_file(&ca).unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 1, "read once at start");
    let mut c = WsClient::connect(&gw.ws_url(&rs256("rsa-test-1"), "2.0.0")).await;
    let reply = c.join("realtime:jwks-https", json!({})).await;
    assert_eq!(reply["status"], "ok", "{reply}");

    for _ in 0..2 {
        let (status, body) = refusal(&gw, &rs256("rotated-away")).await;
        assert_eq!(status, 401);
        assert_eq!(body, json!({"error": "Failed to validate JWT signature"}));
    }
    let jwks = gw.state.session.verifier.jwks().unwrap();
    assert_eq!(jwks.refetch_requests(), 1, "at most one re-read a minute");
    eventually(
        Duration::from_secs(10),
        "the re-read served over TLS",
        || {
            let served = Arc::clone(&served);
            async move { served.load(Ordering::SeqCst) == 2 }
        },
    )
    .await;
    gw.stop().await.unwrap();
}

/// A server whose certificate no trusted CA signed is refused: without `JWKS_CA_FILE` the
/// test CA is unknown, and the start fails naming the certificate problem.
#[tokio::test]
async fn an_untrusted_https_certificate_fails_the_start() {
    let (_, acceptor) = test_ca();
    let (url, served) = serve_jwks_over(Some(acceptor)).await;
    // Another CA than the one that signed the server's certificate.
    let (other_ca, _) = test_ca();
    let other = ca_file(&other_ca);
    let db = TestDb::new().await;
    for ca in [None, Some(other.clone())] {
        let mut config =
            realtime_gateway::Config::for_database(db.url.clone(), common::JWT_SECRET.to_owned());
        config.jwt.jwks = Some(url.clone());
        config.jwt.jwks_ca_file = ca;
        let err =
            realtime_gateway::Gateway::start(Arc::new(config), realtime_gateway::Shutdown::new())
                .await
                .unwrap_err()
                .to_string();
        assert!(err.contains("--jwks"), "{err}");
        assert!(err.contains(&url), "{err}");
        assert!(
            err.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
            "{err}"
        );
    }
    std::fs::remove_file(&other).unwrap();
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "nothing served to a refused handshake"
    );
}
