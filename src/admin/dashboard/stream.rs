//! `GET /admin/stream`: the dashboard's live feed, as server-sent events, for the operator
//! credential only ([`credential`](crate::admin::credential)).
//!
//! The page reads it with `fetch` (an `EventSource` cannot send `Authorization`, and a
//! credential in the URL would reach logs and browser history). Events:
//!
//! - `history`: the charts' points so far (`[Point]`), once, first;
//! - `sample`: every sample ([`Sample`](super::sample::Sample)), the latest one at once;
//! - `end`: `{"reason", "message"}`, last, when the stream ends for a reason the page should
//!   show: the credential expired (`token_expired`, ...), or the gateway is shutting down
//!   (`shutdown`).
//!
//! Refusals are answered as the admin API answers them (401, or 403 for a token of another
//! role) and audited. The credential is checked again at every sample, so a stream opened with
//! a token ends when the token expires. At most [`MAX_STREAMS`] streams are open on a node at
//! once (503 beyond); a stream whose client went away gives its place back at its next sample.
//! Each open stream also holds one of `--max-pending-connections` (it never leaves its HTTP
//! phase).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::{Dashboard, Published, Viewer};
use crate::admin::credential::{Denied, Gate};
use crate::state::AppState;

/// Dashboard streams one node serves at once.
pub const MAX_STREAMS: usize = 16;

/// How often an idle stream sends a comment, so that proxies do not close it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where the stream is.
enum Phase {
    History(String),
    Latest,
    Live,
    Done,
}

/// What one open stream holds.
struct Feed {
    phase: Phase,
    samples: watch::Receiver<Option<Arc<Published>>>,
    state: AppState,
    /// The `Authorization` header the stream was opened with, checked again at every sample.
    credential: HeaderMap,
    _viewer: Viewer,
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    fn gate(&self) -> Gate<'_> {
        Gate {
            verifier: &self.state.session.verifier,
            admin_token: self.state.config.admin_token.as_deref(),
        }
    }

    async fn next(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.phase, Phase::Live) {
            Phase::History(points) => {
                self.phase = Phase::Latest;
                Some(Event::default().event("history").data(points))
            }
            Phase::Latest => {
                let latest = self.samples.borrow_and_update().clone();
                match latest {
                    Some(sample) => Some(sample_event(&sample)),
                    // No sample yet: the first one comes with the next change.
                    None => self.live().await,
                }
            }
            Phase::Live => self.live().await,
            Phase::Done => {
                self.phase = Phase::Done;
                None
            }
        }
    }

    async fn live(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                () = self.state.shutdown.cancelled() => {
                    self.phase = Phase::Done;
                    return Some(end_event("shutdown", "the gateway is shutting down"));
                }
                changed = self.samples.changed() => {
                    if changed.is_err() {
                        // The sampler stopped: only at shutdown.
                        self.phase = Phase::Done;
                        return Some(end_event("shutdown", "the gateway is shutting down"));
                    }
                }
            }
            if let Err(denied) = self.gate().check(&self.credential) {
                self.phase = Phase::Done;
                return Some(end_event(denied.reason(), denied.message()));
            }
            if let Some(sample) = self.samples.borrow_and_update().clone() {
                return Some(sample_event(&sample));
            }
        }
    }
}

fn sample_event(sample: &Published) -> Event {
    Event::default()
        .event("sample")
        .id(sample.seq.to_string())
        .data(sample.json.as_str())
}

fn end_event(reason: &str, message: &str) -> Event {
    Event::default()
        .event("end")
        .data(json!({"reason": reason, "message": message}).to_string())
}

/// `GET /admin/stream`; a refused credential is audited (`auth_refused`, stage `admin`).
pub(super) async fn handler(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let gate = Gate {
        verifier: &state.session.verifier,
        admin_token: state.config.admin_token.as_deref(),
    };
    if let Err(denied) = gate.check(&headers) {
        return refuse(&state, peer, &headers, denied);
    }
    let Ok(permit) = Arc::clone(&dashboard.shared.streams).try_acquire_owned() else {
        let body = json!({
            "error": "too_many_streams",
            "message": format!("at most {MAX_STREAMS} dashboard streams may be open on a node"),
        });
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
            Json(body),
        )
            .into_response();
    };
    let mut credential = HeaderMap::new();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        credential.insert(header::AUTHORIZATION, value.clone());
    }
    let feed = Feed {
        phase: Phase::History(dashboard.shared.history_json()),
        samples: dashboard.shared.latest.subscribe(),
        state,
        credential,
        _viewer: Viewer::new(&dashboard.shared),
        _permit: permit,
    };
    let events = events(feed);
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // Proxies that buffer answers (nginx) would hold the events back.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)),
    )
        .into_response()
}

fn events(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    })
}

/// Audits the refusal and answers as the admin API does: 401 when there is no credential or it
/// is not accepted, 403 for a valid token of another role, with `{"error", "message"}`.
fn refuse(state: &AppState, peer: SocketAddr, headers: &HeaderMap, denied: Denied) -> Response {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let peer = state.session.limits.clients.client_addr(peer, forwarded);
    let detail = json!({"endpoint": "/admin/stream", "message": denied.message()});
    state
        .session
        .registry
        .auth_refused("admin", denied.reason(), None, Some(peer), detail);
    match denied {
        Denied::WrongRole => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "forbidden", "message": denied.message()})),
        )
            .into_response(),
        Denied::Missing | Denied::Invalid(_) => denied.into_response(),
    }
}
