//! The REST broadcast endpoints (docs/protocol.md 7.3), served at the root and under `/realtime/v1`:
//!
//! - `POST /api/broadcast` with `{"messages": [{"topic", "event", "payload", "private"?, "id"?}]}`
//!   (topics without `realtime:`): what realtime-js `send()` falls back to on a channel that is
//!   not joined;
//! - `POST /api/broadcast/<topic>/events/<event>[?private=true]` with the payload as the body
//!   (`application/json`, or `application/octet-stream` for raw bytes): realtime-js `httpSend()`,
//!   realtime-py `http_send()`.
//!
//! Authenticated like a channel token: `Authorization: Bearer <jwt>`, else an `apikey: <jwt>`
//! header. Each message goes to the [`Hub`](super::Hub) like a client broadcast without a
//! sender (every member gets it, on every node). Answers: 202 with an empty body once the
//! messages are handed to the hub; 401 `{"message":"Unauthorized"}`; 413 when a payload is over
//! `--max-message-bytes`; 422 when the body does not have the documented shape; 403 (503)
//! when a `private` message's topic refuses (cannot check) the caller's token ([`private`]). The status of
//! each refusal comes from [`status_code`], the one mapping of broadcast errors to statuses. The socket's query string (`apikey`,
//! `vsn`) that clients leave on the URL is ignored.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{Error, Hub, Message};
use crate::auth::{Claims, Verifier};
use crate::limits::client::{self, ClientLimits};
use crate::protocol::RawJson;
use crate::registry::Registry;

/// What the REST handlers use.
#[derive(Debug, Clone)]
pub struct RestState {
    /// The hub messages are handed to.
    pub hub: Hub,
    /// Verifies request tokens.
    pub verifier: Verifier,
    /// Longest topic and event name accepted.
    pub bounds: RestBounds,
    /// Failed authentications per client address (a refused token counts).
    pub clients: Arc<ClientLimits>,
    /// Where rate and token refusals are audited.
    pub registry: Registry,
    /// Authorizes messages to private channels ([`private`]).
    pub authorizer: crate::auth::channel::Authorizer,
}

/// What one REST request may carry: the longest topic and event name, in bytes
/// (`--max-topic-bytes`, `--max-event-bytes`), and the most messages in one batch
/// (`--max-rest-messages`); more is refused with 422.
#[derive(Debug, Clone, Copy)]
pub struct RestBounds {
    /// Longest topic.
    pub topic: usize,
    /// Longest event name.
    pub event: usize,
    /// Most messages in one batch.
    pub messages: usize,
}

impl RestBounds {
    fn check(self, topic: &str, event: &str) -> Result<(), Error> {
        if topic.len() > self.topic {
            return Err(Error::Invalid(format!(
                "topic is longer than {} bytes",
                self.topic
            )));
        }
        if event.len() > self.event {
            return Err(Error::Invalid(format!(
                "event is longer than {} bytes",
                self.event
            )));
        }
        Ok(())
    }
}

/// The broadcast routes; request bodies are limited to `max_body_bytes`.
pub fn routes<S>(max_body_bytes: usize) -> Router<S>
where
    RestState: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/broadcast", post(batch))
        .route("/realtime/v1/api/broadcast", post(batch))
        .route("/api/broadcast/{topic}/events/{event}", post(single))
        .route(
            "/realtime/v1/api/broadcast/{topic}/events/{event}",
            post(single),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

/// `POST /api/broadcast`.
async fn batch(
    State(state): State<RestState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (claims, addr) = match admit(&state, peer, &headers).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let checked = batch_messages(&body, state.bounds).and_then(|messages| {
        for (_, _, message) in &messages {
            check_size(&state, message)?;
        }
        Ok(messages)
    });
    let messages = match checked {
        Ok(messages) => messages,
        Err(e) => return respond(Err(e)),
    };
    let private = messages.iter().filter(|m| m.1).map(|m| m.0.as_str());
    if let Err(e) = private::authorize(&state, &claims, addr, private).await {
        return respond(Err(e));
    }
    let result = (|| {
        for (topic, private, message) in &messages {
            state.hub.send(topic, *private, None, message)?;
        }
        Ok(messages.len())
    })();
    respond(result)
}

/// `POST /api/broadcast/<topic>/events/<event>`.
async fn single(
    State(state): State<RestState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((topic, event)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (claims, addr) = match admit(&state, peer, &headers).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let private = query
        .get("private")
        .is_some_and(|p| p.eq_ignore_ascii_case("true"));
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    let checked = (|| {
        if topic.is_empty() || event.is_empty() {
            return Err(Error::Invalid("topic and event are required".to_owned()));
        }
        state.bounds.check(&topic, &event)?;
        let message = if binary {
            Message::Binary {
                event: Arc::from(event.as_str()),
                meta: None,
                payload: body,
            }
        } else {
            let payload = RawJson::parse_slice(&body)
                .map_err(|_| Error::Invalid("the body is not valid json".to_owned()))?;
            json_message(&event, payload.as_str(), None)
        };
        check_size(&state, &message)?;
        Ok(message)
    })();
    let message = match checked {
        Ok(message) => message,
        Err(e) => return respond(Err(e)),
    };
    let topic = crate::protocol::channel_name(&topic);
    if private {
        if let Err(e) = private::authorize(&state, &claims, addr, [topic]).await {
            return respond(Err(e));
        }
    }
    respond(state.hub.send(topic, private, None, &message).map(|_| 1))
}

/// Checks the token of a request from `peer` (or the client it forwards for): a refused token
/// counts as a failed authentication of the client address; an address this node knows is
/// blocked, or whose failure is over the limit, is refused with 429 (docs/protocol.md 10).
/// `Ok` holds the token's claims and the client address; `Err` is the response to answer.
async fn admit(
    state: &RestState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(Arc<Claims>, SocketAddr), Response> {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let addr = state.clients.client_addr(peer, forwarded);
    if state.clients.is_known_blocked(addr.ip()) {
        return Err(too_many_failures(state, addr));
    }
    let e = match authorize(state, headers) {
        Ok(claims) => return Ok((claims, addr)),
        Err(e) => e,
    };
    if let Error::Unauthorized(refused) = &e {
        let detail = json!({"message": refused.to_string()});
        state
            .registry
            .auth_refused("rest", refused.reason(), None, Some(addr), detail);
    }
    match state.clients.record_failure(addr.ip()).await {
        Ok(true) => return Err(too_many_failures(state, addr)),
        Ok(false) => {}
        Err(e) => tracing::warn!(peer = %addr, error = %e, "cannot count a failed authentication"),
    }
    Err(respond(Err(e)))
}

/// A 429 for an address blocked for failed authentications: counted and audited.
fn too_many_failures(state: &RestState, addr: SocketAddr) -> Response {
    client::count_refusal("auth_failures");
    let detail = json!({"kind": "auth_failures", "stage": "rest",
                        "limit": state.clients.max_failures(),
                        "window_s": state.clients.window().as_secs_f64()});
    state
        .registry
        .audit("rate_limited", None, Some(addr), detail);
    let body = json!({ "message": client::AUTH_FAILURES_TEXT });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

/// Checks the token of a REST request (docs/protocol.md 7.3).
fn authorize(state: &RestState, headers: &HeaderMap) -> Result<Arc<Claims>, Error> {
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let bearer = header(header::AUTHORIZATION).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    });
    let token = bearer
        .or_else(|| header(header::HeaderName::from_static("apikey")))
        .unwrap_or_default();
    state.verifier.verify(token).map_err(Error::Unauthorized)
}

/// A JSON object's members as slices of its text; the last of a repeated key counts.
type Fields<'a> = HashMap<Cow<'a, str>, &'a RawValue>;

/// The members of `raw` when it is an object.
fn object(raw: &RawValue) -> Option<Fields<'_>> {
    serde_json::from_str(raw.get()).ok()
}

/// Validates a batch body: each message becomes `(topic, private, message)`. Each payload is
/// kept as the text of the body (docs/protocol.md 7.1): only the other fields are read.
fn batch_messages(body: &[u8], bounds: RestBounds) -> Result<Vec<(String, bool, Message)>, Error> {
    let invalid = |m: &str| Error::Invalid(m.to_owned());
    let body: &RawValue =
        serde_json::from_slice(body).map_err(|_| invalid("the body is not valid json"))?;
    let messages = object(body)
        .and_then(|body| body.get("messages").copied())
        .and_then(|m| serde_json::from_str::<Vec<&RawValue>>(m.get()).ok())
        .ok_or_else(|| invalid("messages must be a list"))?;
    if messages.len() > bounds.messages {
        return Err(Error::Invalid(format!(
            "at most {} messages per request",
            bounds.messages
        )));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(m) = object(m) else {
            return Err(Error::Invalid(format!("messages[{i}] must be an object")));
        };
        let field = |k: &str| m.get(k).copied().filter(|v| v.get() != "null");
        let string = |v: &RawValue| serde_json::from_str::<String>(v.get()).ok();
        let Some(topic) = field("topic").and_then(string).filter(|t| !t.is_empty()) else {
            return Err(Error::Invalid(format!("messages[{i}].topic is required")));
        };
        let Some(event) = field("event") else {
            return Err(Error::Invalid(format!("messages[{i}].event is required")));
        };
        let Some(event) = string(event) else {
            return Err(Error::Invalid(format!(
                "messages[{i}].event must be a string"
            )));
        };
        let Some(payload) = field("payload") else {
            return Err(Error::Invalid(format!("messages[{i}].payload is required")));
        };
        let private = match field("private").map(|v| serde_json::from_str::<Value>(v.get())) {
            None => false,
            Some(Ok(Value::Bool(b))) => b,
            Some(Ok(Value::String(s))) if s.eq_ignore_ascii_case("true") => true,
            Some(Ok(Value::String(s))) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "messages[{i}].private must be a boolean"
                )))
            }
        };
        let id = match field("id") {
            None => None,
            Some(id) => match string(id) {
                Some(id) => Some(id),
                None => return Err(Error::Invalid(format!("messages[{i}].id must be a string"))),
            },
        };
        let topic = crate::protocol::channel_name(&topic);
        bounds.check(topic, &event)?;
        out.push((
            topic.to_owned(),
            private,
            json_message(&event, payload.get(), id.as_deref()),
        ));
    }
    Ok(out)
}

/// `{"type":"broadcast","event":E,"payload":P}`, plus `"meta":{"id":…}` when given; `payload`
/// is JSON text, copied as it is.
fn json_message(event: &str, payload: &str, id: Option<&str>) -> Message {
    let json_str = |s: &str| Value::from(s).to_string();
    let mut message = String::with_capacity(payload.len() + event.len() + 64);
    message.push_str("{\"type\":\"broadcast\",\"event\":");
    message.push_str(&json_str(event));
    message.push_str(",\"payload\":");
    message.push_str(payload);
    if let Some(id) = id {
        message.push_str(",\"meta\":{\"id\":");
        message.push_str(&json_str(id));
        message.push('}');
    }
    message.push('}');
    Message::Json(Arc::from(message))
}

fn check_size(state: &RestState, message: &Message) -> Result<(), Error> {
    let (size, limit) = (message.size(), state.hub.max_message_bytes());
    if size > limit {
        return Err(Error::TooLarge { size, limit });
    }
    Ok(())
}

/// The HTTP status of a refused broadcast request.
pub fn status_code(e: &Error) -> StatusCode {
    match e {
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::PresenceFull => StatusCode::TOO_MANY_REQUESTS,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::AuthorizationUnavailable | Error::ReplayUnavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

fn respond(result: Result<usize, Error>) -> Response {
    match result {
        Ok(n) => {
            metrics::counter!("gateway_broadcast_rest_messages_total").increment(n as u64);
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            let message = match &e {
                Error::Unauthorized(_) => "Unauthorized".to_owned(),
                other => other.to_string(),
            };
            tracing::debug!(error = %e, "broadcast request refused");
            let status = status_code(&e);
            (status, Json(json!({ "message": message }))).into_response()
        }
    }
}

mod private;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: RestBounds = RestBounds {
        topic: 16,
        event: 8,
        messages: 3,
    };

    /// Guards the REST bounds: an over-long topic or event is refused with 422 and its reason.
    #[test]
    fn long_topics_and_events_are_refused() {
        for (topic, event, reason) in [
            (
                "t".repeat(17),
                "e".to_owned(),
                "topic is longer than 16 bytes",
            ),
            (
                "t".to_owned(),
                "e".repeat(9),
                "event is longer than 8 bytes",
            ),
        ] {
            let body = json!({"messages": [{"topic": topic, "event": event, "payload": {}}]});
            let e = batch_messages(body.to_string().as_bytes(), BOUNDS).unwrap_err();
            assert!(e.to_string().contains(reason), "{e}");
            assert_eq!(status_code(&e), StatusCode::UNPROCESSABLE_ENTITY);
        }
        let one = json!({"topic": "t", "event": "e", "payload": {}});
        let four = json!({ "messages": vec![one; 4] });
        let e = batch_messages(four.to_string().as_bytes(), BOUNDS).unwrap_err();
        assert!(
            e.to_string().contains("at most 3 messages per request"),
            "{e}"
        );
        let ok = json!({"messages": [{"topic": "realtime:".to_owned() + &"t".repeat(16),
                                      "event": "e".repeat(8), "payload": {}}]});
        assert!(batch_messages(ok.to_string().as_bytes(), BOUNDS).is_ok());
    }

    #[test]
    fn batches_keep_order_and_strip_the_realtime_prefix() {
        let body = json!({"messages": [
            {"topic": "realtime:a", "event": "e1", "payload": {"n": 1}, "id": "x"},
            {"topic": "b", "event": "e2", "payload": [1], "private": true},
        ]});
        let got = batch_messages(body.to_string().as_bytes(), BOUNDS).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.as_str(), got[0].1), ("a", false));
        assert_eq!((got[1].0.as_str(), got[1].1), ("b", true));
        let Message::Json(first) = &got[0].2 else {
            panic!("json expected")
        };
        let first: Value = serde_json::from_str(first).unwrap();
        assert_eq!(
            first,
            json!({"type": "broadcast", "event": "e1", "payload": {"n": 1}, "meta": {"id": "x"}})
        );
    }

    #[test]
    fn malformed_batches_are_refused_with_the_reason() {
        for (body, reason) in [
            ("{", "not valid json"),
            ("{}", "messages must be a list"),
            (r#"{"messages":[1]}"#, "messages[0] must be an object"),
            (
                r#"{"messages":[{"event":"e","payload":{}}]}"#,
                "topic is required",
            ),
            (
                r#"{"messages":[{"topic":"t","payload":{}}]}"#,
                "event is required",
            ),
            (
                r#"{"messages":[{"topic":"t","event":"e"}]}"#,
                "payload is required",
            ),
        ] {
            let e = batch_messages(body.as_bytes(), BOUNDS).unwrap_err();
            assert!(e.to_string().contains(reason), "{body}: {e}");
            assert_eq!(status_code(&e), StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
}
