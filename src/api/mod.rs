//! The HTTP edge: routes, extractors, wire types and the error mapping. Handlers only
//! validate and convert; model math runs on worker threads behind the registry.

pub mod datasets;
pub mod decode;
pub mod error;
pub mod extract;
mod fast_rows;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod predict;
pub mod repository;
pub mod types;
pub mod v2;

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};

use crate::metrics::{HttpLabels, RouteLabels};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::state::AppState;
use error::ApiError;

/// Every route kiln serves. `tests` enumerate this router; keep routes here only.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `extra` routes, which get everything kiln's own routes get (the edge
/// middleware, panic catching; with API keys, they need an admin key: they have no access
/// rule). kiln itself adds none; tests add routes that cannot exist in the product, such as
/// one that panics.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let upload_limit = usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/models", get(models::list))
        .route(
            "/v1/models/{name}",
            get(models::status)
                .post(predict::verb)
                .delete(repository::delete_model),
        )
        .route(
            "/v1/models/{name}/versions",
            post(repository::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/models/{name}/metadata", get(models::metadata))
        .route(
            "/v1/models/{name}/versions/{version}",
            get(models::version_status)
                .post(predict::version_verb)
                .delete(repository::delete_version),
        )
        .route(
            "/v1/models/{name}/versions/{version}/metadata",
            get(models::version_metadata),
        )
        .route("/v1/datasets", get(datasets::list).post(datasets::upload))
        .route(
            "/v1/datasets/{id}",
            get(datasets::get).delete(datasets::delete),
        )
        .route("/v1/training-jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/training-jobs/{id}", get(jobs::get).post(jobs::verb))
        .route("/v1/training-jobs/{id}/events", get(jobs::events))
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{name}/load", post(repository::load))
        .route(
            "/v2/repository/models/{name}/unload",
            post(repository::unload),
        )
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::version_infer),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside `edge`, so that a panic's 500 still gets its request id, timing headers
        // and metrics. Costs a boxed response body per request.
        .layer(CatchPanicLayer::custom(panic_answer))
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(tower::util::option_layer(cors(&state.config.cors_origins)))
        .with_state(state)
}

/// A handler or extractor panicked: the client gets the generic 500 of an internal error
/// (`{"error": …, "code": "internal"}`), the log gets the panic's message.
fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::from(crate::error::Error::Internal(format!(
        "a request handler panicked: {message}"
    )))
    .into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// The one middleware every request passes: request id, span, access check, timing
/// headers and HTTP metrics. Written to allocate nothing per request but the request id's
/// and the total time's header values (routes and methods are interned labels).
///
/// Every answer carries `x-total-time`, `x-queue-time` and `x-inference-time` (ms); the
/// predict handlers set the last two, everything else computes nothing and says 0.
async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern_route(p.as_str()));
    let method = method_label(req.method());
    // The request id: the client's (printable ASCII, at most 128 bytes) or a new one.
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| {
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(new_request_id);
    // One span per request (debug level: per-request logging costs throughput; enable it
    // with RUST_LOG=kiln=debug). Handlers record the model, version and batch size on it.
    // The peer is the accept loop's `ConnectInfo` (absent when a test calls the router
    // directly); it is formatted only when the span is enabled.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| tracing::field::display(c.0));
    let span = tracing::debug_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        peer,
        method,
        route,
        model = tracing::field::Empty,
        version = tracing::field::Empty,
        batch = tracing::field::Empty,
    );
    let mut res = match authorize(&state, method, route, &req) {
        Ok(()) => next.run(req).instrument(span.clone()).await,
        Err(refused) => refused.into_response(),
    };
    let elapsed = start.elapsed();
    let status = res.status().as_u16();
    tracing::debug!(parent: &span, status, total_ms = elapsed.as_secs_f64() * 1e3, "answered");
    let m = &state.metrics;
    m.http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status,
        })
        .inc();
    m.http_seconds
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    let h = res.headers_mut();
    for name in [X_QUEUE_TIME, X_INFERENCE_TIME] {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static("0.000"));
        }
    }
    h.insert(X_TOTAL_TIME, predict::ms_header(elapsed));
    h.insert(REQUEST_ID, request_id);
    res
}

pub(crate) const X_QUEUE_TIME: HeaderName = HeaderName::from_static("x-queue-time");
pub(crate) const X_INFERENCE_TIME: HeaderName = HeaderName::from_static("x-inference-time");
pub(crate) const X_BATCH_SIZE: HeaderName = HeaderName::from_static("x-batch-size");
const X_TOTAL_TIME: HeaderName = HeaderName::from_static("x-total-time");

/// The route as a `'static` label. Matched routes are the router's finite set, so each is
/// copied once, the first time it is seen.
fn intern_route(route: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{LazyLock, RwLock};
    static ROUTES: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(Default::default);
    if let Some(r) = ROUTES.read().expect("route interner").get(route) {
        return r;
    }
    let mut routes = ROUTES.write().expect("route interner");
    if let Some(r) = routes.get(route) {
        return r;
    }
    let r: &'static str = Box::leak(route.into());
    routes.insert(r);
    r
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// With API keys configured: the route's rule (`auth::rule_for`) decides; a route without
/// a rule needs an admin key (fail closed). No matched route: the fallback answers 404 and
/// reveals nothing.
fn authorize(state: &AppState, method: &str, route: &str, req: &Request) -> Result<(), ApiError> {
    use crate::auth::{rule_for, Rule, Scope};
    let Some(keys) = &state.keys else {
        return Ok(());
    };
    if route == "unmatched" {
        return Ok(());
    }
    let scope = match rule_for(method, route) {
        Some(Rule::Open) => return Ok(()),
        Some(Rule::Scope(s)) => s,
        None => Scope::Admin,
    };
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::Unauthorized(
            "this route needs an API key: Authorization: Bearer <key>".into(),
        ));
    };
    let Some(entry) = keys.find(presented) else {
        return Err(ApiError::Unauthorized("unknown API key".into()));
    };
    if !entry.scopes.contains(&scope) {
        return Err(ApiError::Forbidden(format!(
            "API key '{}' lacks the '{}' scope this route needs",
            entry.name,
            scope.as_str()
        )));
    }
    Ok(())
}

/// CORS for browser clients: none unless origins are configured.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(Any)
            .expose_headers(Any),
    )
}

/// Echoed in every answer; taken from the request when the client sends one.
pub const REQUEST_ID: &str = "x-request-id";

/// 16 random hex digits.
fn new_request_id() -> HeaderValue {
    use rand::RngCore;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::rng().next_u64();
    let mut id = [0u8; 16];
    for b in id.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// Every `(method, route)` the router declares, read from this file's source: the auth
/// tests walk it, so a route added here without an access rule fails them.
pub fn declared_routes(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let Some(open) = rest.find('"') else { break };
        let Some(len) = rest[open + 1..].find('"') else {
            break;
        };
        let path = rest[open + 1..open + 1 + len].to_owned();
        let end = rest
            .find(".route(")
            .or_else(|| rest.find(".fallback("))
            .unwrap_or(rest.len());
        let body = &rest[..end];
        for (token, method) in [
            ("get(", "GET"),
            ("post(", "POST"),
            ("delete(", "DELETE"),
            ("put(", "PUT"),
            ("patch(", "PATCH"),
        ] {
            let mut from = 0;
            while let Some(j) = body[from..].find(token) {
                let at = from + j;
                let prev = body[..at].chars().last().unwrap_or(' ');
                if !(prev.is_alphanumeric() || prev == '_' || prev == ':') {
                    out.push((method.to_owned(), path.clone()));
                }
                from = at + token.len();
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_declared_route_has_an_access_rule() {
        let routes = super::declared_routes(include_str!("mod.rs"));
        assert!(routes.len() > 30, "{routes:?}");
        assert!(routes.contains(&("DELETE".into(), "/v1/models/{name}".into())));
        for (method, path) in &routes {
            assert!(
                crate::auth::rule_for(method, path).is_some(),
                "{method} {path} has no rule in auth::rule_for"
            );
        }
    }
}
