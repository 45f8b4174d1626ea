//! The WebSocket upgrade: authenticate the `apikey`, pick the serializer, take a connection
//! slot, and start the session on the shutdown tracker.
//!
//! Refusals are HTTP errors with the JSON bodies docs/protocol.md section 1.2 gives, answered after
//! the connect-error delay (so reconnect loops slow down) without holding any slot.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{Services, Session, SessionParams};
use crate::auth::TokenDigest;
use crate::limits::client::{self, Refused};
use crate::limits::Acquired;
use crate::protocol::Vsn;
use crate::socket::{Limits, Upgrade};

/// `Retry-After` of an upgrade refused because the database cannot be reached, in seconds.
const RETRY_AFTER_SECS: &str = "5";

/// The query parameters an upgrade reads; the others (realtime-js's `log_level`, ...) are
/// ignored, and of a repeated one the last counts. Values without escapes are borrowed from
/// the request's URI, not copied.
#[derive(Debug, Default)]
struct UpgradeQuery<'a> {
    apikey: Option<Cow<'a, str>>,
    vsn: Option<Cow<'a, str>>,
    /// [`super::resume::SESSION_PARAM`].
    session: Option<Cow<'a, str>>,
    component: Option<Cow<'a, str>>,
}

impl<'a> UpgradeQuery<'a> {
    fn parse(query: Option<&'a str>) -> UpgradeQuery<'a> {
        let mut q = UpgradeQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match &*key {
                "apikey" => &mut q.apikey,
                "vsn" => &mut q.vsn,
                super::resume::SESSION_PARAM => &mut q.session,
                "component" => &mut q.component,
                _ => continue,
            };
            *slot = Some(value);
        }
        q
    }
}

/// `GET /realtime/v1/websocket` and `GET /socket/websocket`.
pub async fn handler(
    State(state): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    let query = UpgradeQuery::parse(uri.query());
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let clients = &state.limits.clients;
    let peer = clients.client_addr(peer, forwarded);
    if state.shutdown.is_triggered() {
        return restarting(&state).await;
    }
    match clients.is_blocked(peer.ip()).await {
        Ok(false) => {}
        Ok(true) => return auth_failures_refused(&state, peer).await,
        Err(crate::limits::Error::Stopped) => return restarting(&state).await,
        Err(e) => {
            // Not known to be blocked: admitted (the connection cap still asks the database).
            // The batch's failure was logged once; each upgrade is counted.
            metrics::counter!("gateway_limits_auth_check_unavailable_total").increment(1);
            tracing::debug!(peer = %peer, error = %crate::error::chain(&e), "upgrade admitted without its failed-authentication check");
        }
    }
    let apikey = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or(query.apikey.as_deref())
        .unwrap_or_default();
    let claims = match state.verifier.verify(apikey) {
        Ok(claims) => claims,
        Err(e) => {
            metrics::counter!("gateway_session_auth_failures_total").increment(1);
            tracing::debug!(peer = %peer, error = %e, "upgrade refused: bad apikey");
            let detail = json!({"message": e.to_string()});
            state
                .registry
                .auth_refused("connect", e.reason(), None, Some(peer), detail);
            match clients.record_failure(peer.ip()).await {
                Ok(true) => return auth_failures_refused(&state, peer).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "cannot count a failed authentication");
                }
            }
            return refuse(&state, StatusCode::UNAUTHORIZED, &e.handshake_text()).await;
        }
    };
    let vsn = match Vsn::from_query(query.vsn.as_deref()) {
        Ok(vsn) => vsn,
        Err(_) => return StatusCode::FORBIDDEN.into_response(),
    };
    let session_id = query.session.map(Cow::into_owned);
    if session_id
        .as_deref()
        .is_some_and(|id| !super::resume::valid_id(id))
    {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            super::resume::INVALID_ID_TEXT,
        )
        .await;
    }
    // This node's own count refuses at once what it alone already exceeds; the slot then
    // counts the address and user across the cluster.
    let refused_client = |refused: Refused| {
        let (kind, text, limit) = match refused {
            Refused::PerAddr => (
                "connections_per_addr",
                client::PER_ADDR_TEXT,
                state.config.max_connections_per_addr,
            ),
            Refused::PerUser => (
                "connections_per_user",
                client::PER_USER_TEXT,
                state.config.max_connections_per_user,
            ),
        };
        (kind, text, json!({"kind": kind, "limit": limit}))
    };
    let guard = match clients.admit(peer.ip(), claims.user_id()) {
        Ok(guard) => guard,
        Err(refused) => {
            let (kind, text, detail) = refused_client(refused);
            return rate_limited(&state, kind, claims.user_id(), peer, text, detail).await;
        }
    };
    let connection_id = uuid::Uuid::new_v4();
    let acquired = state
        .limits
        .acquire_connection(connection_id, peer.ip(), claims.user_id())
        .await;
    let mut permit = match acquired {
        Ok(Acquired::Permit(permit)) => permit,
        Ok(Acquired::Refused(refused)) => {
            let (kind, text, detail) = refused_client(refused);
            return rate_limited(&state, kind, claims.user_id(), peer, text, detail).await;
        }
        Ok(Acquired::Full) => {
            metrics::counter!("gateway_limits_refused_total").increment(1);
            tracing::warn!(peer = %peer, "upgrade refused: connection cap reached");
            state.registry.audit(
                "cap_refused",
                claims.user_id(),
                Some(peer),
                json!({"cap": state.limits.max_connections()}),
            );
            return refuse(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many connected users",
            )
            .await;
        }
        Err(crate::limits::Error::Stopped) => return restarting(&state).await,
        Err(e) => {
            // The cap is exact across nodes only while the database can be asked: a node that
            // admitted on its own could let the cluster exceed it. So the client is told to come
            // back (503 with Retry-After, which the clients' reconnect back-off handles);
            // sessions already open keep being served.
            metrics::counter!("gateway_limits_unavailable_total").increment(1);
            tracing::warn!(peer = %peer, error = %crate::error::chain(&e), "upgrade refused: cannot check the connection cap");
            let mut response = refuse(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "Realtime is temporarily unavailable, please retry",
            )
            .await;
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
            return response;
        }
    };
    permit.hold(guard);
    let params = SessionParams {
        connection_id,
        vsn,
        apikey: TokenDigest::of(apikey),
        claims,
        peer,
        // Bounded like a join's `component`; a longer one is not recorded at all.
        component: query
            .component
            .filter(|c| c.len() <= state.config.max_name_bytes)
            .map(Cow::into_owned),
        session_id,
    };
    let config = &state.config;
    let tracker = state.shutdown.clone();
    let limits = Limits {
        max_frame: config.max_frame_bytes,
        max_message: config.max_frame_bytes,
    };
    ws.on_upgrade(limits, move |socket| {
        let session = Session::new(state, params, permit);
        // Tracked so shutdown waits for its close frame; it runs in the upgrade's own task (a
        // second task per connection would cost memory for nothing).
        tracker.track("session", session.run(socket))
    })
}

/// Refuses an upgrade while the node stops: another node, or this one once restarted, will
/// answer.
async fn restarting(state: &Services) -> Response {
    let mut refused = refuse(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Realtime is restarting, please standby",
    )
    .await;
    refused.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    refused
}

/// Refuses an upgrade from an address blocked for failed authentications.
async fn auth_failures_refused(state: &Services, peer: std::net::SocketAddr) -> Response {
    let clients = &state.limits.clients;
    let detail = json!({"kind": "auth_failures", "limit": clients.max_failures(),
                        "window_s": clients.window().as_secs_f64()});
    rate_limited(
        state,
        "auth_failures",
        None,
        peer,
        client::AUTH_FAILURES_TEXT,
        detail,
    )
    .await
}

/// Refuses an upgrade with 429: counted by `kind`, audited `rate_limited` with `detail`.
async fn rate_limited(
    state: &Services,
    kind: &'static str,
    user: Option<uuid::Uuid>,
    peer: std::net::SocketAddr,
    text: &str,
    detail: serde_json::Value,
) -> Response {
    client::count_refusal(kind);
    tracing::debug!(peer = %peer, kind, "upgrade refused: rate limited");
    state
        .registry
        .audit("rate_limited", user, Some(peer), detail);
    refuse(state, StatusCode::TOO_MANY_REQUESTS, text).await
}

/// Answers a refused upgrade after the connect-error delay.
async fn refuse(state: &Services, status: StatusCode, text: &str) -> Response {
    let delay = state.config.connect_error_delay;
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
    (status, Json(json!({ "error": text }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_gives_the_last_of_each_parameter_decoded_and_borrows_what_needs_no_decoding() {
        let q = UpgradeQuery::parse(Some(
            "apikey=a.b.c&vsn=1.0.0&log_level=info&vsn=2.0.0&session=s%2D1&component=my+app",
        ));
        assert_eq!(q.apikey.as_deref(), Some("a.b.c"));
        assert!(matches!(q.apikey, Some(Cow::Borrowed(_))), "not copied");
        assert_eq!(q.vsn.as_deref(), Some("2.0.0"), "the last one counts");
        assert_eq!(q.session.as_deref(), Some("s-1"));
        assert_eq!(q.component.as_deref(), Some("my app"));
        let none = UpgradeQuery::parse(None);
        assert!(none.apikey.is_none() && none.vsn.is_none());
        assert!(none.session.is_none() && none.component.is_none());
        // Bytes that are not UTF-8 once decoded become replacement characters, as before.
        let odd = UpgradeQuery::parse(Some("apikey=%FF&=x&vsn"));
        assert_eq!(odd.apikey.as_deref(), Some("\u{fffd}"));
        assert_eq!(odd.vsn.as_deref(), Some(""));
    }
}
