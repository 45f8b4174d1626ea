//! The admin JSON API under `/admin/api/`: what the cluster and this node serve, who is
//! connected, closing a connection, the busiest channels, the audit log, and delivery
//! diagnostics. One file per resource; this one builds the router, checks the credential, and
//! owns the API's error type and its OpenAPI document.
//!
//! Every route but the OpenAPI document itself asks for the operator credential
//! ([`super::credential`]): `Authorization: Bearer` with a `service_role` JWT or the
//! `--admin-token`. A missing or unusable credential is answered 401, a valid token of another
//! role 403, both with a JSON body; each refusal is audited (`auth_refused`, stage `admin`).
//!
//! The router is built from one table ([`routes`]), and the OpenAPI document
//! ([`ApiDoc`], served at `/admin/api/openapi.json`) is generated from the handlers'
//! `#[utoipa::path]` attributes; a test compares the two.

pub mod audit;
pub mod channels;
pub mod connections;
pub mod diagnostics;
pub mod disconnect;
mod extract;
pub mod stats;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use extract::{ApiPath, ApiQuery};

use super::credential::{Denied, Gate};
use crate::state::AppState;

/// Where the API is mounted.
pub const PREFIX: &str = "/admin/api";

/// Longest an API request waits for the database before it is answered 503.
const DATABASE_PATIENCE: Duration = Duration::from_secs(5);

/// One route of the API: its method and its path template (`{id}` for a parameter), exactly as
/// the router serves it and the OpenAPI document names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The path template, under [`PREFIX`].
    pub path: &'static str,
    /// Whether the route asks for the operator credential.
    pub guarded: bool,
}

/// Builds the router and the table of its routes side by side, so the table is the router's
/// own.
struct Builder {
    router: Router<AppState>,
    open: Router<AppState>,
    table: Vec<Route>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            router: Router::new(),
            open: Router::new(),
            table: Vec::new(),
        }
    }

    /// Adds a route that asks for the credential.
    fn guarded(
        mut self,
        path: &'static str,
        method: Method,
        handler: MethodRouter<AppState>,
    ) -> Builder {
        self.table.push(Route {
            method: method_name(&method),
            path,
            guarded: true,
        });
        self.router = self.router.route(path, handler);
        self
    }

    /// Adds a route open to anyone.
    fn open(
        mut self,
        path: &'static str,
        method: Method,
        handler: MethodRouter<AppState>,
    ) -> Builder {
        self.table.push(Route {
            method: method_name(&method),
            path,
            guarded: false,
        });
        self.open = self.open.route(path, handler);
        self
    }
}

fn method_name(method: &Method) -> &'static str {
    if *method == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

/// Every route of the API and its handler, in one place.
fn build() -> Builder {
    use axum::routing::{get, post};
    Builder::new()
        .guarded("/admin/api/stats", Method::GET, get(stats::get))
        .guarded(
            "/admin/api/connections",
            Method::GET,
            get(connections::list),
        )
        .guarded(
            "/admin/api/connections/{id}",
            Method::GET,
            get(connections::detail),
        )
        .guarded(
            "/admin/api/connections/{id}/disconnect",
            Method::POST,
            post(disconnect::disconnect),
        )
        .guarded("/admin/api/channels", Method::GET, get(channels::top))
        .guarded("/admin/api/audit", Method::GET, get(audit::list))
        .guarded(
            "/admin/api/diagnostics/tables/{schema}/{table}",
            Method::GET,
            get(diagnostics::table),
        )
        .guarded(
            "/admin/api/diagnostics/topics/{channel}",
            Method::GET,
            get(diagnostics::topic),
        )
        .guarded(
            "/admin/api/diagnostics/changes/{id}",
            Method::GET,
            get(diagnostics::change),
        )
        .open("/admin/api/openapi.json", Method::GET, get(openapi))
}

/// The routes the API serves (method, path template, whether guarded): the table the router
/// is built from.
pub fn routes() -> Vec<Route> {
    build().table
}

/// The API's router: the guarded routes behind the credential check, and the document.
pub fn router(state: &AppState) -> Router<AppState> {
    let Builder { router, open, .. } = build();
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_credential,
        ))
        .merge(open)
}

/// Lets a request through only with the operator credential; a refusal is audited.
async fn require_credential(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let gate = Gate {
        verifier: &state.session.verifier,
        admin_token: state.config.admin_token.as_deref(),
    };
    match gate.check(&headers) {
        Ok(()) => next.run(request).await,
        Err(denied) => {
            let peer = client_addr(&state, peer, &headers);
            let detail = serde_json::json!({"endpoint": request.uri().path(),
                                            "message": denied.message()});
            state
                .session
                .registry
                .auth_refused("admin", denied.reason(), None, Some(peer), detail);
            refusal(&denied)
        }
    }
}

/// The answer to a refused credential: 401 when there is none or it is not accepted, 403 when
/// it is a valid token of another role.
fn refusal(denied: &Denied) -> Response {
    let (status, error) = match denied {
        Denied::WrongRole => (StatusCode::FORBIDDEN, "forbidden"),
        Denied::Missing | Denied::Invalid(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
    };
    let body = ErrorBody {
        error,
        message: denied.message().to_owned(),
    };
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The client address of a request (`X-Forwarded-For` from trusted proxies).
fn client_addr(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    state.session.limits.clients.client_addr(peer, forwarded)
}

/// `GET /admin/api/openapi.json`: this API's OpenAPI document (open: it holds no data).
#[utoipa::path(
    get,
    path = "/admin/api/openapi.json",
    operation_id = "get_openapi_document",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// The OpenAPI document of the API, generated from the handlers.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "realtime-gateway admin API",
        description = "Operator API of realtime-gateway: cluster and node statistics, connections, \
                       disconnects, busiest channels, the audit log, and delivery diagnostics. \
                       Every route but this document asks for `Authorization: Bearer` with a \
                       `service_role` JWT or the gateway's `--admin-token`.",
    ),
    paths(
        stats::get,
        connections::list,
        connections::detail,
        disconnect::disconnect,
        channels::top,
        audit::list,
        diagnostics::table,
        diagnostics::topic,
        diagnostics::change,
        openapi,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "cluster", description = "What the cluster and this node serve"),
        (name = "connections", description = "Open connections, and closing one"),
        (name = "channels", description = "The busiest channels"),
        (name = "audit", description = "The audit log"),
        (name = "diagnostics", description = "Why a change or broadcast did or did not reach a subscriber (this node's memory)"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the guarded routes name.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A `service_role` JWT signed for this gateway, or its `--admin-token`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A machine-readable code: `unauthorized`, `forbidden`, `bad_request`, `not_found`,
    /// `conflict`, `unknown_change`, `database_unavailable`.
    #[schema(example = "not_found")]
    pub error: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

/// Why an API request failed; each is one status and one `error` code ([`Error::status`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter or body that cannot be used; the text says which and why.
    #[error("{0}")]
    BadRequest(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done in the present state.
    #[error("{0}")]
    Conflict(String),
    /// A change id that this node does not remember.
    #[error("{0}")]
    UnknownChange(String),
    /// The database did not answer in time, or failed.
    #[error("the database did not answer")]
    Database,
}

impl Error {
    /// The database failed: logged here, once, and answered 503 without its details.
    pub fn database(e: impl std::fmt::Display) -> Error {
        tracing::warn!(error = %e, "admin api: database request failed");
        Error::Database
    }

    /// The status and `error` code of this error.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::UnknownChange(_) => (StatusCode::NOT_FOUND, "unknown_change"),
            Error::Database => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, error) = self.status();
        let body = ErrorBody {
            error,
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Runs a database request for the API, bounded by [`DATABASE_PATIENCE`].
///
/// # Errors
/// [`Error::Database`] when it fails or takes too long.
pub async fn database<T, E: std::fmt::Display>(
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(DATABASE_PATIENCE, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::database(e)),
        Err(_) => Err(Error::database("timed out")),
    }
}

/// Milliseconds since the Unix epoch as a UTC time.
pub fn time_of_ms(ms: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the contract the OpenAPI test relies on: the table lists each route once, every
    /// path is under the prefix and documented with its own operation id, and every guarded
    /// route names the bearer scheme.
    #[test]
    fn routes_are_unique_and_documented() {
        let routes = routes();
        let mut seen = std::collections::HashSet::new();
        for route in &routes {
            assert!(route.path.starts_with(PREFIX), "{route:?}");
            assert!(seen.insert((route.method, route.path)), "{route:?} twice");
        }
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ids = std::collections::HashSet::new();
        for route in &routes {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{route:?} is not documented");
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{route:?}: operation id {id:?} is not unique"
            );
            let secured = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            assert_eq!(secured, route.guarded, "{route:?}: security");
        }
    }
}
