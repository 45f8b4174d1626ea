//! The live admin dashboard at `/admin`: one page shipped inside the binary (HTML, script and
//! style, no library, font or request to another origin), fed by a stream of samples from this
//! gateway ([`stream`], `GET /admin/stream`, for the operator credential only), plus the
//! connection-cap watcher ([`watcher`]) that runs whether or not anyone watches.
//!
//! Fed by: the session table and connection slots (connections), this process's metrics
//! ([`rates`]: messages per second, delivery latency), the registry and audit tables
//! ([`overview`]). Feeds: the page, and the audit log (`cap_threshold_crossed`). The page's
//! kick button calls the admin API's disconnect endpoint; nothing here closes a session.
//!
//! The page itself holds no data and is served to anyone; it asks for the credential, keeps it
//! in the tab's `sessionStorage` and sends it as `Authorization: Bearer`, never in a URL. Its
//! Content-Security-Policy allows nothing but this origin, so a browser enforces that it loads
//! and sends nothing elsewhere.

mod overview;
mod rates;
mod sample;
mod sampler;
mod stream;
pub mod watcher;

pub use overview::{AuditEvent, Channel, Node};
pub use rates::{Rates, Totals};
pub use sample::{Connections, Overview, Point, Sample, Stale};
pub use stream::MAX_STREAMS;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::sync::{watch, Semaphore};

use crate::state::AppState;

/// Points the charts keep: five minutes at the default interval of one second.
pub const HISTORY_POINTS: usize = 300;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/dashboard.js");
const STYLE: &str = include_str!("page/dashboard.css");

/// What the page may load and where it may connect: this origin only (`data:` for the empty
/// icon that keeps the browser from asking for `/favicon.ico`), no inline script, no framing, no
/// form submission.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// A sample as the streams send it: serialized once for all of them.
#[derive(Debug)]
struct Published {
    seq: u64,
    json: String,
}

/// What the sampler and the streams share.
#[derive(Debug)]
struct Shared {
    /// The latest sample; streams wait on its changes.
    latest: watch::Sender<Option<Arc<Published>>>,
    /// The charts' points, oldest first, at most [`HISTORY_POINTS`]. A std mutex: held for a
    /// push or a copy, never across an await.
    history: Mutex<VecDeque<Point>>,
    /// Open streams: the sampler reads the cluster overview only while there is one.
    viewers: AtomicUsize,
    /// Places for open streams ([`MAX_STREAMS`]).
    streams: Arc<Semaphore>,
}

impl Shared {
    fn publish(&self, sample: Sample) {
        {
            let mut history = self
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if history.len() == HISTORY_POINTS {
                history.pop_front();
            }
            history.push_back(sample.point);
        }
        match serde_json::to_string(&sample) {
            Ok(json) => {
                self.latest.send_replace(Some(Arc::new(Published {
                    seq: sample.seq,
                    json,
                })));
            }
            // Every field serializes (numbers, strings, times, JSON values).
            Err(e) => tracing::warn!(error = %e, "cannot serialize a dashboard sample"),
        }
    }

    fn history_json(&self) -> String {
        let points: Vec<Point> = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        serde_json::to_string(&points).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// One open stream, counted while it lives.
#[derive(Debug)]
struct Viewer(Arc<Shared>);

impl Viewer {
    fn new(shared: &Arc<Shared>) -> Viewer {
        shared.viewers.fetch_add(1, Ordering::AcqRel);
        Viewer(Arc::clone(shared))
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Handle on the dashboard's sampler and what it publishes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Dashboard {
    shared: Arc<Shared>,
}

impl Dashboard {
    /// Starts the sampler (and with it the cap watcher) on the shutdown tracker.
    pub fn spawn(state: &AppState) -> Dashboard {
        let (latest, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            latest,
            history: Mutex::new(VecDeque::with_capacity(HISTORY_POINTS)),
            viewers: AtomicUsize::new(0),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        });
        state.shutdown.spawn(
            "admin_sampler",
            sampler::run(state.clone(), Arc::clone(&shared)),
        );
        Dashboard { shared }
    }
}

/// The dashboard's routes: the page and its two files, and the stream.
pub fn routes(dashboard: Dashboard) -> Router<AppState> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/dashboard.js", get(script))
        .route("/admin/dashboard.css", get(style))
        .route("/admin/stream", get(stream::handler))
        .layer(Extension(dashboard))
}

/// One of the page's files, with headers that keep it to this origin.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /admin`.
async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /admin/dashboard.js`.
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /admin/dashboard.css`.
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
