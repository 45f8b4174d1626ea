//! Tokens: verifies the JWTs clients present and signs the keys the embedded mode prints.
//!
//! The socket's `apikey`, each channel's `access_token` and the REST `Authorization` header are
//! all verified here the same way (docs/protocol.md section 8.1). The refusal texts are the ones the
//! Supabase clients know (sections 1.2 and 5.3). HS256/384/512 tokens are verified with the
//! shared secret; RS256/ES256 tokens with a key of the configured JWKS ([`jwks`]), never with the
//! secret.

pub mod channel;
mod fetch;
pub mod jwks;
#[cfg(test)]
mod jwks_tests;
mod verified;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused. `Display` is the client-facing text without a code prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No token at all.
    #[error("API key is missing")]
    Missing,
    /// Not three base64url parts with JSON header and claims.
    #[error("The token provided is not a valid JWT")]
    Malformed,
    /// Signature does not verify with the key the header chose.
    #[error("Failed to validate JWT signature")]
    BadSignature,
    /// The header's `alg` is `none` or not configured (RS256/ES256 without a JWKS included).
    #[error("Failed to validate JWT signature")]
    AlgNotAllowed,
    /// The header's `kid` is not in the JWKS (which is then re-read, at most once a minute).
    #[error("Failed to validate JWT signature")]
    UnknownKid,
    /// No JWKS key fits: the `kid`'s key is of another algorithm, or there is no `kid` and the
    /// JWKS has several keys.
    #[error("Failed to validate JWT signature")]
    NoMatchingKey,
    /// `role` or `exp` missing.
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    /// `exp` is not a positive number.
    #[error("Token expiration time is invalid")]
    InvalidExpiry,
    /// `exp` is in the past by this many seconds.
    #[error("Token has expired {0} seconds ago")]
    Expired(u64),
    /// `nbf` is in the future (or not a number).
    #[error("Token is not valid yet")]
    NotYetValid,
    /// An audience is configured and `aud` does not name it.
    #[error("Token audience is not accepted")]
    WrongAudience,
}

impl Error {
    /// The text for a refused WebSocket upgrade (docs/protocol.md 1.2), where expiry has no age.
    pub fn handshake_text(&self) -> String {
        match self {
            Error::Expired(_) => "Token has expired".to_owned(),
            other => other.to_string(),
        }
    }

    /// A machine-readable name of the refusal, for the audit log and metrics (several refusals
    /// share one client text, e.g. every signature failure): never the token itself.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Missing => "token_missing",
            Error::Malformed => "malformed",
            Error::BadSignature => "bad_signature",
            Error::AlgNotAllowed => "alg_not_allowed",
            Error::UnknownKid => "unknown_kid",
            Error::NoMatchingKey => "no_matching_key",
            Error::MissingClaims => "missing_claims",
            Error::InvalidExpiry => "invalid_expiry",
            Error::Expired(_) => "token_expired",
            Error::NotYetValid => "not_yet_valid",
            Error::WrongAudience => "wrong_audience",
        }
    }

    /// The `reason` of a refused join (docs/protocol.md 5.3): `<Code>: <message>`.
    pub fn join_reason(&self) -> String {
        let code = match self {
            Error::Malformed | Error::Missing => "MalformedJWT",
            Error::BadSignature
            | Error::AlgNotAllowed
            | Error::UnknownKid
            | Error::NoMatchingKey => "JwtSignatureError",
            Error::MissingClaims
            | Error::InvalidExpiry
            | Error::Expired(_)
            | Error::NotYetValid
            | Error::WrongAudience => "InvalidJWTToken",
        };
        format!("{code}: {self}")
    }
}

/// The verified claims of a token. `role` and `sub` are kept per channel; the full set is kept
/// for row-level-security checks, which group subscribers by identical claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Database role the client acts as (`anon`, `authenticated`, `service_role`, ...).
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Subject: the user id for user tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Every other claim, as given.
    #[serde(flatten)]
    pub other: OtherClaims,
    /// What row-level security needs of them, worked out on first use ([`Claims::policy`]).
    #[serde(skip)]
    policy: PolicyCell,
}

/// What row-level security needs of a token's claims, worked out once per verified token.
/// Connections that present the same token share its claims ([`verified`]), and so every
/// channel they join shares this too: one copy of the JSON per token, not one per channel.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The claims policies see on deliveries (`request.jwt.claims`), as JSON: every claim but
    /// `exp`, `iat` and `nbf`.
    pub json: Arc<str>,
    /// Fingerprint of `json`: equal claims, equal key.
    pub key: u64,
    /// The database role checks run as: the `role` claim, `anon` when empty.
    pub role: Arc<str>,
}

/// [`Policy`], once worked out. It follows from the other fields, so two claims are equal
/// whatever their cells hold, and a copy of the claims starts without it (a copy may be changed;
/// claims are shared through an `Arc`, never copied, where the policy is kept).
#[derive(Debug, Default)]
struct PolicyCell(std::sync::OnceLock<Policy>);

impl Clone for PolicyCell {
    fn clone(&self) -> PolicyCell {
        PolicyCell::default()
    }
}

impl PartialEq for PolicyCell {
    fn eq(&self, _: &PolicyCell) -> bool {
        true
    }
}

/// The claims of a token other than `role`, `exp` and `sub`, kept as one compact JSON object.
///
/// Every connection keeps its token's claims while it lives, and they are read only when a
/// channel joins or takes a new token (to build the claims row-level security sees). As a map of
/// JSON values they took about 0.6 KiB per connection for two claims (a map's first node has
/// room for eleven), and a nested object (`app_metadata`) as much again; as text, their length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherClaims(Box<str>);

impl Default for OtherClaims {
    fn default() -> OtherClaims {
        OtherClaims(Box::from("{}"))
    }
}

impl OtherClaims {
    /// The claims, as a map (built on each call). Numbers come back as they were verified:
    /// serde_json parses floats exactly (`float_roundtrip`) and writes them in their shortest
    /// exact form, so the text is no approximation.
    ///
    /// # Panics
    /// Never: the text is an object this type wrote with the limits it is read with. Were it
    /// ever unreadable, no claims at all would be the wrong answer for row-level security, so it
    /// would fail the connection's task instead.
    pub fn map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.0).expect("claims text written by OtherClaims is readable")
    }

    /// The claim `name`, if the token has it.
    pub fn get(&self, name: &str) -> Option<serde_json::Value> {
        self.map().remove(name)
    }
}

impl FromIterator<(String, serde_json::Value)> for OtherClaims {
    fn from_iter<I: IntoIterator<Item = (String, serde_json::Value)>>(iter: I) -> OtherClaims {
        // Sorted whatever serde_json's map keeps (its `preserve_order` keeps insertion order).
        let map: std::collections::BTreeMap<String, serde_json::Value> = iter.into_iter().collect();
        let text = serde_json::to_string(&map).expect("a map of JSON values always serializes");
        OtherClaims(text.into_boxed_str())
    }
}

impl Serialize for OtherClaims {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OtherClaims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OtherClaims, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

/// A token's SHA-256 digest. A connection keeps this, not the token, to tell whether a token it
/// is handed again is the one it already holds: a user's token often runs to a kilobyte, the
/// digest is 32 bytes, and a token kept in memory is one more copy of a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`, as given (before any normalization).
    pub fn of(token: &str) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// The role whose tokens may do everything and see every change, as Supabase's service key.
pub const SERVICE_ROLE: &str = "service_role";

/// The role of a token whose `role` claim is empty.
const DEFAULT_ROLE: &str = "anon";

/// Claims that differ from token to token of one user without saying who they are: left out of
/// the claims row-level security sees on deliveries, so a user's tokens share one check.
const PER_TOKEN_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

impl Claims {
    /// Claims with these fields.
    pub fn new(
        role: impl Into<String>,
        exp: i64,
        sub: Option<String>,
        other: OtherClaims,
    ) -> Claims {
        Claims {
            role: role.into(),
            exp,
            sub,
            other,
            policy: PolicyCell::default(),
        }
    }

    /// The database role the token acts as: its `role` claim, `anon` when empty.
    pub fn db_role(&self) -> &str {
        if self.role.is_empty() {
            DEFAULT_ROLE
        } else {
            &self.role
        }
    }

    /// What row-level security needs of these claims, worked out on the first call.
    pub fn policy(&self) -> &Policy {
        self.policy.0.get_or_init(|| {
            let mut value = serde_json::to_value(self).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                for claim in PER_TOKEN_CLAIMS {
                    map.remove(claim);
                }
            }
            let json: Arc<str> = Arc::from(value.to_string());
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                json.hash(&mut h);
                h.finish()
            };
            Policy {
                json,
                key,
                role: Arc::from(self.db_role()),
            }
        })
    }

    /// The claims policies see on deliveries (`request.jwt.claims`), as JSON: every claim but
    /// `exp`, `iat` and `nbf`.
    pub fn policy_json(&self) -> &str {
        &self.policy().json
    }

    /// The `sub` claim when it is a UUID (a Supabase user id).
    pub fn user_id(&self) -> Option<uuid::Uuid> {
        self.sub
            .as_deref()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
    }

    /// Seconds until expiry (negative when expired).
    pub fn seconds_left(&self) -> i64 {
        self.exp - now_secs()
    }
}

/// Verifies tokens signed with the gateway's secret, or with a key of its JWKS.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    audience: Option<Arc<str>>,
    jwks: Option<Arc<jwks::Jwks>>,
    /// Tokens signed with the secret and verified already, shared by the clones.
    verified: Arc<verified::Verified>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for HS256/HS384/HS512 tokens signed with `secret`.
    pub fn new(secret: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // Expiry and required claims are checked by hand to give the clients' exact texts.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            audience: None,
            jwks: None,
            verified: Arc::default(),
        }
    }

    /// Also requires `aud` (a string, or an array of strings) to name `audience`, when given.
    pub fn with_audience(mut self, audience: Option<&str>) -> Verifier {
        self.audience = audience.map(Arc::from);
        // What was verified without this check must not pass for verified with it.
        self.verified = Arc::default();
        self
    }

    /// Also accepts RS256/ES256 tokens signed with a key of `jwks`.
    pub fn with_jwks(mut self, jwks: Arc<jwks::Jwks>) -> Verifier {
        self.jwks = Some(jwks);
        self
    }

    /// The key set RS256/ES256 tokens are verified with, if any.
    pub fn jwks(&self) -> Option<&Arc<jwks::Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies `token` (whitespace removed and percent-decoded first, as upstream does). A token
    /// signed with the secret and verified before is only checked for expiry ([`verified`]); it
    /// is found by its text as decoded, so spellings of one token share one entry.
    ///
    /// # Errors
    /// The [`Error`] whose text the client should see.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, Error> {
        let token = normalize(token);
        let digest = TokenDigest::of(&token);
        let now = now_secs();
        if let Some(known) = self.verified.get(&digest, now) {
            return known;
        }
        let (claims, with_secret) = self.decode(&token, now)?;
        let claims = Arc::new(claims);
        if with_secret {
            self.verified.insert(digest, Arc::clone(&claims), now);
        }
        Ok(claims)
    }

    /// Decodes and checks the normalized `token` at `now`; also whether it was signed with the
    /// secret.
    fn decode(&self, token: &str, now: i64) -> Result<(Claims, bool), Error> {
        if token.is_empty() {
            return Err(Error::Missing);
        }
        let (alg, kid) = peek_header(token)?;
        let asymmetric;
        let (key, validation, with_secret) = match alg.as_str() {
            "HS256" | "HS384" | "HS512" => (&self.key, &self.validation, true),
            "RS256" | "ES256" => {
                let alg = if alg == "RS256" {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                let jwks = self.jwks.as_ref().ok_or(Error::AlgNotAllowed)?;
                let found = jwks.find(kid.as_deref(), alg)?;
                let mut validation = self.validation.clone();
                validation.algorithms = vec![found.alg];
                asymmetric = (found.key, validation);
                (&asymmetric.0, &asymmetric.1, false)
            }
            // `none` and every algorithm not configured.
            _ => return Err(Error::AlgNotAllowed),
        };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName
            | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => Error::BadSignature,
            _ => Error::Malformed,
        })?;
        let claims = data.claims;
        let (Some(role), Some(exp)) = (claims.get("role"), claims.get("exp")) else {
            return Err(Error::MissingClaims);
        };
        let Some(role) = role.as_str() else {
            return Err(Error::MissingClaims);
        };
        let exp = match exp.as_f64() {
            Some(e) if e > 0.0 => e.floor() as i64,
            _ => return Err(Error::InvalidExpiry),
        };
        if claims.get("iat").is_some_and(|iat| !iat.is_number()) {
            return Err(Error::Malformed);
        }
        if exp <= now {
            return Err(Error::Expired(u64::try_from(now - exp).unwrap_or(0)));
        }
        if let Some(nbf) = claims.get("nbf") {
            match nbf.as_f64() {
                Some(nbf) if nbf.floor() as i64 <= now => {}
                _ => return Err(Error::NotYetValid),
            }
        }
        if let Some(audience) = &self.audience {
            let named = |v: &serde_json::Value| v.as_str() == Some(audience);
            let ok = match claims.get("aud") {
                Some(serde_json::Value::Array(list)) => list.iter().any(named),
                Some(one) => named(one),
                None => false,
            };
            if !ok {
                return Err(Error::WrongAudience);
            }
        }
        let sub = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        let role = role.to_owned();
        let other = claims
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "role" | "exp" | "sub"))
            .collect();
        Ok((Claims::new(role, exp, sub, other), with_secret))
    }
}

/// Signs an HS256 token for `role`, valid for `ttl_secs`, with optional `sub` — for the keys the
/// embedded mode prints, and for tests and the load-test tool.
///
/// # Errors
/// Only if serialization fails, which it cannot for these claims.
pub fn sign(
    secret: &str,
    role: &str,
    sub: Option<&str>,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = now_secs();
    let mut claims = serde_json::json!({
        "iss": "realtime-gateway",
        "role": role,
        "iat": now,
        "exp": now + ttl_secs,
    });
    if let Some(sub) = sub {
        claims["sub"] = serde_json::Value::from(sub);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `alg` and `kid` of a token's header, read before any key is chosen.
fn peek_header(token: &str) -> Result<(String, Option<String>), Error> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| Error::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| Error::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(Error::Malformed)?;
    let kid = header
        .get("kid")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    Ok((alg.to_owned(), kid))
}

/// Removes whitespace and decodes `%XX` escapes. A token with neither (every token as issued)
/// is returned as it is, not copied.
fn normalize(token: &str) -> std::borrow::Cow<'_, str> {
    if !token.contains('%') && !token.chars().any(char::is_whitespace) {
        return std::borrow::Cow::Borrowed(token);
    }
    let compact: String = token.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains('%') {
        return std::borrow::Cow::Owned(compact);
    }
    let bytes = compact.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or(compact))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-decent-length";

    fn token(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// A token as issued is looked up as it is; other spellings are decoded to it.
    #[test]
    fn a_plain_token_is_not_copied_and_its_spellings_come_to_it() {
        let t = sign(SECRET, "anon", None, 60).unwrap();
        assert!(matches!(normalize(&t), std::borrow::Cow::Borrowed(_)));
        let spaced = format!(" {}\n", t.replacen('.', ". ", 1));
        let escaped = t.replacen('.', "%2E", 2);
        for other in [spaced, escaped, format!("{t}\u{a0}")] {
            assert!(
                matches!(normalize(&other), std::borrow::Cow::Owned(_)),
                "{other}"
            );
            assert_eq!(normalize(&other), t, "{other}");
        }
        // A `%` that starts no escape stays.
        assert_eq!(normalize("a%zz.b%4"), "a%zz.b%4");
    }

    #[test]
    fn valid_token_yields_claims() {
        let t = sign(
            SECRET,
            "authenticated",
            Some("5c3a4e0e-1d8b-4b7e-9a51-2f6f1c0e9d11"),
            60,
        )
        .unwrap();
        let c = Verifier::new(SECRET).verify(&t).unwrap();
        assert_eq!(c.role, "authenticated");
        assert!(c.user_id().is_some());
        assert_eq!(
            c.other.get("iss").as_ref().and_then(|v| v.as_str()),
            Some("realtime-gateway")
        );
    }

    #[test]
    fn policies_see_every_claim_but_the_per_token_ones() {
        // What policies see: every claim but `exp`, `iat` and `nbf`.
        let shown = serde_json::json!({
            "role": "authenticated",
            "sub": "5c3a4e0e-1d8b-4b7e-9a51-2f6f1c0e9d11",
            "app_metadata": {"provider": "email", "providers": ["email"], "ward": 7},
            "amr": [{"method": "password", "timestamp": 1}],
            "aal": "aal1",
            "big": 1e20,
            "tiny": 2.0042528230657334e-07,
        });
        let mut claims = shown.clone();
        claims["exp"] = serde_json::json!(now_secs() + 60);
        claims["iat"] = serde_json::json!(now_secs());
        let t = token(claims, SECRET, Algorithm::HS256);
        let c = Verifier::new(SECRET).verify(&t).unwrap();
        let seen: serde_json::Value = serde_json::from_str(c.policy_json()).unwrap();
        assert_eq!(seen, shown);
        assert_eq!(
            c.other.get("app_metadata").unwrap()["ward"],
            serde_json::json!(7)
        );
        assert_eq!(c.other.get("role"), None, "kept in its own field");
        // The claims survive a round trip through their own serialization.
        let back: Claims = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, *c);
    }

    /// Row-level security groups subscribers by the policy's key: one user's tokens, which
    /// differ only in `exp` and `iat`, share it; another user, another role, or the same
    /// claims with an empty `role` (acting as `anon`) do not share it with them. Connections
    /// presenting one token share its claims, and with them one copy of the policy.
    #[test]
    fn one_users_tokens_share_a_policy_and_one_token_shares_its_copy() {
        let verifier = Verifier::new(SECRET);
        let user = |sub: &str, role: &str, ttl: i64| {
            let claims = serde_json::json!({"role": role, "sub": sub,
                "exp": now_secs() + ttl, "iat": now_secs() - ttl});
            verifier
                .verify(&token(claims, SECRET, Algorithm::HS256))
                .unwrap()
        };
        let a = user("u1", "authenticated", 60);
        let a_later = user("u1", "authenticated", 120);
        assert!(!Arc::ptr_eq(&a, &a_later), "two tokens, two sets of claims");
        assert_eq!(a.policy().key, a_later.policy().key);
        assert_eq!(a.policy().json, a_later.policy().json);
        for other in [user("u2", "authenticated", 60), user("u1", "anon", 60)] {
            assert_ne!(a.policy().key, other.policy().key);
            assert_ne!(a.policy().json, other.policy().json);
        }
        assert_eq!(&*user("u1", "", 60).policy().role, "anon");
        assert_eq!(&*a.policy().role, "authenticated");
        // The same token again: the same claims, and the policy worked out once.
        let t = sign(SECRET, "anon", None, 60).unwrap();
        let (first, again) = (verifier.verify(&t).unwrap(), verifier.verify(&t).unwrap());
        assert!(Arc::ptr_eq(&first.policy().json, &again.policy().json));
        assert!(Arc::ptr_eq(&first.policy().role, &again.policy().role));
        // Equal claims are equal whether their policy was worked out or not.
        let fresh: Claims = serde_json::from_str(&serde_json::to_string(&*first).unwrap()).unwrap();
        assert_eq!(fresh, *first);
        assert_eq!(fresh.policy().key, first.policy().key);
    }

    proptest::proptest! {
        /// Row-level security sees a float claim exactly as the token has it, however often
        /// the claims are read back from their text.
        #[test]
        fn float_claims_keep_every_bit(x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            let t = token(
                serde_json::json!({"role": "anon", "exp": now_secs() + 60, "x": x, "nested": {"y": x}}),
                SECRET,
                Algorithm::HS256,
            );
            let c = Verifier::new(SECRET).verify(&t).unwrap();
            for _ in 0..3 {
                let seen: serde_json::Value = serde_json::from_str(c.policy_json()).unwrap();
                proptest::prop_assert_eq!(seen["x"].as_f64().map(f64::to_bits), Some(x.to_bits()));
                proptest::prop_assert_eq!(seen["nested"]["y"].as_f64().map(f64::to_bits), Some(x.to_bits()));
            }
        }
    }

    #[test]
    fn a_token_digest_tells_tokens_apart_and_shows_nothing() {
        let a = sign(SECRET, "anon", None, 60).unwrap();
        let b = sign(SECRET, "authenticated", Some("u"), 60).unwrap();
        assert_eq!(TokenDigest::of(&a), TokenDigest::of(&a.clone()));
        // Compared as given: the same token with whitespace is another text.
        assert_ne!(TokenDigest::of(&a), TokenDigest::of(&format!(" {a}")));
        assert_ne!(TokenDigest::of(&a), TokenDigest::of(&b));
        // One character apart (the signature's last) is another token.
        let mut c = a.clone();
        let last = if c.ends_with('A') { 'B' } else { 'A' };
        c.pop();
        c.push(last);
        assert_ne!(TokenDigest::of(&a), TokenDigest::of(&c));
        assert_eq!(format!("{:?}", TokenDigest::of(&a)), "TokenDigest(..)");
    }

    #[test]
    fn each_refusal_has_the_clients_text() {
        let v = Verifier::new(SECRET);
        assert_eq!(v.verify("").unwrap_err(), Error::Missing);
        assert_eq!(v.verify("not-a-jwt").unwrap_err(), Error::Malformed);
        let other = sign("another-secret-entirely!", "anon", None, 60).unwrap();
        assert_eq!(v.verify(&other).unwrap_err(), Error::BadSignature);
        let no_role = token(
            serde_json::json!({"exp": now_secs() + 60}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&no_role).unwrap_err(), Error::MissingClaims);
        let bad_exp = token(
            serde_json::json!({"role":"anon","exp": 0}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(v.verify(&bad_exp).unwrap_err(), Error::InvalidExpiry);
        let expired = sign(SECRET, "anon", None, -12).unwrap();
        let err = v.verify(&expired).unwrap_err();
        assert!(
            matches!(err, Error::Expired(n) if (12..=14).contains(&n)),
            "{err:?}"
        );
        assert_eq!(err.handshake_text(), "Token has expired");
        assert!(err
            .join_reason()
            .starts_with("InvalidJWTToken: Token has expired 1"));
        assert_eq!(
            Error::BadSignature.join_reason(),
            "JwtSignatureError: Failed to validate JWT signature"
        );
        assert_eq!(
            Error::Malformed.join_reason(),
            "MalformedJWT: The token provided is not a valid JWT"
        );
    }

    #[test]
    fn hs384_and_hs512_verify_and_whitespace_is_ignored() {
        let v = Verifier::new(SECRET);
        let claims = serde_json::json!({"role":"anon","exp": now_secs() + 60});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = token(claims.clone(), SECRET, alg);
            assert!(v.verify(&t).is_ok());
        }
        let t = sign(SECRET, "anon", None, 60).unwrap();
        let spaced = format!(" {}\n{} ", &t[..10], &t[10..]);
        assert!(v.verify(&spaced).is_ok());
        let escaped = t.replace('.', "%2E");
        assert!(v.verify(&escaped).is_ok());
    }
}
