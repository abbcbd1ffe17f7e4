//! Every error an HTTP answer can carry → status + stable code, in one exhaustive match (no
//! `_` arm, down to each domain's variants: a new variant must be decided here). Bodies are
//! `{"error": "<message>", "code": "<code>"}`.
//!
//! The domains own their errors (`error::Error` for the serving path, `DatasetError`,
//! `JobError`); `ApiError` wraps them and adds the failures only HTTP has (the body, the
//! content type, keys, routes).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::dataset::DatasetError;
use crate::error::Error;
use crate::jobs::JobError;

/// An error on its way to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The serving path (registry, batcher, worker) and model lookups.
    #[error(transparent)]
    Serving(#[from] Error),
    /// Datasets: upload, lookup, delete.
    #[error("{}", dataset_message(.0))]
    Dataset(#[from] DatasetError),
    /// Training jobs: submit, lookup, cancel.
    #[error("{}", job_message(.0))]
    Job(#[from] JobError),
    /// The request body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The request body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The request body stalled (no bytes) longer than `body_read_timeout_ms`.
    #[error("the request body stalled: no bytes for {} ms", .0.as_millis())]
    BodyTimeout(Duration),
    /// The request body is not in a format the route reads.
    #[error("unsupported content type '{0}': send application/json")]
    UnsupportedMediaType(String),
    /// A `Content-Encoding` the route does not decompress.
    #[error("unsupported content encoding '{0}': send gzip or identity")]
    UnsupportedContentEncoding(String),
    /// A compressed body that does not decompress.
    #[error("{0}")]
    InvalidContentEncoding(String),
    /// No or an unknown API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks the route's scope.
    #[error("{0}")]
    Forbidden(String),
    /// No route matches.
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    /// The route exists but not for this method. `allow`: the methods the path documents
    /// (the `Allow` header), when the answer knows them better than the router (a `:verb`
    /// segment shares its route with the resource); empty: the router's own list.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
}

/// A dataset error as the client reads it: an id that can never exist is simply not found.
fn dataset_message(e: &DatasetError) -> String {
    match e {
        DatasetError::InvalidId(id) | DatasetError::NotFound(id) => {
            format!("dataset '{id}' not found")
        }
        DatasetError::TooLarge { limit } => {
            format!("request body is larger than the limit of {limit} bytes")
        }
        e @ (DatasetError::Invalid(_)
        | DatasetError::Io { .. }
        | DatasetError::Corrupt { .. }
        | DatasetError::Internal(_)
        | DatasetError::Unavailable(_)) => e.to_string(),
    }
}

/// A job error as the client reads it: a missing dataset says how to get one.
fn job_message(e: &JobError) -> String {
    match e {
        JobError::DatasetNotFound(id) => {
            format!("dataset '{id}' not found: upload it with POST /v1/datasets")
        }
        e @ (JobError::NotFound(_)
        | JobError::InvalidSpec(_)
        | JobError::Conflict(_)
        | JobError::Internal(_)
        | JobError::Unavailable(_)) => e.to_string(),
    }
}

/// The status and stable code of each error.
pub fn status_and_code(err: &ApiError) -> (StatusCode, &'static str) {
    match err {
        ApiError::Serving(e) => serving_status(e),
        ApiError::Dataset(e) => match e {
            DatasetError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_dataset"),
            DatasetError::InvalidId(_) | DatasetError::NotFound(_) => {
                (StatusCode::NOT_FOUND, "dataset_not_found")
            }
            DatasetError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            DatasetError::Io { .. } | DatasetError::Corrupt { .. } | DatasetError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            DatasetError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
        },
        ApiError::Job(e) => match e {
            JobError::NotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
            // The dataset is part of the spec: a spec naming a missing one cannot train.
            JobError::InvalidSpec(_) | JobError::DatasetNotFound(_) => {
                (StatusCode::BAD_REQUEST, "invalid_spec")
            }
            JobError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            JobError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            JobError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
        },
        ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
        ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        ApiError::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        ApiError::UnsupportedContentEncoding(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
        ),
        ApiError::InvalidContentEncoding(_) => {
            (StatusCode::BAD_REQUEST, "invalid_content_encoding")
        }
        ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        ApiError::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "route_not_found"),
        ApiError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    }
}

/// The serving path's errors (shared with any other protocol's edge).
fn serving_status(err: &Error) -> (StatusCode, &'static str) {
    match err {
        Error::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
        Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
        Error::ModelUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model_unavailable"),
        Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
        Error::InvalidModelName(_) => (StatusCode::BAD_REQUEST, "invalid_model_name"),
        Error::TooManyRows { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_rows"),
        Error::InputTooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "input_too_long"),
        Error::TooManyPoints { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_points"),
        Error::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
        Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        Error::Forward(_) => (StatusCode::INTERNAL_SERVER_ERROR, "inference_failed"),
        Error::InvalidModel(_) => (StatusCode::BAD_REQUEST, "invalid_model"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        Error::StorageUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse<'a> {
    /// What went wrong, for people (a generic message for server errors).
    pub error: &'a str,
    /// Stable and snake_case, for programs: `model_not_found`, `queue_full`, …
    pub code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(&self);
        let storage_detail = if let ApiError::Serving(Error::StorageUnavailable(d))
        | ApiError::Dataset(DatasetError::Unavailable(d)) = &self
        {
            Some(d)
        } else {
            None
        };
        let message = if let Some(detail) = storage_detail {
            // The detail (which bucket, which key) goes to the log.
            tracing::warn!(error = %detail, code, "shared storage unavailable");
            "the shared storage (object store or catalog database) is unavailable; retry later"
                .to_owned()
        } else if status.is_server_error()
            && !matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            )
        {
            // The client gets a generic message; the log has the detail.
            tracing::error!(error = %self, code, "request failed");
            "internal error while computing the request; the server log has the details".to_owned()
        } else {
            self.to_string()
        };
        let body = ErrorResponse {
            error: &message,
            code,
        };
        let body = serde_json::to_vec(&body).expect("error bodies serialize");
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, ApiError::BodyTimeout(_)) {
            // The rest of the body may still come; the connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = &self {
            if !allow.is_empty() {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self,
            ApiError::Serving(
                Error::QueueFull { .. }
                    | Error::ShuttingDown
                    | Error::ModelUnavailable { .. }
                    | Error::StorageUnavailable(_)
            ) | ApiError::Job(JobError::Unavailable(_))
                | ApiError::Dataset(DatasetError::Unavailable(_))
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses() {
        let cases: [(ApiError, u16); 11] = [
            (Error::ModelNotFound("m".into()).into(), 404),
            (ApiError::MalformedJson("x".into()), 400),
            (ApiError::BodyTooLarge { limit: 1 }, 413),
            (ApiError::BodyTimeout(Duration::from_secs(1)), 408),
            (ApiError::UnsupportedMediaType("text/csv".into()), 415),
            (
                Error::QueueFull {
                    name: "m".into(),
                    version: 1,
                    capacity: 1,
                }
                .into(),
                503,
            ),
            (
                Error::DeadlineExceeded(Duration::from_millis(5)).into(),
                504,
            ),
            (Error::Forward("boom".into()).into(), 500),
            (DatasetError::InvalidId("x".into()).into(), 404),
            (DatasetError::TooLarge { limit: 1 }.into(), 413),
            (JobError::DatasetNotFound("ds_1".into()).into(), 400),
        ];
        for (e, status) in cases {
            assert_eq!(status_and_code(&e).0.as_u16(), status, "{e}");
        }
    }

    #[test]
    fn domain_messages_read_as_before_the_split() {
        let e: ApiError = DatasetError::InvalidId("../x".into()).into();
        assert_eq!(e.to_string(), "dataset '../x' not found");
        let e: ApiError = JobError::DatasetNotFound("ds_1".into()).into();
        assert_eq!(
            e.to_string(),
            "dataset 'ds_1' not found: upload it with POST /v1/datasets"
        );
        let e: ApiError = JobError::NotFound("job_1".into()).into();
        assert_eq!(e.to_string(), "training job 'job_1' not found");
    }

    #[test]
    fn server_errors_hide_details_and_queue_full_says_retry_after() {
        let res = ApiError::from(Error::Forward("secret detail".into())).into_response();
        assert_eq!(res.status(), 500);
        let res = ApiError::from(Error::QueueFull {
            name: "m".into(),
            version: 1,
            capacity: 4,
        })
        .into_response();
        assert_eq!(res.headers()["retry-after"], "1");
        // The job database down: 503, retry later, and no detail of the connection.
        let res = ApiError::from(JobError::Unavailable("connect to 10.0.0.7 refused".into()))
            .into_response();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "1");
    }
}
