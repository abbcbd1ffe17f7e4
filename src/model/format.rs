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
    /// Free-form training information (metrics, dataset, date), shown in the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
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
