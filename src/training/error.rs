//! The one error type of the training math: bad configuration, mismatched shapes or state,
//! a diverged step, or a candle failure underneath.

/// Why a training computation could not be done. Knows nothing of HTTP or jobs; the trainer
/// wraps it with the job's context.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// A configuration value is out of range (`learning_rate: -1`, `step_size: 0`, ...).
    #[error("invalid {what}: {message}")]
    Config { what: &'static str, message: String },
    /// Inputs that do not fit together (prediction and target shapes, class ids out of range).
    #[error("{0}")]
    Shape(String),
    /// Saved optimizer state that does not match the parameters it is loaded for.
    #[error("optimizer state: {0}")]
    State(String),
    /// A tensor the model spec names is not among the model's variables.
    #[error("tensor '{0}' is not among the model's variables")]
    MissingTensor(String),
    /// The gradients' global norm is NaN or infinite: the step was refused and no parameter
    /// changed, so the trainer can stop with the last good weights.
    #[error("the gradient norm is not finite ({0}): training diverged; no parameter was updated")]
    NonFiniteGradient(f64),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainingError {
    pub(crate) fn config(what: &'static str, message: impl Into<String>) -> Self {
        TrainingError::Config {
            what,
            message: message.into(),
        }
    }
}

/// Results of this module.
pub type Result<T, E = TrainingError> = std::result::Result<T, E>;
