//! The credential that operator surfaces (`/metrics`, later an admin API) ask for.
//!
//! Accepted, as `Authorization: Bearer <credential>`: a `service_role` JWT that the gateway's
//! verifier accepts (signature and expiry), or the static `--admin-token` when one is set,
//! compared in constant time. Anything else is answered 401 with a JSON body.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::{self, Verifier};

/// The role a JWT must carry to be accepted.
pub const ADMIN_ROLE: &str = "service_role";

/// Why a request was refused; answered as 401 with `{"error":"unauthorized","message":..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A credential that is neither the admin token nor a valid JWT: why the JWT was refused.
    Invalid(auth::Error),
    /// A valid JWT of another role.
    WrongRole,
}

impl Denied {
    /// The text of the 401 body's `message`.
    pub fn message(&self) -> &'static str {
        match self {
            Denied::Missing => "an `Authorization: Bearer` credential is required",
            Denied::Invalid(_) => "the credential is not accepted",
            Denied::WrongRole => "the token's role is not service_role",
        }
    }

    /// A machine-readable name of the refusal for the audit log (`credential_missing`,
    /// `role_not_allowed`, or the token's own, e.g. `token_expired`, `bad_signature`).
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "credential_missing",
            Denied::Invalid(e) => e.reason(),
            Denied::WrongRole => "role_not_allowed",
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let body = json!({"error": "unauthorized", "message": self.message()});
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(body),
        )
            .into_response()
    }
}

/// What a request must present.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// Verifies `service_role` JWTs.
    pub verifier: &'a Verifier,
    /// The static admin token, when configured.
    pub admin_token: Option<&'a str>,
}

impl Gate<'_> {
    /// Checks the request's `Authorization` header.
    ///
    /// # Errors
    /// [`Denied`] naming what is wrong.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let presented = bearer(headers).ok_or(Denied::Missing)?;
        if let Some(token) = self.admin_token {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Ok(());
            }
        }
        match self.verifier.verify(presented) {
            Ok(claims) if claims.role == ADMIN_ROLE => Ok(()),
            Ok(_) => Err(Denied::WrongRole),
            Err(e) => Err(Denied::Invalid(e)),
        }
    }
}

/// The credential of an `Authorization: Bearer <credential>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// Compares `presented` with `expected` in time that depends only on `presented`'s length, so
/// timing tells nothing about how much of the secret matched.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, byte) in presented.iter().enumerate() {
        let other = expected.get(i).copied().unwrap_or(!*byte);
        diff |= std::hint::black_box(byte ^ other);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn constant_time_eq_matches_only_equal_bytes() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-tokeN", b"secret-token"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token-and-more", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn gate_accepts_the_token_or_a_service_role_jwt() {
        let secret = "a-secret-of-at-least-32-characters!!";
        let verifier = Verifier::new(secret);
        let gate = Gate {
            verifier: &verifier,
            admin_token: Some("static-admin-token"),
        };
        assert_eq!(gate.check(&HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(gate.check(&headers("Bearer static-admin-token")), Ok(()));
        assert_eq!(gate.check(&headers("bearer static-admin-token")), Ok(()));
        assert_eq!(
            gate.check(&headers("Basic static-admin-token")),
            Err(Denied::Missing)
        );
        let wrong = gate.check(&headers("Bearer wrong")).unwrap_err();
        assert_eq!(wrong, Denied::Invalid(crate::auth::Error::Malformed));
        assert_eq!(wrong.reason(), "malformed");
        let service = crate::auth::sign(secret, "service_role", None, 60).unwrap();
        assert_eq!(gate.check(&headers(&format!("Bearer {service}"))), Ok(()));
        let anon = crate::auth::sign(secret, "anon", None, 60).unwrap();
        assert_eq!(
            gate.check(&headers(&format!("Bearer {anon}"))),
            Err(Denied::WrongRole)
        );
        assert_eq!(Denied::WrongRole.reason(), "role_not_allowed");
        let expired = crate::auth::sign(secret, "service_role", None, -60).unwrap();
        let denied = gate
            .check(&headers(&format!("Bearer {expired}")))
            .unwrap_err();
        assert!(matches!(
            denied,
            Denied::Invalid(crate::auth::Error::Expired(_))
        ));
        assert_eq!(denied.reason(), "token_expired");
    }
}
