//! Wire formats: what the HTTP API answers. Domain types stay free of HTTP's concerns;
//! these views are built from them in the handlers.

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// `GET /v1/models`: every model, its versions and default version.
#[derive(Serialize)]
pub struct ModelListResponse {
    pub models: Vec<ModelSummaryView>,
}

#[derive(Serialize)]
pub struct ModelSummaryView {
    pub name: String,
    pub default_version: Option<String>,
    pub versions: Vec<VersionSummaryView>,
}

#[derive(Serialize)]
pub struct VersionSummaryView {
    pub version: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<BatchStatsView>,
}

/// How a version's batcher has behaved so far.
#[derive(Serialize)]
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
#[derive(Serialize)]
pub struct ModelStatusResponse {
    pub model_version_status: Vec<VersionStatusView>,
}

#[derive(Serialize)]
pub struct VersionStatusView {
    pub version: String,
    pub state: &'static str,
    pub status: StatusView,
}

#[derive(Serialize)]
pub struct StatusView {
    pub error_code: &'static str,
    pub error_message: String,
}

/// TF Serving's `GetModelMetadata`-shaped answer with kiln's signature.
#[derive(Serialize)]
pub struct MetadataResponse<'a> {
    pub model_spec: ModelSpecView,
    pub metadata: MetadataView<'a>,
}

#[derive(Serialize)]
pub struct ModelSpecView {
    pub name: String,
    pub version: String,
    pub signature_name: &'static str,
}

#[derive(Serialize)]
pub struct MetadataView<'a> {
    pub signature_def: SignatureView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
pub struct SignatureView<'a> {
    pub task: &'static str,
    pub inputs: Vec<TensorView<'a>>,
    pub outputs: Vec<TensorView<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<&'a crate::preprocess::Preprocessing>,
    pub layers: &'a [crate::model::format::LayerSpec],
}

#[derive(Serialize)]
pub struct TensorView<'a> {
    pub name: &'static str,
    pub dtype: &'static str,
    /// With `-1` for the batch dimension.
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<&'a [String]>,
}

/// `GET /health/*`.
#[derive(Serialize)]
pub struct HealthResponse {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
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
#[derive(Serialize)]
pub struct PredictResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Nested<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Nested<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
}

/// `:classify`: per example, every class with its score, best first.
#[derive(Serialize)]
pub struct ClassifyResponse<'a> {
    pub results: Vec<Vec<(&'a str, f32)>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: &'a [String],
}

/// `:regress`: one value per example.
#[derive(Serialize)]
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
