//! Domain error → HTTP status + stable code, in one exhaustive match (no `_` arm: a new
//! variant must be decided here). Bodies are `{"error": "<message>", "code": "<code>"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The status and stable code of each domain error.
pub fn status_and_code(err: &Error) -> (StatusCode, &'static str) {
    match err {
        Error::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
        Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
        Error::ModelUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "model_unavailable"),
        Error::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
        Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
        Error::InvalidModelName(_) => (StatusCode::BAD_REQUEST, "invalid_model_name"),
        Error::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        Error::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        Error::TooManyRows { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_rows"),
        Error::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        Error::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
        Error::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        Error::Forward(_) => (StatusCode::INTERNAL_SERVER_ERROR, "inference_failed"),
        Error::InvalidModel(_) => (StatusCode::BAD_REQUEST, "invalid_model"),
        Error::DatasetNotFound(_) => (StatusCode::NOT_FOUND, "dataset_not_found"),
        Error::InvalidDataset(_) => (StatusCode::BAD_REQUEST, "invalid_dataset"),
        Error::JobNotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
        Error::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid_spec"),
        Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Error::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "route_not_found"),
        Error::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
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
        let (status, code) = status_and_code(&self.0);
        let message = if status.is_server_error()
            && !matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ) {
            // The client gets a generic message; the log has the detail.
            tracing::error!(error = %self.0, code, "request failed");
            "internal error while computing the request; the server log has the details".to_owned()
        } else {
            self.0.to_string()
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
        if matches!(self.0, Error::BodyTimeout(_)) {
            // The rest of the body may still come; the connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self.0, Error::Unauthorized(_)) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self.0,
            Error::QueueFull { .. } | Error::ShuttingDown | Error::ModelUnavailable { .. }
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
        let cases = [
            (Error::ModelNotFound("m".into()), 404),
            (Error::MalformedJson("x".into()), 400),
            (Error::BodyTooLarge { limit: 1 }, 413),
            (Error::BodyTimeout(Duration::from_secs(1)), 408),
            (Error::UnsupportedMediaType("text/csv".into()), 415),
            (
                Error::QueueFull {
                    name: "m".into(),
                    version: 1,
                    capacity: 1,
                },
                503,
            ),
            (Error::DeadlineExceeded(Duration::from_millis(5)), 504),
            (Error::Forward("boom".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(status_and_code(&e).0.as_u16(), status, "{e}");
        }
    }

    #[test]
    fn server_errors_hide_details_and_queue_full_says_retry_after() {
        let res = ApiError(Error::Forward("secret detail".into())).into_response();
        assert_eq!(res.status(), 500);
        let res = ApiError(Error::QueueFull {
            name: "m".into(),
            version: 1,
            capacity: 4,
        })
        .into_response();
        assert_eq!(res.headers()["retry-after"], "1");
    }
}
