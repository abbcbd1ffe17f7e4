//! Wire formats: what the HTTP API answers. Domain types stay free of HTTP's concerns;
//! these views are built from them in the handlers.

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `GET /v1/models`: every model, its versions and default version.
#[derive(Serialize, ToSchema)]
pub struct ModelListResponse {
    pub models: Vec<ModelSummaryView>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelSummaryView {
    pub name: String,
    pub default_version: Option<String>,
    pub versions: Vec<VersionSummaryView>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionSummaryView {
    pub version: String,
    /// `AVAILABLE`, `LOADING`, `FAILED` or `END`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<BatchStatsView>,
}

/// How a version's batcher has behaved so far.
#[derive(Serialize, ToSchema)]
pub struct BatchStatsView {
    pub requests: u64,
    pub batches: u64,
    pub rows: u64,
    pub mean_batch_rows: f64,
    pub max_batch_rows: u64,
    pub queue_depth: usize,
    pub rejected_queue_full: u64,
    pub rejected_deadline: u64,
}

/// TF Serving's `GetModelStatus` answer.
#[derive(Serialize, ToSchema)]
pub struct ModelStatusResponse {
    pub model_version_status: Vec<VersionStatusView>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionStatusView {
    pub version: String,
    /// `AVAILABLE`, `LOADING`, `FAILED` or `END`.
    pub state: &'static str,
    pub status: StatusView,
}

#[derive(Serialize, ToSchema)]
pub struct StatusView {
    /// `OK`, or `INVALID_ARGUMENT` for a version that failed to load.
    pub error_code: &'static str,
    pub error_message: String,
}

/// TF Serving's `GetModelMetadata`-shaped answer with kiln's signature.
#[derive(Serialize, ToSchema)]
pub struct MetadataResponse<'a> {
    pub model_spec: ModelSpecView,
    pub metadata: MetadataView<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelSpecView {
    pub name: String,
    pub version: String,
    pub signature_name: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct MetadataView<'a> {
    pub signature_def: SignatureView<'a>,
    /// Training information (metrics, dataset, date) from `model.json`: kiln's own, or any
    /// JSON a model from elsewhere carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub training: Option<&'a crate::model::format::TrainingBlock>,
}

#[derive(Serialize, ToSchema)]
pub struct SignatureView<'a> {
    /// `classification` or `regression`.
    pub task: &'static str,
    pub inputs: Vec<TensorView<'a>>,
    pub outputs: Vec<TensorView<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<&'a crate::preprocess::Preprocessing>,
    pub layers: &'a [crate::model::format::LayerSpec],
}

#[derive(Serialize, ToSchema)]
pub struct TensorView<'a> {
    pub name: &'static str,
    /// `float32`, or `int64` for embedding ids.
    pub dtype: &'static str,
    /// With `-1` for the batch dimension.
    pub shape: Vec<i64>,
    /// The raw feature names an instance may use (models with preprocessing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<&'a [String]>,
}

/// `GET /health/*`.
#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    /// `live`, `ready`, `degraded` (ready, but the job database cannot be reached: job
    /// routes answer 503) or `not_ready`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

// `decode::decode_predict` reads `:predict` bodies straight into model rows; this type only
// describes them for the OpenAPI document (a decode test checks it reads what the decoder
// accepts), as `ExamplesRequest` and `ModelUploadForm` do for theirs. Their `///` comments
// are the document's descriptions.

/// `:predict`'s body, TF Serving's REST format: `instances` (row format, answered with
/// `predictions`) or `inputs` (columnar, answered with `outputs`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// One entry per instance: a tensor of the signature's shape (nested lists), or an
    /// object of named feature values (models with feature names).
    #[serde(default)]
    pub instances: Option<Vec<Value>>,
    /// A batched tensor (first dimension: instances), or an object of feature columns.
    #[serde(default)]
    pub inputs: Option<Value>,
    /// `serving_default` (the only signature) or empty.
    #[serde(default)]
    pub signature_name: Option<String>,
}

/// `:classify` and `:regress` bodies: named-feature examples (TF Serving's format), for
/// models with feature names.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExamplesRequest {
    /// One object of named feature values per instance.
    pub examples: Vec<Map<String, Value>>,
    /// Feature values shared by every example (an example's own value wins).
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    /// `serving_default` (the only signature) or empty.
    #[serde(default)]
    pub signature_name: Option<String>,
    /// Accepted and ignored, as TF Serving clients send it.
    #[serde(default)]
    pub model_spec: Option<Value>,
}

/// The multipart form of `POST /v1/models/{name}/versions` (the parts may also be named
/// `spec` and `weights`).
#[derive(ToSchema)]
pub struct ModelUploadForm {
    /// The model description (docs/model-format.md).
    #[schema(
        rename = "model.json",
        value_type = String,
        content_media_type = "application/json"
    )]
    pub spec: Vec<u8>,
    /// The weights, as PyTorch's `safetensors.torch.save_file` writes them.
    #[schema(
        rename = "model.safetensors",
        value_type = String,
        content_media_type = "application/octet-stream"
    )]
    pub weights: Vec<u8>,
}

/// A flat row-major buffer serialized as nested lists of `shape`.
pub struct Nested<'a> {
    pub data: &'a [f32],
    pub shape: &'a [usize],
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.shape.split_first() {
            None => s.serialize_f32(self.data[0]),
            Some((&n, rest)) => {
                let stride: usize = rest.iter().product();
                let mut seq = s.serialize_seq(Some(n))?;
                for i in 0..n {
                    if rest.is_empty() {
                        seq.serialize_element(&self.data[i])?;
                    } else {
                        seq.serialize_element(&Nested {
                            data: &self.data[i * stride..(i + 1) * stride],
                            shape: rest,
                        })?;
                    }
                }
                seq.end()
            }
        }
    }
}

/// `{"predictions": …}` or `{"outputs": …}`, with warnings when there are any.
#[derive(Serialize, ToSchema)]
pub struct PredictResponse<'a> {
    /// Row format (the request sent `instances`): one output per instance, a number or
    /// nested lists of the model's output shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    pub predictions: Option<Nested<'a>>,
    /// Columnar format (the request sent `inputs`): the same values.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    pub outputs: Option<Nested<'a>>,
    /// Per instance and feature: unknown categories, encoded as unseen.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
}

/// `:classify`: per example, every class with its score, best first.
#[derive(Serialize, ToSchema)]
pub struct ClassifyResponse<'a> {
    /// Per example: `[label, score]` pairs.
    pub results: Vec<Vec<(&'a str, f32)>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
}

/// `:regress`: one value per example.
#[derive(Serialize, ToSchema)]
pub struct RegressResponse<'a> {
    pub results: &'a [f32],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_follows_the_shape() {
        let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let j = serde_json::to_string(&Nested {
            data: &data,
            shape: &[2, 3],
        })
        .unwrap();
        assert_eq!(j, "[[1.0,2.0,3.0],[4.0,5.0,6.0]]");
        let j = serde_json::to_string(&Nested {
            data: &data,
            shape: &[3, 1, 2],
        })
        .unwrap();
        assert_eq!(j, "[[[1.0,2.0]],[[3.0,4.0]],[[5.0,6.0]]]");
    }
}
