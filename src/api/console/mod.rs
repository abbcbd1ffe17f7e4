//! The web console (docs/console.md): pages served at `/console`, rendered on the server
//! ([`pages`], with maud) and filled in the browser by the console's own scripts, which call
//! the same HTTP API as every client (`fetch` to `/v1/...`), with the same API key.
//!
//! The HTML routes and the assets are open: they hold no data (every model, dataset or job
//! reaches the browser through the API, under the key's scopes), so a browser can load them
//! before it has a key to send. Every console answer carries strict security headers
//! ([`secured`]): a CSP of `default-src 'self'` without inline scripts or styles, no framing,
//! no sniffing, no referrer. The assets (the console's scripts and stylesheet, and the
//! vendored uPlot) are embedded in the binary ([`assets`]): the console works offline.
//!
//! `/` itself is not routed: the 404 fallback sends browsers that ask for HTML to `/console`
//! ([`root_redirect`]); every other client gets the 404 it always got.

mod assets;
mod pages;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use super::access::Group;
use super::error::ApiError;
use super::extract::Path;
use crate::state::AppState;

/// The console's routes: open (see the module's comment), each behind [`secured`].
pub(crate) fn group() -> Group {
    Group::open()
        .get_with("/console", home, secured)
        .get_with("/console/{page}", page, secured)
        .get_with("/console/{page}/{id}", item, secured)
        .get_with("/console/assets/{file}", asset, secured)
}

/// The security headers of every console answer (pages, assets, their errors).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn secured(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=()",
        ),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

/// `{page}` of `GET /console/{page}`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PagePath {
    /// `models`, `datasets`, `training` or `evaluate`.
    #[param(pattern = "^(models|datasets|training|evaluate)$")]
    pub page: String,
}

/// `{page}` and `{id}` of `GET /console/{page}/{id}`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ItemPath {
    /// `models` (`id`: a model name), `datasets` (a dataset id) or `training` (a job id).
    #[param(pattern = "^(models|datasets|training)$")]
    pub page: String,
    /// A model name, a dataset id or a job id: 1 to 128 characters of `A-Z a-z 0-9 _ . -`.
    #[param(pattern = r"^[A-Za-z0-9_.\-]{1,128}$")]
    pub id: String,
}

/// `{file}` of `GET /console/assets/{file}`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AssetPath {
    /// One of the embedded files.
    #[param(
        pattern = r"^(console\.js|charts\.js|console\.css|uPlot\.iife\.min\.js|uPlot\.min\.css|uPlot\.LICENSE\.txt)$"
    )]
    pub file: String,
}

/// A page of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    Models,
    Model,
    Datasets,
    Dataset,
    Training,
    Job,
    Evaluate,
}

/// `GET /console`: the models page.
#[utoipa::path(
    get,
    path = "/console",
    operation_id = "console",
    tag = "console",
    summary = "The web console: its models page (HTML; the data comes from the API)",
    responses((status = 200, description = "The page", content_type = "text/html; charset=utf-8", body = String)),
)]
pub async fn home() -> Response {
    html(pages::render(Page::Models, None))
}

/// `GET /console/{page}`: `models`, `datasets`, `training` or `evaluate`.
#[utoipa::path(
    get,
    path = "/console/{page}",
    operation_id = "console_page",
    tag = "console",
    summary = "A page of the web console: models, datasets, training or evaluate",
    params(PagePath),
    responses(
        (status = 200, description = "The page", content_type = "text/html; charset=utf-8", body = String),
        super::openapi::ConsoleErrors,
    ),
)]
pub async fn page(uri: Uri, Path(page): Path<String>) -> Result<Response, ApiError> {
    let page = match page.as_str() {
        "models" => Page::Models,
        "datasets" => Page::Datasets,
        "training" => Page::Training,
        "evaluate" => Page::Evaluate,
        _ => return Err(not_found(&uri)),
    };
    Ok(html(pages::render(page, None)))
}

/// `GET /console/{page}/{id}`: a model, a dataset or a training job.
#[utoipa::path(
    get,
    path = "/console/{page}/{id}",
    operation_id = "console_item",
    tag = "console",
    summary = "A page of the web console about one thing: models/{name}, datasets/{id} or training/{job id}",
    params(ItemPath),
    responses(
        (status = 200, description = "The page", content_type = "text/html; charset=utf-8", body = String),
        super::openapi::ConsoleErrors,
    ),
)]
pub async fn item(
    uri: Uri,
    Path((page, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let page = match page.as_str() {
        "models" => Page::Model,
        "datasets" => Page::Dataset,
        "training" => Page::Job,
        _ => return Err(not_found(&uri)),
    };
    // Names and ids are short words of `A-Z a-z 0-9 _ . -`; the page only hands it to its
    // script (escaped either way), which asks the API about it.
    let plausible = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !plausible {
        return Err(not_found(&uri));
    }
    Ok(html(pages::render(page, Some(&id))))
}

/// `GET /console/assets/{file}`: the console's scripts and stylesheets, embedded.
#[utoipa::path(
    get,
    path = "/console/assets/{file}",
    operation_id = "console_asset",
    tag = "console",
    summary = "A script or stylesheet of the web console (cached: the pages name each with its content hash)",
    params(AssetPath),
    responses(
        (status = 200, description = "The file: a script, a stylesheet or a licence", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
            (String = "text/plain; charset=utf-8"),
        )),
        (status = 304, description = "Not modified (If-None-Match matched its ETag)"),
        super::openapi::ConsoleErrors,
    ),
)]
pub async fn asset(
    uri: Uri,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let asset = assets::find(&file).ok_or_else(|| not_found(&uri))?;
    // A page names each asset with `?v=<hash>`: a year's caching is safe, the next build's
    // pages name the new content. Without `v` (typed by hand) the ETag revalidates.
    let versioned = uri
        .query()
        .is_some_and(|q| q == format!("v={}", asset.hash));
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", asset.hash)).expect("hex is a header value");
    let matched = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
    ];
    if matched {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response())
}

fn not_found(uri: &Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: Method::GET.to_string(),
        path: uri.path().to_owned(),
    }
}

fn html(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // The pages hold no data, but a page of an old build names old assets.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// For the 404 fallback: a `GET`/`HEAD` of `/` from a browser (its `Accept` prefers
/// `text/html`) is sent to the console (303). Everything else is left to the fallback.
pub(crate) fn root_redirect(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    if uri.path() != "/" || !(method == Method::GET || method == Method::HEAD) {
        return None;
    }
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    if !prefers_html(accept) {
        return None;
    }
    Some(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/console"))],
        )
            .into_response(),
    )
}

/// Whether an `Accept` header names `text/html` explicitly, with a quality above 0 and at
/// least that of any JSON type it names. `*/*` alone (curl, most HTTP libraries) is not a
/// preference for HTML.
fn prefers_html(accept: &str) -> bool {
    let mut html = None::<f32>;
    let mut json = 0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = Some(html.map_or(q, |h| h.max(q))),
            "application/json" => json = json.max(q),
            _ => {}
        }
    }
    html.is_some_and(|h| h > 0.0 && h >= json)
}

#[cfg(test)]
mod tests {
    use super::prefers_html;

    #[test]
    fn browsers_prefer_html_and_api_clients_do_not() {
        // Chromium's and Firefox's navigation Accept headers.
        assert!(prefers_html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
        ));
        assert!(prefers_html("text/html"));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
        assert!(!prefers_html("application/json, text/html;q=0.5"));
        assert!(!prefers_html("text/html;q=0"));
        assert!(prefers_html("TEXT/HTML; q=1, application/json; q=0.9"));
        assert!(!prefers_html(""));
    }
}
