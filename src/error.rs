//! Domain errors. They know nothing of HTTP: `api::error` maps each variant to a status and a
//! stable code in one exhaustive match.

use std::path::PathBuf;
use std::time::Duration;

/// Errors a request can meet on its way through the registry, the batcher and a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No model of that name is known to the registry.
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    /// The model exists but not that version (or the version is not loaded).
    #[error("version {version} of model '{name}' not found{detail}")]
    VersionNotFound {
        name: String,
        version: String,
        detail: String,
    },
    /// The model exists but has no version that can answer right now.
    #[error("model '{name}' has no available version: {reason}")]
    ModelUnavailable { name: String, reason: String },
    /// The request body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The request is valid JSON but does not fit the model or the API.
    #[error("{0}")]
    InvalidInput(String),
    /// A model name that can never exist (it must match `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`).
    #[error("invalid model name {0:?}: expected 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit")]
    InvalidModelName(String),
    /// The request body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The request body stalled (no bytes) longer than `body_read_timeout_ms`.
    #[error("the request body stalled: no bytes for {} ms", .0.as_millis())]
    BodyTimeout(Duration),
    /// More instances than one request may carry.
    #[error("{rows} instances in one request; the limit is {limit}: split the request")]
    TooManyRows { rows: usize, limit: usize },
    /// The request body is not JSON.
    #[error("unsupported content type '{0}': send application/json")]
    UnsupportedMediaType(String),
    /// The model version's queue is full: overload answered at once.
    #[error(
        "the queue of model '{name}' version {version} is full ({capacity} requests); retry later"
    )]
    QueueFull {
        name: String,
        version: u64,
        capacity: usize,
    },
    /// The request's deadline passed before it was computed.
    #[error("the request's deadline of {} ms passed before it was computed", .0.as_millis())]
    DeadlineExceeded(Duration),
    /// The server is draining and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The forward pass failed on a worker (a bug or a device fault, never the client's input).
    #[error("inference failed: {0}")]
    Forward(String),
    /// An uploaded model that does not load or run (says which file, tensor or layer).
    #[error("{0}")]
    InvalidModel(String),
    /// No dataset has that id.
    #[error("dataset '{0}' not found")]
    DatasetNotFound(String),
    /// An uploaded dataset that cannot be read (ragged rows, bad UTF-8, …): says where.
    #[error("{0}")]
    InvalidDataset(String),
    /// No training job has that id.
    #[error("training job '{0}' not found")]
    JobNotFound(String),
    /// A training job spec refused before queuing.
    #[error("{0}")]
    InvalidSpec(String),
    /// The request conflicts with the resource's state (e.g. cancelling a finished job).
    #[error("{0}")]
    Conflict(String),
    /// A server-side failure (disk, database); the detail goes to the log.
    #[error("{0}")]
    Internal(String),
    /// No or an unknown API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks the route's scope.
    #[error("{0}")]
    Forbidden(String),
    /// No route matches.
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    /// The route exists but not for this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
}

/// Why a model version could not be loaded. Reported with its path in the log and in the
/// version's status (`FAILED` with this message).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid model.json: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("layer {index} ({kind} '{name}'): {message}")]
    Layer {
        index: usize,
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("device: {0}")]
    Device(String),
    #[error("forward pass failed: {}", crate::model::layers::first_line(.0))]
    Forward(#[from] candle_core::Error),
}

impl From<crate::dataset::DatasetError> for Error {
    fn from(e: crate::dataset::DatasetError) -> Self {
        use crate::dataset::DatasetError as D;
        match e {
            D::Invalid(m) => Error::InvalidDataset(m),
            D::InvalidId(id) | D::NotFound(id) => Error::DatasetNotFound(id),
            D::TooLarge { limit } => Error::BodyTooLarge {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            },
            e @ (D::Io { .. } | D::Corrupt { .. } | D::Internal(_)) => {
                Error::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::jobs::JobError> for Error {
    fn from(e: crate::jobs::JobError) -> Self {
        use crate::jobs::JobError as J;
        match e {
            J::NotFound(id) => Error::JobNotFound(id),
            J::InvalidSpec(m) => Error::InvalidSpec(m),
            J::DatasetNotFound(id) => Error::InvalidSpec(format!(
                "dataset '{id}' not found: upload it with POST /v1/datasets"
            )),
            J::Conflict(m) => Error::Conflict(m),
            J::Internal(m) => Error::Internal(m),
        }
    }
}
