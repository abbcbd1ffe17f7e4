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
    /// A text model's Hugging Face configuration (docs/text-models.md).
    #[schema(
        rename = "config.json",
        value_type = Option<String>,
        content_media_type = "application/json"
    )]
    pub config: Option<Vec<u8>>,
    /// A text model's tokenizer, as Hugging Face's fast tokenizers save it.
    #[schema(
        rename = "tokenizer.json",
        value_type = Option<String>,
        content_media_type = "application/json"
    )]
    pub tokenizer: Option<Vec<u8>>,
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

/// `:explain`'s body: `:predict`'s, plus what to explain and from where.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// One entry per instance, as for `:predict`: named feature values or a tensor.
    #[serde(default)]
    pub instances: Option<Vec<Value>>,
    /// A batched tensor, or an object of feature columns (as for `:predict`).
    #[serde(default)]
    pub inputs: Option<Value>,
    /// The class label to explain (classifiers; default: each instance's predicted class),
    /// or the regression output (its target column's name or its index; default: the
    /// first output).
    #[serde(default)]
    pub target: Option<String>,
    /// Integration points per instance (Gauss–Legendre nodes), 1 to 1024; default 50.
    #[serde(default)]
    pub steps: Option<u64>,
    /// One instance to integrate from, in the form of `instances`' entries; default: the
    /// training rows' mean input (zeros in model-input space for models trained elsewhere;
    /// zero embeddings for token models).
    #[serde(default)]
    pub baseline: Option<Value>,
    /// `serving_default` (the only signature) or empty.
    #[serde(default)]
    pub signature_name: Option<String>,
}

/// `:explain`'s answer: one explanation per instance, in request order.
#[derive(Serialize, ToSchema)]
pub struct ExplainResponse<'a> {
    /// `integrated_gradients`.
    pub method: &'static str,
    /// `training_mean`, `zero`, `zero_embedding` or `request`.
    pub baseline: &'static str,
    pub explanations: Vec<ExplanationView<'a>>,
    /// Per instance and feature: unknown categories, encoded as unseen.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
}

/// One instance's explanation.
#[derive(Serialize, ToSchema)]
pub struct ExplanationView<'a> {
    /// The class label (or regression output) explained.
    pub target: String,
    /// f(x): the target class's score, or the regression value in original units.
    pub prediction: f32,
    /// f(x'): the same at the baseline.
    pub baseline_prediction: f32,
    /// By raw column name (tabular models, one-hot groups summed back to their column), or
    /// nested lists in the instance's shape (images; one value per token for token ids).
    #[schema(value_type = Object)]
    pub attributions: Attributions<'a>,
    /// Σ attributions − (prediction − baseline_prediction): how far the integral is from
    /// exact (completeness); more steps make it smaller.
    pub completeness_residual: f32,
    /// Integration points used (without `steps` in the request: 50, doubled while the
    /// residual is over 1e-3 of the larger of |prediction − baseline_prediction| and
    /// Σ|attributions|, within 1024 and the points limit).
    pub steps: usize,
}

/// Attributions by column name (in the signature's order) or in the instance's shape.
pub enum Attributions<'a> {
    Named {
        names: &'a [String],
        values: &'a [f32],
    },
    Shaped(Nested<'a>),
}

impl Serialize for Attributions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Attributions::Named { names, values } => {
                let mut map = s.serialize_map(Some(names.len()))?;
                for (name, value) in names.iter().zip(values.iter()) {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
            Attributions::Shaped(nested) => nested.serialize(s),
        }
    }
}

/// `:evaluate`'s body when the data is an uploaded dataset (the data may instead be the body
/// itself: CSV, or a JSON array of records).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// The dataset's id (`ds_…`); it must hold the model's feature columns and the target.
    pub dataset: String,
    /// The column of actual values; default: the column the model was trained on.
    #[serde(default)]
    pub target: Option<String>,
}

/// `:evaluate`'s answer.
#[derive(Serialize, ToSchema)]
pub struct EvaluateResponse<'a> {
    pub model: &'a str,
    pub version: u64,
    /// `classification` or `regression`.
    pub task: &'static str,
    /// The column of actual values.
    pub target: &'a str,
    /// Rows in the data.
    pub rows: usize,
    /// Rows evaluated.
    pub rows_used: usize,
    /// Rows left out, by reason.
    pub rows_dropped: RowsDroppedView,
    /// Evaluated rows with a category the model did not see in training (encoded as unseen).
    pub unknown_categories: usize,
    /// The loss: `log_loss` of the scores (classifiers), `mse` in original units (regression).
    pub loss: Option<f64>,
    pub loss_name: &'static str,
    /// Classifiers: `accuracy`, `precision_macro`, `recall_macro`, `f1_macro`,
    /// `confusion_matrix` (`[actual][predicted]`, labels in signature order). Regression:
    /// `mae`, `rmse`, `r2`, in original units.
    #[schema(value_type = Object)]
    pub metrics: crate::model::format::Metrics,
    /// Classifiers: precision, recall, F1 and support of each class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassMetricsView<'a>>,
    /// Binary classifiers: area under the ROC curve of the second label's score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// Regression: the distribution of predicted − actual.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residuals: Option<ResidualsView>,
}

#[derive(Serialize, ToSchema)]
pub struct RowsDroppedView {
    /// The target cell is missing.
    pub missing_target: usize,
    /// The target is a label the classifier does not know.
    pub unknown_label: usize,
    /// A feature is missing and the model has no fill value for it.
    pub missing_feature: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ClassMetricsView<'a> {
    pub label: &'a str,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows whose actual class this is.
    pub support: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ResidualsView {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

impl<'a> EvaluateResponse<'a> {
    pub fn of(model: &'a str, version: u64, e: &'a crate::serving::evaluate::Evaluation) -> Self {
        use crate::model::format::Task;
        let mut metrics = e.metrics.clone();
        let loss = metrics.loss.take();
        EvaluateResponse {
            model,
            version,
            task: match e.task {
                Task::Classification => "classification",
                Task::Regression => "regression",
            },
            target: &e.target,
            rows: e.rows.rows,
            rows_used: e.rows.used,
            rows_dropped: RowsDroppedView {
                missing_target: e.rows.missing_target,
                unknown_label: e.rows.unknown_label,
                missing_feature: e.rows.missing_feature,
            },
            unknown_categories: e.rows.unknown_categories,
            loss,
            loss_name: e.loss_name,
            metrics,
            per_class: e
                .per_class
                .iter()
                .map(|(label, s)| ClassMetricsView {
                    label,
                    precision: s.precision,
                    recall: s.recall,
                    f1: s.f1,
                    support: s.support,
                })
                .collect(),
            roc_auc: e.roc_auc,
            residuals: e.residuals.map(|r| ResidualsView {
                mean: r.mean,
                std: r.std,
                min: r.min,
                p25: r.p25,
                median: r.median,
                p75: r.p75,
                max: r.max,
            }),
        }
    }
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
