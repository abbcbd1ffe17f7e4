//! `model.json`: the on-disk description of one model version (see docs/model-format.md).
//!
//! Pure data, read by the loader on a blocking thread and written by training. Weights live
//! beside it in `model.safetensors` under PyTorch's tensor names.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::preprocess::Preprocessing;

/// The only `format_version` this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The contents of `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub format_version: u32,
    /// Classification or regression: decides how `:classify` and `:regress` read the output.
    pub task: Task,
    pub input: InputSignature,
    /// Class names, in the order of the output units (classification only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub layers: Vec<LayerSpec>,
    /// Fitted preprocessing, applied to instances that arrive as named features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<Preprocessing>,
    /// Training information (metrics, dataset, date), shown in the metadata: what kiln's
    /// training wrote, or any JSON a model from elsewhere carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingBlock>,
}

/// The `training` block of `model.json`. The format documents it as free-form, so a block
/// that is not kiln's own is kept as it was written rather than refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrainingBlock {
    Kiln(Box<TrainingInfo>),
    Other(serde_json::Value),
}

/// What a kiln training run records about the version it published. Unknown keys make a
/// block [`TrainingBlock::Other`], so nothing a block holds is dropped when it is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    /// The training job (`None` for `kiln train`).
    pub job: Option<String>,
    pub dataset: String,
    pub target: String,
    /// RFC 3339, UTC, milliseconds.
    pub trained_at: String,
    pub epochs_run: u32,
    pub best_epoch: Option<u32>,
    pub outcome: Outcome,
    /// `validation` or `training`: the split [`metrics`](Self::metrics) were computed on.
    pub evaluated_on: String,
    pub metrics: Metrics,
    /// The loss trained with (`sparse_categorical_crossentropy`, `mse`, ...).
    pub loss: String,
    /// The optimizer settings as the job spec gave them. Kept as JSON: their type belongs to
    /// the training module, which builds on this one.
    pub optimizer: serde_json::Value,
    /// What preparing the data did.
    pub report: crate::preprocess::DataReport,
}

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    EarlyStopped,
    Cancelled,
}

/// Metrics of one evaluation; only the ones that apply are present (and serialized).
/// Computed by `training::metrics`; defined here because a model's training information
/// stores them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss, when the trainer has one to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_macro: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_macro: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_macro: Option<f64>,
    /// `confusion_matrix[actual][predicted]`, as scikit-learn lays it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion_matrix: Option<Vec<Vec<u64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classification,
    Regression,
}

/// The input tensor of one instance (no batch dimension).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSignature {
    /// Shape of one instance after preprocessing, without the batch dimension.
    pub shape: Vec<usize>,
    #[serde(default)]
    pub dtype: InputDType,
    /// Raw feature names, in the order an array instance lists them. With preprocessing these
    /// are the preprocessing's input columns; without it, one per element of a 1-D input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputDType {
    #[default]
    Float32,
    /// Integer ids (for an `embedding` first layer); sent as JSON integers.
    Int64,
}

impl InputDType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputDType::Float32 => "float32",
            InputDType::Int64 => "int64",
        }
    }
}

/// Element-wise activations, usable as a layer or inline on `dense` and conv layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Linear,
    Relu,
    LeakyRelu,
    Elu,
    Gelu,
    Sigmoid,
    Tanh,
    Softmax,
}

/// A convolution's padding: explicit zeros per side (PyTorch) or Keras' `"valid"` / `"same"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Padding {
    Explicit(usize),
    Named(PaddingMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaddingMode {
    Valid,
    Same,
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Explicit(0)
    }
}

/// Weight initializers (used by training; ignored when weights are loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Initializer {
    #[default]
    GlorotUniform,
    GlorotNormal,
    HeUniform,
    HeNormal,
    Normal,
    Uniform,
    Zeros,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_alpha() -> f64 {
    0.01
}
fn default_momentum() -> f64 {
    0.1
}

/// One layer of the sequential list. `name` prefixes its tensors (`<name>.weight`) and
/// defaults to the layer's index in the list, as `torch.nn.Sequential` numbers its modules.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Dense {
        units: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
        #[serde(default = "yes")]
        use_bias: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initializer: Option<Initializer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Activation {
        activation: Activation,
        /// Negative slope of `leaky_relu`, alpha of `elu`.
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Dropout {
        rate: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Flatten {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Reshape {
        /// Target shape without the batch dimension.
        shape: Vec<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Conv1d {
        filters: usize,
        kernel_size: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: Padding,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
        #[serde(default = "yes")]
        use_bias: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initializer: Option<Initializer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Conv2d {
        filters: usize,
        kernel_size: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: Padding,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
        #[serde(default = "yes")]
        use_bias: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initializer: Option<Initializer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    MaxPool2d {
        pool_size: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    AvgPool2d {
        pool_size: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    BatchNorm {
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    LayerNorm {
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Embedding {
        /// Vocabulary size: ids must be in `0..input_dim`.
        input_dim: usize,
        output_dim: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Lstm {
        units: usize,
        /// `false`: the last hidden state `[units]`; `true`: every step's `[steps, units]`.
        #[serde(default)]
        return_sequences: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Gru {
        units: usize,
        #[serde(default)]
        return_sequences: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl LayerSpec {
    /// The layer's `type` as written in model.json.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Dense { .. } => "dense",
            LayerSpec::Activation { .. } => "activation",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Flatten { .. } => "flatten",
            LayerSpec::Reshape { .. } => "reshape",
            LayerSpec::Conv1d { .. } => "conv1d",
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::MaxPool2d { .. } => "max_pool2d",
            LayerSpec::AvgPool2d { .. } => "avg_pool2d",
            LayerSpec::BatchNorm { .. } => "batch_norm",
            LayerSpec::LayerNorm { .. } => "layer_norm",
            LayerSpec::Embedding { .. } => "embedding",
            LayerSpec::Lstm { .. } => "lstm",
            LayerSpec::Gru { .. } => "gru",
        }
    }

    /// The explicit `name`, if the layer has one.
    pub fn explicit_name(&self) -> Option<&str> {
        match self {
            LayerSpec::Dense { name, .. }
            | LayerSpec::Activation { name, .. }
            | LayerSpec::Dropout { name, .. }
            | LayerSpec::Flatten { name }
            | LayerSpec::Reshape { name, .. }
            | LayerSpec::Conv1d { name, .. }
            | LayerSpec::Conv2d { name, .. }
            | LayerSpec::MaxPool2d { name, .. }
            | LayerSpec::AvgPool2d { name, .. }
            | LayerSpec::BatchNorm { name, .. }
            | LayerSpec::LayerNorm { name, .. }
            | LayerSpec::Embedding { name, .. }
            | LayerSpec::Lstm { name, .. }
            | LayerSpec::Gru { name, .. } => name.as_deref(),
        }
    }

    /// The tensor-name prefix: the explicit name, else the index in the layer list.
    pub fn tensor_prefix(&self, index: usize) -> String {
        self.explicit_name()
            .map_or_else(|| index.to_string(), str::to_owned)
    }
}

impl ModelSpec {
    /// Parses model.json text; the error says what is wrong and where (serde's line/column).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if spec.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this kiln reads {FORMAT_VERSION})",
                spec.format_version
            ));
        }
        Ok(spec)
    }

    /// Number of f32 values in one instance after preprocessing.
    pub fn row_len(&self) -> usize {
        self.input.shape.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kiln's own block reads typed and writes back the same keys; any other JSON (the
    /// format calls the block free-form) is kept as written, including a kiln-like block
    /// with a key of its own.
    #[test]
    fn the_training_block_is_typed_when_it_is_kilns_and_kept_otherwise() {
        let kiln = serde_json::json!({
            "job": "job_0123456789abcdef", "dataset": "ds_0123456789abcdef", "target": "species",
            "trained_at": "2026-12-03T07:30:00.000Z", "epochs_run": 12, "best_epoch": 9,
            "outcome": "early_stopped", "evaluated_on": "validation",
            "metrics": {"accuracy": 0.95, "confusion_matrix": [[3, 0], [1, 4]]},
            "loss": "sparse_categorical_crossentropy",
            "optimizer": {"type": "adam", "learning_rate": 0.01},
            "report": {"rows": 10, "duplicates_dropped": 0, "missing_target_dropped": 0,
                       "train_rows": 8, "validation_rows": 2, "train_rows_dropped": 0,
                       "validation_rows_dropped": 0, "validation_unknown_categories": 0,
                       "columns": [], "target": {"name": "species", "classes": ["a", "b"],
                                                 "class_counts": [4, 4]}}
        });
        let block: TrainingBlock = serde_json::from_value(kiln.clone()).unwrap();
        let TrainingBlock::Kiln(info) = &block else {
            panic!("kiln's block read as foreign: {block:?}");
        };
        assert_eq!(
            (info.outcome, info.metrics.accuracy, info.best_epoch),
            (Outcome::EarlyStopped, Some(0.95), Some(9))
        );
        assert_eq!(serde_json::to_value(&block).unwrap(), kiln);

        let mut with_notes = kiln.clone();
        with_notes["notes"] = "from a notebook".into();
        for other in [
            with_notes,
            serde_json::json!({"any": "free-form information"}),
            serde_json::json!("v2 of the churn model"),
        ] {
            let block: TrainingBlock = serde_json::from_value(other.clone()).unwrap();
            assert!(matches!(block, TrainingBlock::Other(_)), "{other}");
            assert_eq!(serde_json::to_value(&block).unwrap(), other);
        }
    }

    #[test]
    fn parses_a_layer_list_with_defaults() {
        let spec = ModelSpec::from_json(
            r#"{"format_version": 1, "task": "classification", "input": {"shape": [4]},
                "labels": ["a", "b"],
                "layers": [{"type": "dense", "units": 8, "activation": "relu", "name": "fc1"},
                           {"type": "dropout", "rate": 0.5},
                           {"type": "dense", "units": 2},
                           {"type": "activation", "activation": "softmax"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.layers.len(), 4);
        assert_eq!(spec.layers[0].tensor_prefix(0), "fc1");
        assert_eq!(spec.layers[2].tensor_prefix(2), "2");
        assert_eq!(spec.input.dtype, InputDType::Float32);
        assert_eq!(spec.row_len(), 4);
    }

    #[test]
    fn unknown_layer_and_bad_version_are_reported() {
        let err = ModelSpec::from_json(
            r#"{"format_version": 1, "task": "regression", "input": {"shape": [4]},
                "layers": [{"type": "transformer"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("transformer"), "{err}");
        let err = ModelSpec::from_json(
            r#"{"format_version": 9, "task": "regression", "input": {"shape": [4]}, "layers": []}"#,
        )
        .unwrap_err();
        assert!(err.contains("format_version 9"), "{err}");
    }

    #[test]
    fn padding_accepts_numbers_and_names() {
        let p: Padding = serde_json::from_str("2").unwrap();
        assert_eq!(p, Padding::Explicit(2));
        let p: Padding = serde_json::from_str("\"same\"").unwrap();
        assert_eq!(p, Padding::Named(PaddingMode::Same));
    }
}
