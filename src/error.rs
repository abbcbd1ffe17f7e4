//! The serving path's errors: what a prediction request can meet on its way through the
//! registry, the batcher and a worker, whatever protocol carried it. They know nothing of
//! HTTP (`api::error` maps each variant to a status and a stable code in one exhaustive
//! match; a gRPC edge maps them to status codes the same way) and this module imports no
//! other part of kiln: every domain owns its own error enum (`model::ModelError`,
//! `dataset::DatasetError`, `jobs::JobError`, `training::TrainingError`), and only the
//! edge puts them together.

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
    /// The request is valid JSON but does not fit the model or the API.
    #[error("{0}")]
    InvalidInput(String),
    /// A model name that can never exist (it must match `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`).
    #[error("invalid model name {0:?}: expected 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit")]
    InvalidModelName(String),
    /// More instances than one request may carry.
    #[error("{rows} instances in one request; the limit is {limit}: split the request")]
    TooManyRows { rows: usize, limit: usize },
    /// A text longer than the model's maximum, sent without `truncate`.
    #[error("input {index} is {tokens} tokens long; the model takes at most {limit}: shorten it or send \"truncate\": true")]
    InputTooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
    /// An explanation of more interpolation points (rows × steps) than one request may ask.
    #[error("{rows} instances × {steps} steps = {} interpolation points; the limit is {limit}: send fewer instances or steps", rows * steps)]
    TooManyPoints {
        rows: usize,
        steps: usize,
        limit: usize,
    },
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
    /// A server-side failure (disk, database); the detail goes to the log.
    #[error("{0}")]
    Internal(String),
    /// Shared storage (object store, catalog database) failed or is unreachable after
    /// retries: the client may retry later.
    #[error("{0}")]
    StorageUnavailable(String),
}
