//! Why a model version could not be loaded or built.

use std::path::PathBuf;

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
    #[error("forward pass failed: {}", super::layers::first_line(.0))]
    Forward(#[from] candle_core::Error),
}
