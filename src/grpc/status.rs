//! Errors → gRPC status codes, the gRPC side of `api::error`'s status table: one exhaustive
//! match over the serving path's errors (a new variant must be decided here too), the
//! HTTP-only ones by their HTTP status. The message is REST's `error` string (what was wrong
//! and where); the stable snake_case code rides along in the `kiln-error-code` metadata.

use axum::http::StatusCode;
use tonic::{Code, Status};

use crate::api::error::{status_and_code, ApiError};
use crate::error::Error;

/// The metadata key that carries REST's stable error code (`model_not_found`, `queue_full`…).
pub const ERROR_CODE: &str = "kiln-error-code";

fn serving_code(err: &Error) -> Code {
    match err {
        Error::ModelNotFound(_) | Error::VersionNotFound { .. } => Code::NotFound,
        Error::ModelUnavailable { .. } | Error::ShuttingDown | Error::StorageUnavailable(_) => {
            Code::Unavailable
        }
        // The client must change the request (split it, for too many rows).
        Error::InvalidInput(_)
        | Error::InvalidModelName(_)
        | Error::TooManyRows { .. }
        | Error::TooManyPoints { .. }
        | Error::InputTooLong { .. } => Code::InvalidArgument,
        Error::QueueFull { .. } => Code::ResourceExhausted,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        // A model that does not load: the repository is not in the state the call needs.
        Error::InvalidModel(_) => Code::FailedPrecondition,
        Error::Forward(_) | Error::Internal(_) => Code::Internal,
    }
}

/// An HTTP-only error by its HTTP status (these reach gRPC only through shared helpers).
fn http_code(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The status a call answers with for `err`. Server faults get a generic message; the log
/// has the detail (as REST's 500s).
pub fn of(err: ApiError) -> Status {
    let (http, code_name) = status_and_code(&err);
    let code = match &err {
        ApiError::Serving(e) => serving_code(e),
        ApiError::Dataset(_)
        | ApiError::Job(_)
        | ApiError::MalformedJson(_)
        | ApiError::BodyTooLarge { .. }
        | ApiError::BodyTimeout(_)
        | ApiError::UnsupportedMediaType(_)
        | ApiError::UnsupportedContentEncoding(_)
        | ApiError::InvalidContentEncoding(_)
        | ApiError::Unauthorized(_)
        | ApiError::Forbidden(_)
        | ApiError::RouteNotFound { .. }
        | ApiError::MethodNotAllowed { .. } => http_code(http),
    };
    let message = if code == Code::Internal {
        tracing::error!(error = %err, code = code_name, "gRPC call failed");
        "internal error while computing the request; the server log has the details".to_owned()
    } else {
        err.to_string()
    };
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_CODE,
        tonic::metadata::MetadataValue::from_static(code_name),
    );
    status
}

/// [`of`] for any of kiln's errors (`.map_err(status::from)`).
pub fn from(err: impl Into<ApiError>) -> Status {
    of(err.into())
}

/// The status code's name as gRPC spells it (`OK`, `INVALID_ARGUMENT`), for metrics.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn serving_errors_map_to_the_codes_clients_expect() {
        let cases = [
            (Error::ModelNotFound("m".into()), Code::NotFound),
            (Error::InvalidInput("x".into()), Code::InvalidArgument),
            (
                Error::TooManyRows { rows: 9, limit: 8 },
                Code::InvalidArgument,
            ),
            (
                Error::QueueFull {
                    name: "m".into(),
                    version: 1,
                    capacity: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::DeadlineExceeded(Duration::from_millis(5)),
                Code::DeadlineExceeded,
            ),
            (Error::ShuttingDown, Code::Unavailable),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let s = of(err.into());
            assert_eq!(s.code(), code, "{message}");
            assert_eq!(s.message(), message, "the REST message, unchanged");
            assert!(s.metadata().get(ERROR_CODE).is_some());
        }
        let s = of(Error::Forward("cuda fault at 0x0".into()).into());
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("0x0"), "details stay in the log");
        let s = of(ApiError::Forbidden("no".into()));
        assert_eq!(s.code(), Code::PermissionDenied);
        let s = of(ApiError::Unauthorized("no".into()));
        assert_eq!(s.code(), Code::Unauthenticated);
    }
}
