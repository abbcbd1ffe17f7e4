//! Model listing, TF Serving's status and metadata endpoints.

use std::collections::BTreeMap;

use axum::extract::State;

use super::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::extract::{check_name, parse_version, refuse_verb};
use super::openapi::{LookupErrors, ModelPath, StatusErrors, VersionPath};
use super::respond::batched;
use super::types::*;
use crate::error::Error;
use crate::model::format::{InputDType, Task};
use crate::model::Model;
use crate::registry::{LoadedVersion, ModelView, VersionState};
use crate::state::AppState;

/// `GET /v1/models`
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    tag = "serving",
    summary = "Every model, its versions and default version",
    responses((status = 200, body = ModelListResponse)),
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelListResponse> {
    let models = state.registry.list().into_iter().map(summary).collect();
    Json(ModelListResponse { models })
}

fn summary(m: ModelView) -> ModelSummaryView {
    ModelSummaryView {
        name: m.name,
        default_version: m.default_version.map(|v| v.to_string()),
        versions: m
            .versions
            .into_iter()
            .map(|(v, s)| VersionSummaryView {
                version: v.to_string(),
                state: s.name(),
                error: s.error().map(str::to_owned),
                path: s.loaded().map(|lv| lv.path.display().to_string()),
                stats: s.loaded().map(|lv| stats_view(lv)),
            })
            .collect(),
    }
}

fn stats_view(lv: &LoadedVersion) -> BatchStatsView {
    let s = lv.stats();
    BatchStatsView {
        requests: s.requests,
        batches: s.batches,
        rows: s.rows,
        mean_batch_rows: if s.batches == 0 {
            0.0
        } else {
            s.rows as f64 / s.batches as f64
        },
        max_batch_rows: s.max_batch_rows,
        queue_depth: lv.queue_depth(),
        rejected_queue_full: s.rejected_queue_full,
        rejected_deadline: s.rejected_deadline,
    }
}

fn status_of(v: u64, s: &VersionState) -> VersionStatusView {
    let (error_code, error_message) = match s.error() {
        Some(m) => ("INVALID_ARGUMENT", m.to_owned()),
        None => ("OK", String::new()),
    };
    VersionStatusView {
        version: v.to_string(),
        state: s.name(),
        status: StatusView {
            error_code,
            error_message,
        },
    }
}

/// `GET /v1/models/{name}`: status of every version.
#[utoipa::path(
    get,
    path = "/v1/models/{name}",
    operation_id = "model_status",
    tag = "serving",
    summary = "The status of every version (TF Serving's GetModelStatus)",
    params(ModelPath),
    responses((status = 200, body = ModelStatusResponse), StatusErrors),
)]
pub async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelStatusResponse>, ApiError> {
    refuse_verb("GET", "/v1/models/", &name)?;
    check_name(&name)?;
    let view = state.registry.view(&name)?;
    Ok(Json(ModelStatusResponse {
        model_version_status: view
            .versions
            .iter()
            .map(|(v, s)| status_of(*v, s))
            .collect(),
    }))
}

/// `GET /v1/models/{name}/versions/{version}`
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions/{version}",
    operation_id = "version_status",
    tag = "serving",
    summary = "The status of one version",
    params(VersionPath),
    responses((status = 200, body = ModelStatusResponse), StatusErrors),
)]
pub async fn version_status(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelStatusResponse>, ApiError> {
    refuse_verb("GET", &format!("/v1/models/{name}/versions/"), &version)?;
    check_name(&name)?;
    let v = parse_version(&name, &version)?;
    let view = state.registry.view(&name)?;
    let (_, s) =
        view.versions
            .iter()
            .find(|(n, _)| *n == v)
            .ok_or_else(|| Error::VersionNotFound {
                name: name.clone(),
                version,
                detail: String::new(),
            })?;
    Ok(Json(ModelStatusResponse {
        model_version_status: vec![status_of(v, s)],
    }))
}

/// `GET /v1/models/{name}/metadata`
#[utoipa::path(
    get,
    path = "/v1/models/{name}/metadata",
    operation_id = "model_metadata",
    tag = "serving",
    summary = "The default version's signatures (TF Serving's GetModelMetadata), with kiln's layers and preprocessing",
    params(ModelPath),
    responses((status = 200, body = MetadataResponse), LookupErrors),
)]
pub async fn metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let lv = state.registry.get(&name, None)?;
    metadata_of(&lv)
}

/// `GET /v1/models/{name}/versions/{version}/metadata`
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions/{version}/metadata",
    operation_id = "version_metadata",
    tag = "serving",
    summary = "One version's signatures, layers and preprocessing",
    params(VersionPath),
    responses((status = 200, body = MetadataResponse), LookupErrors),
)]
pub async fn version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let v = parse_version(&name, &version)?;
    let lv = state.registry.get(&name, Some(v))?;
    metadata_of(&lv)
}

/// The version's signatures as TF Serving's `SignatureDefMap` (REST's
/// `metadata.signature_def`, gRPC's GetModelMetadata).
pub(crate) fn signature_defs(lv: &LoadedVersion) -> Result<SignatureDefMapView, Error> {
    match lv.text() {
        Ok(text) => Ok(text_signatures(text.model.hidden_size())),
        Err(_) => Ok(tf_signatures(&lv.layers()?.model)),
    }
}

fn metadata_of(lv: &LoadedVersion) -> Result<Response, ApiError> {
    if let Ok(text) = lv.text() {
        if text.model.is_classifier() {
            // A text classifier: texts (or pairs) in, a score per class out.
            let k = text.model.output_size();
            let spec = text.model.spec();
            let mut inputs =
                vec![serde_json::json!({"name": "text", "dtype": "string", "shape": [-1]})];
            if spec.pairs || matches!(spec.head, Some(crate::text::format::Head::BertPooler)) {
                // Pairs: required for a head trained on pairs, optional for a Hugging Face one.
                inputs.push(
                    serde_json::json!({"name": "text_pair", "dtype": "string", "shape": [-1],
                                               "optional": !spec.pairs}),
                );
            }
            return Ok(Json(serde_json::json!({
                "model_spec": {"name": lv.name, "version": lv.version.to_string(),
                               "signature_name": "serving_default"},
                "metadata": {"transformer": text.model.spec(),
                             "labels": text.model.labels(),
                             "inputs": inputs,
                             "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, k]},
                                         {"name": "label", "dtype": "string", "shape": [-1]}],
                             "verbs": [":predict", ":classify"]},
            }))
            .into_response());
        }
        // What a transformer takes and returns: texts in, one embedding each out.
        return Ok(Json(serde_json::json!({
            "model_spec": {"name": lv.name, "version": lv.version.to_string(),
                           "signature_name": "serving_default"},
            "metadata": {"signature_def": text_signatures(text.model.hidden_size()),
                         "transformer": text.model.spec(),
                         "inputs": [{"name": "text", "dtype": "string", "shape": [-1]}],
                         "outputs": [{"name": "embedding", "dtype": "float32",
                                      "shape": [-1, text.model.hidden_size()]}]},
        }))
        .into_response());
    }
    let model = &lv.layers()?.model;
    let spec = model.spec();
    let response = MetadataResponse {
        model_spec: ModelSpecView {
            name: lv.name.clone(),
            version: lv.version.to_string(),
            signature_name: "serving_default",
        },
        metadata: MetadataView {
            signature_def: tf_signatures(model),
            kiln: SignatureView {
                task: match spec.task {
                    Task::Classification => "classification",
                    Task::Regression => "regression",
                },
                inputs: vec![TensorView {
                    name: "input",
                    dtype: spec.input.dtype.as_str(),
                    shape: batched(&spec.input.shape),
                    features: spec.input.features.as_deref(),
                }],
                outputs: vec![TensorView {
                    name: "output",
                    dtype: "float32",
                    shape: batched(model.output_shape()),
                    features: None,
                }],
                labels: &spec.labels,
                preprocessing: spec.preprocessing.as_ref(),
                layers: &spec.layers,
            },
            training: spec.training.as_ref(),
        },
    };
    let body = serde_json::to_vec(&response).expect("metadata views serialize");
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The version's signatures as TF Serving describes a SavedModel's: `serving_default`
/// (`:predict`: the input tensor in, the output tensor out), and, for a model that takes
/// named-feature examples, `classify` (a classifier: `classes` and `scores` per class) or
/// `regress` (one value per example). The examples of `classify`/`regress` are serialized
/// `tf.Example`s in TensorFlow (`DT_STRING`); over REST they are JSON objects.
fn tf_signatures(model: &Model) -> SignatureDefMapView {
    let spec = model.spec();
    let input_dtype = match spec.input.dtype {
        InputDType::Float32 => "DT_FLOAT",
        InputDType::Int64 => "DT_INT64",
    };
    let mut signatures = BTreeMap::new();
    signatures.insert(
        "serving_default",
        SignatureDefView {
            inputs: BTreeMap::from([(
                "input",
                tensor_info("input", input_dtype, &batched(&spec.input.shape)),
            )]),
            outputs: BTreeMap::from([(
                "output",
                tensor_info("output", "DT_FLOAT", &batched(model.output_shape())),
            )]),
            method_name: "tensorflow/serving/predict",
        },
    );
    if spec.input.features.is_some() {
        let examples = || {
            BTreeMap::from([(
                "inputs",
                tensor_info("examples", "DT_STRING", &batched(&[])),
            )])
        };
        match model.task() {
            Task::Classification => {
                let classes = batched(&[model.labels().len()]);
                signatures.insert(
                    "classify",
                    SignatureDefView {
                        inputs: examples(),
                        outputs: BTreeMap::from([
                            ("classes", tensor_info("classes", "DT_STRING", &classes)),
                            ("scores", tensor_info("scores", "DT_FLOAT", &classes)),
                        ]),
                        method_name: "tensorflow/serving/classify",
                    },
                );
            }
            Task::Regression if model.output_len() == 1 => {
                signatures.insert(
                    "regress",
                    SignatureDefView {
                        inputs: examples(),
                        outputs: BTreeMap::from([(
                            "outputs",
                            tensor_info("outputs", "DT_FLOAT", &batched(&[1])),
                        )]),
                        method_name: "tensorflow/serving/regress",
                    },
                );
            }
            Task::Regression => {}
        }
    }
    SignatureDefMapView {
        signature_def: signatures,
    }
}

fn tensor_info(name: &'static str, dtype: &'static str, shape: &[i64]) -> TensorInfoView {
    TensorInfoView {
        dtype,
        tensor_shape: TensorShapeView {
            dim: shape
                .iter()
                .map(|d| DimView {
                    size: d.to_string(),
                    name: "",
                })
                .collect(),
            unknown_rank: false,
        },
        name,
    }
}

/// A transformer's signature as TF Serving describes one: texts in (`DT_STRING`), one
/// embedding each out.
fn text_signatures(hidden: usize) -> SignatureDefMapView {
    SignatureDefMapView {
        signature_def: BTreeMap::from([(
            "serving_default",
            SignatureDefView {
                inputs: BTreeMap::from([("text", tensor_info("text", "DT_STRING", &[-1]))]),
                outputs: BTreeMap::from([(
                    "embedding",
                    tensor_info("embedding", "DT_FLOAT", &batched(&[hidden])),
                )]),
                method_name: "tensorflow/serving/predict",
            },
        )]),
    }
}
