//! The store's errors, and how the serving path reports them.

use crate::error::Error;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A model name that can never exist (the client's mistake).
    #[error("invalid model name {0:?}: expected 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit")]
    InvalidName(String),
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    #[error("version {version} of model '{name}' not found")]
    VersionNotFound { name: String, version: u64 },
    /// Files that do not make a model that loads and runs: says which file, tensor or layer.
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// The storage itself failed (disk full, permissions, network): not the client's fault.
    #[error("{at}: cannot {action}: {source}")]
    Io {
        action: &'static str,
        at: String,
        source: std::io::Error,
    },
    /// A shared engine (the object store, the catalog's database) failed or could not be
    /// reached, after bounded retries: says which and why (never a credential).
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidName(n) => Error::InvalidModelName(n),
            StoreError::ModelNotFound(n) => Error::ModelNotFound(n),
            StoreError::VersionNotFound { name, version } => Error::VersionNotFound {
                name,
                version: version.to_string(),
                detail: String::new(),
            },
            StoreError::Invalid(e) => Error::InvalidModel(e.to_string()),
            e @ StoreError::Io { .. } => Error::Internal(e.to_string()),
            StoreError::Unavailable(m) => Error::StorageUnavailable(m),
        }
    }
}
