//! [`JobError`]: why a job request was refused or failed, mapped to HTTP by `api::error`.

use super::store::StoreError;
use crate::dataset::DatasetError;

/// Errors of the job API.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("training job '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("dataset '{0}' not found")]
    DatasetNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// The job database cannot be reached (the API answers 503 with Retry-After). The
    /// detail goes to the log, not to the client.
    #[error("the job database cannot be reached right now; retry later")]
    Unavailable(String),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        match e {
            e @ StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "job request refused: the job database is unavailable");
                JobError::Unavailable(e.to_string())
            }
            e @ (StoreError::Database(_)
            | StoreError::LeaseLost(_)
            | StoreError::Corrupt { .. }) => JobError::Internal(e.to_string()),
        }
    }
}

impl JobError {
    /// A dataset a spec names could not be read: `missing` says what a missing one means
    /// for this spec; anything else is the server's fault.
    pub(crate) fn from_dataset(e: DatasetError, missing: impl FnOnce() -> JobError) -> JobError {
        match e {
            DatasetError::NotFound(_) | DatasetError::InvalidId(_) => missing(),
            e @ DatasetError::Unavailable(_) => JobError::Unavailable(e.to_string()),
            e @ (DatasetError::Invalid(_)
            | DatasetError::TooLarge { .. }
            | DatasetError::Io { .. }
            | DatasetError::Corrupt { .. }
            | DatasetError::Internal(_)) => JobError::Internal(e.to_string()),
        }
    }
}
