//! RS256/ES256 through the JWKS, the audience and `nbf`, with the keys in tests/fixtures/jwks.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::jwks::Jwks;
use super::{now_secs, Error, Verifier};

const SECRET: &str = "a-test-secret-of-decent-length";
const JWKS: &str = include_str!("../../tests/fixtures/jwks/jwks.json");
const RSA: &str = include_str!("../../tests/fixtures/jwks/rsa_private.pem");
const RSA_OTHER: &str = include_str!("../../tests/fixtures/jwks/rsa_other_private.pem");
const EC: &str = include_str!("../../tests/fixtures/jwks/ec_private.pem");

fn verifier(min_refetch: Duration) -> (Verifier, Arc<Jwks>) {
    let jwks = Arc::new(Jwks::from_json(JWKS, min_refetch).unwrap());
    (Verifier::new(SECRET).with_jwks(Arc::clone(&jwks)), jwks)
}

fn claims() -> serde_json::Value {
    serde_json::json!({"role": "authenticated", "exp": now_secs() + 60, "sub": "u1"})
}

fn signed(alg: Algorithm, kid: Option<&str>, pem: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn rs256_and_es256_with_their_kid_are_accepted() {
    let (v, jwks) = verifier(Duration::from_secs(60));
    assert_eq!(jwks.len(), 2);
    let rs = signed(Algorithm::RS256, Some("rsa-test-1"), RSA, &claims());
    assert_eq!(v.verify(&rs).unwrap().role, "authenticated");
    let es = signed(Algorithm::ES256, Some("ec-test-1"), EC, &claims());
    assert_eq!(v.verify(&es).unwrap().sub.as_deref(), Some("u1"));
    assert_eq!(jwks.refetch_requests(), 0);
}

#[test]
fn hs256_with_the_secret_still_works_beside_the_jwks() {
    let (v, _) = verifier(Duration::from_secs(60));
    assert!(v.verify(&hs256(&claims())).is_ok());
}

#[test]
fn only_tokens_signed_with_the_secret_are_kept_verified() {
    let (v, _) = verifier(Duration::from_secs(60));
    // A key set can drop a key: its tokens are verified again every time.
    let rs = signed(Algorithm::RS256, Some("rsa-test-1"), RSA, &claims());
    let (a, b) = (v.verify(&rs).unwrap(), v.verify(&rs).unwrap());
    assert!(!Arc::ptr_eq(&a, &b));
    // The secret cannot change: its tokens are verified once, then only their expiry is checked.
    let hs = hs256(&claims());
    let (a, b) = (v.verify(&hs).unwrap(), v.verify(&hs).unwrap());
    assert!(Arc::ptr_eq(&a, &b));
    // What was kept is the verified claims of that exact text: another token with the same
    // claims, its signature broken, is still refused.
    let mut forged = hs.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(v.verify(&forged).unwrap_err(), Error::BadSignature);
    assert_eq!(v.verify(&forged).unwrap_err(), Error::BadSignature);
    // Spellings of one token (whitespace, percent escapes) are one entry, not one each.
    let spelled = format!(" {} ", hs.replacen('.', "%2E", 1));
    let c = v.verify(&spelled).unwrap();
    assert!(Arc::ptr_eq(&a, &c), "{spelled}");
    // A verifier with an audience check shares nothing verified without it.
    let strict = v.clone().with_audience(Some("only-this-audience"));
    assert_eq!(strict.verify(&hs).unwrap_err(), Error::WrongAudience);
    assert!(v.verify(&hs).is_ok());
}

#[test]
fn a_kid_of_another_family_or_no_jwks_is_a_signature_failure() {
    let (v, _) = verifier(Duration::from_secs(60));
    // An RS256 token naming the EC key.
    let mixed = signed(Algorithm::RS256, Some("ec-test-1"), RSA, &claims());
    assert_eq!(v.verify(&mixed).unwrap_err(), Error::NoMatchingKey);
    // Two keys and no kid: none is chosen.
    let no_kid = signed(Algorithm::RS256, None, RSA, &claims());
    assert_eq!(v.verify(&no_kid).unwrap_err(), Error::NoMatchingKey);
    // Without a JWKS, RS256 is refused (never checked against the secret).
    let rs = signed(Algorithm::RS256, Some("rsa-test-1"), RSA, &claims());
    let err = Verifier::new(SECRET).verify(&rs).unwrap_err();
    assert_eq!(err, Error::AlgNotAllowed);
    // Every signature failure tells the client the same, and the audit log why.
    for e in [
        Error::NoMatchingKey,
        Error::AlgNotAllowed,
        Error::UnknownKid,
    ] {
        assert_eq!(e.to_string(), Error::BadSignature.to_string());
        assert_eq!(e.join_reason(), Error::BadSignature.join_reason());
    }
    assert_eq!(err.reason(), "alg_not_allowed");
    assert_eq!(Error::UnknownKid.reason(), "unknown_kid");
}

#[test]
fn the_only_key_is_used_when_the_token_names_none() {
    let doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    let only_rsa = serde_json::json!({"keys": [doc["keys"][0].clone()]});
    let jwks = Arc::new(Jwks::from_json(&only_rsa.to_string(), Duration::ZERO).unwrap());
    let v = Verifier::new(SECRET).with_jwks(jwks);
    let no_kid = signed(Algorithm::RS256, None, RSA, &claims());
    assert!(v.verify(&no_kid).is_ok());
}

#[test]
fn a_wrong_signature_is_refused() {
    let (v, _) = verifier(Duration::from_secs(60));
    let forged = signed(Algorithm::RS256, Some("rsa-test-1"), RSA_OTHER, &claims());
    assert_eq!(v.verify(&forged).unwrap_err(), Error::BadSignature);
}

#[test]
fn an_unknown_kid_is_refused_and_asks_for_one_refetch_a_minute() {
    let (v, jwks) = verifier(Duration::from_secs(60));
    let unknown = signed(Algorithm::RS256, Some("rotated-key"), RSA, &claims());
    assert_eq!(v.verify(&unknown).unwrap_err(), Error::UnknownKid);
    assert_eq!(v.verify(&unknown).unwrap_err(), Error::UnknownKid);
    assert_eq!(jwks.refetch_requests(), 1);
    // With no minimum interval every unknown kid asks again.
    let (v, jwks) = verifier(Duration::ZERO);
    for _ in 0..3 {
        assert!(v.verify(&unknown).is_err());
    }
    assert_eq!(jwks.refetch_requests(), 3);
}

#[test]
fn alg_none_and_unconfigured_algorithms_are_not_allowed() {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let (v, _) = verifier(Duration::from_secs(60));
    let body = b64(claims());
    for alg in ["none", "None", "RS384", "PS256", "EdDSA"] {
        let head = b64(serde_json::json!({"alg": alg, "typ": "JWT"}));
        let token = format!("{head}.{body}.");
        assert_eq!(v.verify(&token).unwrap_err(), Error::AlgNotAllowed, "{alg}");
        let token = format!("{head}.{body}.c2ln");
        assert_eq!(v.verify(&token).unwrap_err(), Error::AlgNotAllowed, "{alg}");
    }
}

#[test]
fn audience_is_checked_only_when_configured() {
    let (v, _) = verifier(Duration::from_secs(60));
    let mut c = claims();
    c["aud"] = "someone-else".into();
    let other = signed(Algorithm::RS256, Some("rsa-test-1"), RSA, &c);
    assert!(v.verify(&other).is_ok());
    let v = v.with_audience(Some("authenticated"));
    let err = v.verify(&other).unwrap_err();
    assert_eq!(err, Error::WrongAudience);
    assert_eq!(
        err.join_reason(),
        "InvalidJWTToken: Token audience is not accepted"
    );
    assert_eq!(
        v.verify(&hs256(&claims())).unwrap_err(),
        Error::WrongAudience
    );
    c["aud"] = "authenticated".into();
    assert!(v
        .verify(&signed(Algorithm::ES256, Some("ec-test-1"), EC, &c))
        .is_ok());
    c["aud"] = serde_json::json!(["x", "authenticated"]);
    assert!(v.verify(&hs256(&c)).is_ok());
    c["aud"] = serde_json::json!(["x", "y"]);
    assert_eq!(v.verify(&hs256(&c)).unwrap_err(), Error::WrongAudience);
}

#[test]
fn nbf_in_the_future_is_not_valid_yet() {
    let (v, _) = verifier(Duration::from_secs(60));
    let mut c = claims();
    c["nbf"] = (now_secs() + 30).into();
    let early = signed(Algorithm::RS256, Some("rsa-test-1"), RSA, &c);
    let err = v.verify(&early).unwrap_err();
    assert_eq!(err, Error::NotYetValid);
    assert_eq!(err.handshake_text(), "Token is not valid yet");
    assert_eq!(v.verify(&hs256(&c)).unwrap_err(), Error::NotYetValid);
    c["nbf"] = (now_secs() - 5).into();
    assert!(v.verify(&hs256(&c)).is_ok());
}

#[test]
fn a_jwks_without_usable_keys_is_refused() {
    let err = Jwks::from_json(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, Duration::ZERO);
    assert!(err.unwrap_err().reason.contains("no RS256 or ES256"));
    assert!(Jwks::from_json("not json", Duration::ZERO).is_err());
}

#[tokio::test]
async fn load_reads_a_file_and_fails_fast_on_a_missing_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks/jwks.json");
    let jwks = Jwks::load(path, Duration::from_secs(60), None)
        .await
        .unwrap();
    assert_eq!(jwks.len(), 2);
    let missing = Jwks::load("/nonexistent/jwks.json", Duration::ZERO, None).await;
    assert!(missing.is_err());
}
