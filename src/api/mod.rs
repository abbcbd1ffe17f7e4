//! The HTTP edge: routes, extractors, wire types and the error mapping. Handlers only
//! validate and convert; model math runs on worker threads behind the registry.

pub mod access;
pub mod console;
pub mod datasets;
pub mod decode;
pub mod decompress;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod extract;
mod fast_rows;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod predict;
pub mod repository;
mod respond;
pub mod text;
pub mod types;
pub mod v2;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};

use crate::metrics::{HttpLabels, RouteLabels};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use futures_util::FutureExt;
use tracing::Instrument;

use crate::auth::Scope;
use crate::error::Error;
use crate::state::AppState;
use crate::telemetry::{TraceParent, TRACEPARENT};
pub use access::DeclaredRoute;
use access::Group;
use error::ApiError;

/// Every route kiln serves, each declared once with the access it needs (see [`access`]):
/// the router, the route table ([`routes`]) and the OpenAPI document's security all come
/// from here. Add routes only inside a group, never with a bare `.route()`: a route outside
/// the groups would have no access check.
fn groups(upload_limit: usize) -> [Group; 6] {
    use crate::auth::Scope::{Admin, Predict, Train};
    [
        // Health checks and a static description of the API: nothing to protect.
        Group::open()
            .get("/health/live", health::live)
            .get("/health/ready", health::ready)
            .get("/v2/health/live", v2::live)
            .get("/v2/health/ready", v2::ready)
            .get_with("/openapi.json", openapi::openapi_json, compressed),
        // Inference and model metadata.
        Group::scope(Predict)
            .get("/v1/models", models::list)
            .get("/v1/models/{name}", models::status)
            .post_with("/v1/models/{name}", predict::verb, gzip)
            .get("/v1/models/{name}/metadata", models::metadata)
            .get(
                "/v1/models/{name}/versions/{version}",
                models::version_status,
            )
            .post_with(
                "/v1/models/{name}/versions/{version}",
                predict::version_verb,
                gzip,
            )
            .get(
                "/v1/models/{name}/versions/{version}/metadata",
                models::version_metadata,
            )
            .get("/v2", v2::server_metadata)
            .get("/v2/models/{name}", v2::metadata)
            .get("/v2/models/{name}/ready", v2::model_ready)
            .post_with("/v2/models/{name}/infer", v2::infer, gzip)
            .get("/v2/models/{name}/versions/{version}", v2::version_metadata)
            .get(
                "/v2/models/{name}/versions/{version}/ready",
                v2::version_ready,
            )
            .post_with(
                "/v2/models/{name}/versions/{version}/infer",
                v2::version_infer,
                gzip,
            ),
        // The text API of text models (docs/text-models.md): TEI's and OpenAI's routes.
        Group::scope(Predict)
            .post("/embed", text::embed)
            .post("/tokenize", text::tokenize)
            .get("/info", text::info)
            .post("/predict", text::predict)
            .post("/rerank", text::rerank)
            .post("/v1/embeddings", text::openai_embeddings)
            .post("/models/{name}/embed", text::model_embed)
            .post("/models/{name}/tokenize", text::model_tokenize)
            .get("/models/{name}/info", text::model_info)
            .post("/models/{name}/predict", text::model_predict)
            .post("/models/{name}/rerank", text::model_rerank)
            .post(
                "/models/{name}/v1/embeddings",
                text::model_openai_embeddings,
            ),
        // Datasets and training jobs.
        Group::scope(Train)
            .get("/v1/datasets", datasets::list)
            .post_with("/v1/datasets", datasets::upload, gzip)
            .get("/v1/datasets/{id}", datasets::get)
            .delete("/v1/datasets/{id}", datasets::delete)
            .get("/v1/training-jobs", jobs::list)
            .post("/v1/training-jobs", jobs::submit)
            .get("/v1/training-jobs/{id}", jobs::get)
            .post("/v1/training-jobs/{id}", jobs::verb)
            .get("/v1/training-jobs/{id}/events", jobs::events),
        // Model management and metrics.
        Group::scope(Admin)
            .post_with("/v1/models/{name}/versions", repository::upload, |r| {
                r.layer(DefaultBodyLimit::max(upload_limit))
            })
            .delete("/v1/models/{name}", repository::delete_model)
            .delete(
                "/v1/models/{name}/versions/{version}",
                repository::delete_version,
            )
            .post("/v2/repository/index", repository::index)
            .post("/v2/repository/models/{name}/load", repository::load)
            .post("/v2/repository/models/{name}/unload", repository::unload)
            .get_with("/metrics", metrics::metrics, compressed),
        // The web console's pages and assets: open, they hold no data (docs/console.md).
        console::group(),
    ]
}

/// The routes that take large bodies accept them gzip-compressed ([`decompress`]).
fn gzip(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(decompress::Decompress)
}

/// Large text answers that clients fetch now and then (the OpenAPI document, the metrics
/// exposition) are gzip-compressed for clients that accept it. Not the predict path: its
/// answers are small and its CPU is the server's throughput.
fn compressed(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(tower_http::compression::CompressionLayer::new().gzip(true))
}

/// Every route the router declares, with its access rule, sorted by path and method: what
/// the auth tests walk and the OpenAPI document takes each operation's security from.
pub fn routes() -> Vec<DeclaredRoute> {
    let mut all: Vec<DeclaredRoute> = groups(0)
        .into_iter()
        .flat_map(|g| g.finish(None).1)
        .collect();
    all.sort_by_key(|r| (r.path, r.method));
    all
}

/// Every route kiln serves (see [`groups`]), behind the edge middleware.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `extra` routes, which get everything kiln's own routes get (the edge
/// middleware, panic catching; with API keys, they need an admin key: they are in no
/// group). kiln itself adds none; tests add routes that cannot exist in the product, such
/// as one that panics.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let upload_limit =
        usize::try_from(state.config.training.max_upload_bytes).unwrap_or(usize::MAX);
    let keys = state.keys.as_ref();
    let mut app = Router::new();
    for group in groups(upload_limit) {
        app = app.merge(group.finish(keys).0);
    }
    let extra = match keys {
        Some(keys) if extra.has_routes() => extra.route_layer(access::guard(keys, Scope::Admin)),
        Some(_) | None => extra,
    };
    app.merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(tower::util::option_layer(cors(
            &state.config.api.cors_origins,
        )))
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
    ApiError::Serving(Error::Internal(format!(
        "a request handler panicked: {message}"
    )))
    .into_response()
}

/// No route: 404, except that a browser asking for `/` is sent to the console.
async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(redirect) = console::root_redirect(&method, &uri, &headers) {
        return redirect;
    }
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
    .into_response()
}

/// A known path with a method it does not serve. With API keys, only an admin key learns
/// that (as a route without a rule would need): others get 401/403.
async fn method_not_allowed(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiError {
    if let Some(keys) = &state.keys {
        if let Err(refused) = access::check(keys, Scope::Admin, &headers) {
            return refused;
        }
    }
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
        allow: matched
            .and_then(|m| extract::verb_route_allow(m.as_str(), uri.path()))
            .unwrap_or(""),
    }
}

/// The one middleware every request passes: request id, span, timing headers and HTTP
/// metrics (the access check is each group's route layer, inside it). Written to allocate nothing per request but the request id's
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
        trace_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
    );
    // The caller's W3C trace (`traceparent`), when it sends one: looked up, never copied.
    if let Some(tp) = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| TraceParent::parse(v.as_bytes()))
    {
        span.record("trace_id", tp.trace_id);
        span.record("parent_id", tp.parent_id);
    }
    // A panic in a handler or an extractor is caught here, inside the timing and metrics,
    // so its 500 still gets the request id and headers. (tower-http's catch-panic layer does
    // the same but boxes every response body once more.)
    let answer = AssertUnwindSafe(next.run(req).instrument(span.clone()));
    let mut res = answer.catch_unwind().await.unwrap_or_else(panic_answer);
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
    h.insert(X_TOTAL_TIME, respond::ms_header(elapsed));
    h.insert(REQUEST_ID, request_id);
    res
}

pub(crate) const X_QUEUE_TIME: HeaderName = HeaderName::from_static("x-queue-time");
pub(crate) const X_INFERENCE_TIME: HeaderName = HeaderName::from_static("x-inference-time");
pub(crate) const X_BATCH_SIZE: HeaderName = HeaderName::from_static("x-batch-size");
const X_TOTAL_TIME: HeaderName = HeaderName::from_static("x-total-time");
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Rule;

    #[test]
    fn the_route_table_is_the_declaration() {
        let routes = routes();
        assert!(routes.len() > 30, "{routes:?}");
        let rule = |method: &str, path: &str| {
            routes
                .iter()
                .find(|r| r.method == method && r.path == path)
                .map(|r| r.rule)
        };
        assert_eq!(rule("GET", "/health/ready"), Some(Rule::Open));
        assert_eq!(
            rule("POST", "/v1/models/{name}"),
            Some(Rule::Scope(Scope::Predict))
        );
        assert_eq!(
            rule("DELETE", "/v1/models/{name}"),
            Some(Rule::Scope(Scope::Admin))
        );
        assert_eq!(
            rule("POST", "/v1/datasets"),
            Some(Rule::Scope(Scope::Train))
        );
        assert_eq!(rule("PUT", "/v1/datasets"), None);
        // Each (method, path) once: two groups declaring one would panic when merged.
        let mut seen = std::collections::HashSet::new();
        assert!(routes.iter().all(|r| seen.insert((r.method, r.path))));
    }
}
