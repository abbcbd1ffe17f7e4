//! Extractors with our error shape: the JSON body (content type, size limit) and the
//! `name:verb` path segment (axum cannot route `{name}:predict`, so one segment is split).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header;

use super::error::ApiError;
use crate::error::Error;
use crate::state::AppState;

/// A request body that claims (or does not deny) to be JSON, read up to the body limit.
///
/// Accepted content types: none, `application/json`, `*/*+json`, `text/plain`, and
/// `application/x-www-form-urlencoded` — what `curl -d` sends without `-H`; for `:evaluate`
/// also CSV (`text/csv`, …).
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            let is = |t: &str| essence.eq_ignore_ascii_case(t);
            let json_suffix = essence.len() >= 5
                && essence.is_char_boundary(essence.len() - 5)
                && essence[essence.len() - 5..].eq_ignore_ascii_case("+json");
            // `:evaluate` also takes its data as CSV (see `api::evaluate`).
            let csv = || {
                req.uri().path().ends_with(":evaluate")
                    && crate::dataset::Format::from_media_type(essence)
                        == Some(crate::dataset::Format::Csv)
            };
            let ok = is("application/json")
                || json_suffix
                || is("application/x-www-form-urlencoded")
                || is("text/plain")
                || essence.is_empty()
                || csv();
            if !ok {
                return Err(ApiError::UnsupportedMediaType(essence.to_ascii_lowercase()));
            }
        }
        let limit = state.config.api.body_limit;
        let body: Body = req.into_body();
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|e| body_error(&e, limit))?;
        Ok(JsonBody(bytes))
    }
}

/// The request's own deadline (`X-Request-Timeout-Ms`), if it sets one. Read from the
/// header alone: the handler does not copy the header map.
pub struct Deadline(pub Option<std::time::Duration>);

/// Per-request deadline header, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

impl<S: Sync> axum::extract::FromRequestParts<S> for Deadline {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(TIMEOUT_HEADER) else {
            return Ok(Deadline(None));
        };
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| Deadline(Some(std::time::Duration::from_millis(ms))))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "header {TIMEOUT_HEADER}: expected a positive number of milliseconds"
                ))
                .into()
            })
    }
}

/// Why reading a body up to `limit` failed: it did not decompress (400), it stalled (408),
/// or it was too large (413; a client that went away mid-body gets the same, and never
/// reads it).
pub fn body_error(e: &axum::Error, limit: usize) -> ApiError {
    if let Some(bad) = super::decompress::bad_encoding(e) {
        return ApiError::InvalidContentEncoding(bad.to_string());
    }
    match crate::server::body::timed_out(e) {
        Some(t) => ApiError::BodyTimeout(t),
        None => ApiError::BodyTooLarge { limit },
    }
}

/// axum's `Path`, refused with our JSON error shape (400 `invalid_input`: e.g. a segment
/// that is not valid UTF-8 once percent-decoded) instead of axum's plain text.
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(Error::InvalidInput(format!("path: {}", e.body_text())).into()),
        }
    }
}

/// axum's `Query`, refused with our JSON error shape (400 `invalid_input`, naming the
/// parameter) instead of axum's plain text.
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(Error::InvalidInput(format!("query string: {}", e.body_text())).into()),
        }
    }
}

/// The verbs a `POST /v1/models/{name}:{verb}` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Predict,
    Classify,
    Regress,
    /// Attributions per input column (`api::explain`).
    Explain,
    /// Loss and metrics on labelled data (`api::evaluate`).
    Evaluate,
}

/// Splits `name:verb` on the last colon.
pub fn split_verb(segment: &str) -> Result<(&str, Verb), Error> {
    let Some((name, verb)) = segment.rsplit_once(':') else {
        return Err(Error::InvalidInput(format!(
            "'{segment}' names no method: POST to {segment}:predict, :classify, :regress, :explain or :evaluate"
        )));
    };
    let verb = match verb {
        "predict" => Verb::Predict,
        "classify" => Verb::Classify,
        "regress" => Verb::Regress,
        "explain" => Verb::Explain,
        "evaluate" => Verb::Evaluate,
        other => {
            return Err(Error::InvalidInput(format!(
                "unknown method ':{other}': expected :predict, :classify, :regress, :explain or :evaluate"
            )))
        }
    };
    Ok((name, verb))
}

// === routes shared by a resource and its methods ===
//
// `/v1/models/{name}` (and `/versions/{version}`) and `/v1/training-jobs/{id}` are each one
// route to axum, but two paths to a client: the resource (GET, DELETE) and its TF Serving-style
// methods (`…:predict`, `…:cancel`: POST only). A method one form does not document answers
// 405 with the `Allow` that form documents, as an unrouted method does.

/// The methods documented on `path`, a request to `route` (one of the shared routes; `None`
/// for any other). `HEAD` comes with `GET`, as axum serves it.
pub(crate) fn verb_route_allow(route: &str, path: &str) -> Option<&'static str> {
    let last = path.rsplit('/').next().unwrap_or("");
    let has_verb = names_verb(last)
        || [("%3A"), ("%3a")]
            .iter()
            .any(|c| last.rsplit_once(c).is_some_and(|(_, v)| is_verb(v)));
    match route {
        "/v1/models/{name}" | "/v1/models/{name}/versions/{version}" => {
            Some(if has_verb { "POST" } else { "GET,HEAD,DELETE" })
        }
        "/v1/training-jobs/{id}" => Some(if has_verb { "POST" } else { "GET,HEAD" }),
        _ => None,
    }
}

/// A method's name: lowercase letters (what the OpenAPI document's paths put after a colon).
fn is_verb(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase())
}

/// `segment` ends in `:verb`.
fn names_verb(segment: &str) -> bool {
    segment.rsplit_once(':').is_some_and(|(_, v)| is_verb(v))
}

/// A GET or DELETE of a `:verb` path (`GET /v1/models/iris:predict`): 405, `Allow: POST`.
/// Any other colon is the name's own (and an invalid one, refused as such).
pub(crate) fn refuse_verb(method: &str, prefix: &str, segment: &str) -> Result<(), ApiError> {
    if names_verb(segment) {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_owned(),
            path: format!("{prefix}{segment}"),
            allow: "POST",
        });
    }
    Ok(())
}

/// A POST of a resource path without a `:verb` (`POST /v1/models/iris`): 405 with the
/// resource's methods.
pub(crate) fn require_verb(
    prefix: impl std::fmt::Display,
    segment: &str,
    allow: &'static str,
) -> Result<(), ApiError> {
    if segment.contains(':') {
        return Ok(());
    }
    Err(ApiError::MethodNotAllowed {
        method: "POST".to_owned(),
        path: format!("{prefix}{segment}"),
        allow,
    })
}

/// Refuses names that cannot exist (the store's rule) before anything looks them up.
pub fn check_name(name: &str) -> Result<(), Error> {
    crate::store::check_name(name).map_err(Error::from)
}

/// Parses a version path segment (a positive integer).
pub fn parse_version(name: &str, v: &str) -> Result<u64, Error> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::VersionNotFound {
            name: name.to_owned(),
            version: v.to_owned(),
            detail: ": versions are positive integers".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_the_last_colon() {
        assert_eq!(split_verb("iris:predict").unwrap(), ("iris", Verb::Predict));
        assert_eq!(split_verb("a:b:classify").unwrap(), ("a:b", Verb::Classify));
        assert!(split_verb("iris").is_err());
        assert_eq!(
            verb_route_allow("/v1/models/{name}", "/v1/models/iris:predict"),
            Some("POST")
        );
        assert_eq!(
            verb_route_allow("/v1/training-jobs/{id}", "/v1/training-jobs/job_1"),
            Some("GET,HEAD")
        );
        assert_eq!(verb_route_allow("/v1/models", "/v1/models"), None);
        assert_eq!(
            verb_route_allow("/v1/models/{name}", "/v1/models/a%3Apredict"),
            Some("POST")
        );
        assert_eq!(
            verb_route_allow("/v1/models/{name}", "/v1/models/a:B-"),
            Some("GET,HEAD,DELETE")
        );
        assert!(refuse_verb("GET", "/v1/models/", "a:predict").is_err());
        assert!(refuse_verb("GET", "/v1/models/", "a:B-").is_ok());
        assert!(split_verb("iris:explode")
            .unwrap_err()
            .to_string()
            .contains(":explode"));
    }
}
