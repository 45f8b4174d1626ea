//! Public keys for RS256/ES256 tokens: a JWKS read from a file or an `http://` or `https://`
//! URL ([`super::fetch`]).
//!
//! The key set is kept in memory behind a lock that is only held to clone an `Arc`, so
//! verification stays synchronous. [`Jwks::run`] re-reads it in the background every
//! [`REFRESH_INTERVAL`], and sooner when a token names an unknown `kid` — at most once per
//! `min_refetch` (a minute in the gateway); the token that asked is refused, not held.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use super::Error;

/// How often the key set is re-read in the background.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// The shortest time between two re-reads asked for by unknown `kid`s.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// How long one HTTP fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a key set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot load JWKS from {source_name}: {reason}")]
pub struct LoadError {
    /// The file or URL.
    pub source_name: String,
    /// What went wrong.
    pub reason: String,
}

/// One usable key: the only algorithm it verifies, and the key.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Key>,
    all: Vec<Key>,
}

/// Where the document comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Http(super::fetch::Url),
    Fixed(String),
}

/// The key set, shared by every clone of the verifier.
pub struct Jwks {
    source: Source,
    name: String,
    keys: RwLock<Arc<Keys>>,
    min_refetch: Duration,
    last_request: Mutex<Option<Instant>>,
    wake: tokio::sync::Notify,
    requests: AtomicU64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.name)
            .field("keys", &self.read().all.len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Reads the JWKS at `source` (a file path, or an `http://` or `https://` URL; an
    /// `https://` server must present a certificate of a well-known CA or of `ca_file`).
    ///
    /// # Errors
    /// When it cannot be read or parsed, or holds no RS256/ES256 key, or `ca_file` cannot be
    /// read.
    pub async fn load(
        source: &str,
        min_refetch: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Arc<Jwks>, LoadError> {
        let url = super::fetch::Url::parse(source, ca_file).map_err(|reason| LoadError {
            source_name: source.to_owned(),
            reason,
        })?;
        let parsed = match url {
            Some(url) => Source::Http(url),
            None => Source::File(PathBuf::from(source)),
        };
        let jwks = Jwks::with_source(parsed, source.to_owned(), min_refetch);
        jwks.refresh().await?;
        Ok(Arc::new(jwks))
    }

    /// A key set from a JSON document that is never re-read (refetch requests are counted).
    ///
    /// # Errors
    /// When it cannot be parsed or holds no RS256/ES256 key.
    pub fn from_json(json: &str, min_refetch: Duration) -> Result<Jwks, LoadError> {
        let jwks = Jwks::with_source(
            Source::Fixed(json.to_owned()),
            "inline JSON".to_owned(),
            min_refetch,
        );
        let keys = jwks.parse(json)?;
        *jwks.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(jwks)
    }

    fn with_source(source: Source, name: String, min_refetch: Duration) -> Jwks {
        Jwks {
            source,
            name,
            keys: RwLock::new(Arc::new(Keys::default())),
            min_refetch,
            last_request: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            requests: AtomicU64::new(0),
        }
    }

    fn read(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The key a token with header `kid` and `alg` is verified with: the key with that `kid`,
    /// or the only key when the token names none. An unknown `kid` asks for a re-read.
    ///
    /// # Errors
    /// [`Error::UnknownKid`], or [`Error::NoMatchingKey`] when the key is for another algorithm
    /// or the token names none and there are several.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Key, Error> {
        let keys = self.read();
        let key = match kid {
            Some(kid) => match keys.by_kid.get(kid) {
                Some(key) => key.clone(),
                None => {
                    self.request_refetch();
                    return Err(Error::UnknownKid);
                }
            },
            None if keys.all.len() == 1 => keys.all[0].clone(),
            None => return Err(Error::NoMatchingKey),
        };
        if key.alg == alg {
            Ok(key)
        } else {
            Err(Error::NoMatchingKey)
        }
    }

    /// Wakes [`Jwks::run`] unless a re-read was asked for less than `min_refetch` ago.
    fn request_refetch(&self) {
        let mut last = self.last_request.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.min_refetch) {
            return;
        }
        *last = Some(now);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// How many re-reads unknown `kid`s have asked for.
    pub fn refetch_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// How many usable keys are loaded.
    pub fn len(&self) -> usize {
        self.read().all.len()
    }

    /// Whether no usable key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the source; on failure the keys in memory stay.
    ///
    /// # Errors
    /// When the source cannot be read or parsed, or holds no usable key.
    pub async fn refresh(&self) -> Result<(), LoadError> {
        let text = match &self.source {
            Source::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| self.error(e.to_string()))?,
            Source::Http(url) => tokio::time::timeout(FETCH_TIMEOUT, url.get())
                .await
                .map_err(|_| self.error("timed out".to_owned()))?
                .map_err(|e| self.error(e))?,
            Source::Fixed(json) => json.clone(),
        };
        let keys = self.parse(&text)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// Re-reads every `every`, and when woken by an unknown `kid`, until `stop` is cancelled;
    /// a failed re-read is counted (`gateway_auth_jwks_failures_total`) and handed to
    /// `failed` (the gateway audits it), and the keys in memory stay.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        stop: CancellationToken,
        failed: impl Fn(&LoadError) + Send,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
                () = self.wake.notified() => {}
            }
            match self.refresh().await {
                Ok(()) => tracing::debug!(keys = self.len(), "JWKS re-read"),
                Err(e) => {
                    metrics::counter!("gateway_auth_jwks_failures_total").increment(1);
                    tracing::warn!(error = %e, "JWKS re-read failed; keeping the keys");
                    failed(&e);
                }
            }
        }
    }

    fn error(&self, reason: String) -> LoadError {
        LoadError {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// The RS256/ES256 signing keys of a JWKS document; other keys are skipped.
    fn parse(&self, text: &str) -> Result<Keys, LoadError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_str(text).map_err(|e| self.error(e.to_string()))?;
        let mut keys = Keys::default();
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(key) = usable(&jwk) else { continue };
            if let Some(kid) = &jwk.common.key_id {
                keys.by_kid.insert(kid.clone(), key.clone());
            }
            keys.all.push(key);
        }
        if keys.all.is_empty() {
            return Err(self.error("no RS256 or ES256 signing key".to_owned()));
        }
        Ok(keys)
    }
}

/// The key of `jwk` if it is an RSA key for RS256 or a P-256 key for ES256, for signatures.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let (alg, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|a| a != declared) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { alg, key })
}
