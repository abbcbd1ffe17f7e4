//! The Open Inference Protocol (KServe "V2") over REST, with the binary tensor data
//! extension. V2 and v1 requests to one model version share its batcher queue.
//!
//! Inputs: a model without feature names takes one tensor `[N, …signature shape]`. A model
//! with feature names takes either one FP32/FP64 tensor `[N, F]` of raw feature values in the
//! signature's order, or one input per feature named as the feature (shape `[N]` or
//! `[N, 1]`, numeric, BOOL, or BYTES for categorical values — MLServer's pandas-codec
//! convention). Outputs: classifiers answer `probabilities` (FP32 `[N, C]`) and `label`
//! (BYTES `[N]`); other models answer `output` (FP32, in the target's original units).
//!
//! Handlers here; `decode` reads a request into model rows, `encode` writes a
//! [`Prediction`](crate::serving::Prediction) as the answer, and the serving core runs it.

// The tensor decoding and encoding are the protocol's, not REST's: the gRPC edge
// (`crate::grpc`) reads and writes its messages with them too.
pub(crate) mod decode;
pub(crate) mod encode;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::decode::InputSpec;
use super::error::ApiError;
use super::extract::{check_name, parse_version, Deadline, Path};
use super::openapi::{
    BinaryHeader, InferErrors, LookupErrors, ModelPath, ReadyErrors, Timeout, VersionPath,
};
use super::respond::batched;
use crate::error::Error;
use crate::metrics::Protocol;
use crate::model::format::InputDType;
use crate::preprocess::FeatureTransform;
use crate::registry::LoadedVersion;
use crate::serving::Rows;
use crate::state::AppState;

pub use decode::decode_infer;
use decode::InferRequest;
pub use encode::{
    BinaryDataView, InferParametersView, InferResponse, OutputTensorView, TensorDataView,
};
use encode::{Envelope, ModelOutput};

/// The header that splits a binary-extension body into its JSON part and tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
pub(crate) const PLATFORM: &str = "kiln_candle";

// === metadata, health ===

/// `GET /v2`: the server's name, version and protocol extensions.
#[derive(Serialize, ToSchema)]
pub struct ServerMetadataResponse {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

/// `GET /v2/health/live`
#[derive(Serialize, ToSchema)]
pub struct LiveResponse {
    pub live: bool,
}

/// `GET /v2/health/ready`: with the reasons when not ready.
#[derive(Serialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    pub reasons: Vec<String>,
}

/// `GET /v2`
#[utoipa::path(
    get,
    path = "/v2",
    operation_id = "v2_server_metadata",
    tag = "v2",
    summary = "Server name, version and protocol extensions",
    responses((status = 200, body = ServerMetadataResponse)),
)]
pub async fn server_metadata() -> Json<ServerMetadataResponse> {
    Json(ServerMetadataResponse {
        name: "kiln",
        version: env!("CARGO_PKG_VERSION"),
        extensions: &["binary_tensor_data", "model_repository"],
    })
}

/// `GET /v2/health/live`
#[utoipa::path(
    get,
    path = "/v2/health/live",
    operation_id = "v2_live",
    tag = "v2",
    summary = "The process answers",
    responses((status = 200, body = LiveResponse)),
)]
pub async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { live: true })
}

/// `GET /v2/health/ready`: the same readiness as `/health/ready`.
#[utoipa::path(
    get,
    path = "/v2/health/ready",
    operation_id = "v2_ready",
    tag = "v2",
    summary = "Ready: the startup models are loaded and the server is not draining",
    responses(
        (status = 200, body = ReadyResponse),
        (status = 503, description = "Not ready, with the reasons", body = ReadyResponse),
    ),
)]
pub async fn ready(state: State<AppState>) -> (StatusCode, Json<ReadyResponse>) {
    let (status, body) = super::health::ready(state).await;
    let ready = ReadyResponse {
        ready: status == StatusCode::OK,
        reasons: body.0.reasons,
    };
    (status, Json(ready))
}

/// The version a V2 request names (REST or gRPC): the name checked, the version parsed.
pub(crate) fn lookup(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedVersion>, Error> {
    check_name(name)?;
    let v = version.map(|v| parse_version(name, v)).transpose()?;
    state.serving().version(name, v)
}

/// `GET /v2/models/{name}[/versions/{version}]`: the protocol's model metadata.
#[derive(Serialize, ToSchema)]
pub struct ModelMetadataResponse {
    pub name: String,
    /// The versions that can answer now.
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadataView>,
    pub outputs: Vec<TensorMetadataView>,
}

/// One input or output tensor of a model.
#[derive(Serialize, ToSchema)]
pub struct TensorMetadataView {
    pub name: String,
    pub datatype: &'static str,
    /// With `-1` for the batch dimension.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`
#[derive(Serialize, ToSchema)]
pub struct ModelReadyResponse {
    pub name: String,
    pub ready: bool,
    /// Why the model cannot answer (only when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The protocol's model metadata of a version (REST's answer; gRPC converts it).
pub(crate) fn model_metadata(
    state: &AppState,
    lv: &LoadedVersion,
) -> Result<ModelMetadataResponse, Error> {
    let versions: Vec<String> = state
        .registry
        .view(&lv.name)
        .map(|v| {
            v.versions
                .iter()
                .filter(|(_, s)| s.loaded().is_some())
                .map(|(n, _)| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(text) = lv.text() {
        if text.model.is_classifier() {
            // A text classifier: texts (and second texts of pairs) in, scores and labels out.
            let mut inputs = vec![TensorMetadataView {
                name: "text".into(),
                datatype: "BYTES",
                shape: vec![-1],
            }];
            if text.model.spec().pairs
                || matches!(
                    text.model.spec().head,
                    Some(crate::text::format::Head::BertPooler)
                )
            {
                inputs.push(TensorMetadataView {
                    name: "text_pair".into(),
                    datatype: "BYTES",
                    shape: vec![-1],
                });
            }
            return Ok(ModelMetadataResponse {
                name: lv.name.clone(),
                versions,
                platform: PLATFORM,
                inputs,
                outputs: vec![
                    TensorMetadataView {
                        name: "probabilities".into(),
                        datatype: "FP32",
                        shape: batched(&[text.model.output_size()]),
                    },
                    TensorMetadataView {
                        name: "label".into(),
                        datatype: "BYTES",
                        shape: vec![-1],
                    },
                ],
            });
        }
        // A text model: texts in (BYTES), one embedding each out.
        return Ok(ModelMetadataResponse {
            name: lv.name.clone(),
            versions,
            platform: PLATFORM,
            inputs: vec![TensorMetadataView {
                name: "text".into(),
                datatype: "BYTES",
                shape: vec![-1],
            }],
            outputs: vec![TensorMetadataView {
                name: "embedding".into(),
                datatype: "FP32",
                shape: batched(&[text.model.hidden_size()]),
            }],
        });
    }
    let model = &lv.layers()?.model;
    let sig = model.signature();
    let dtype = match sig.dtype {
        InputDType::Float32 => "FP32",
        InputDType::Int64 => "INT64",
    };
    let mut inputs = vec![TensorMetadataView {
        name: "input".into(),
        datatype: dtype,
        shape: batched(&sig.raw_shape()),
    }];
    if let (Some(_), Some(p)) = (sig.preprocessed_features(), sig.preprocessing) {
        for f in &p.features {
            let datatype = match f {
                FeatureTransform::Numeric { .. } => "FP64",
                FeatureTransform::Categorical { .. } => "BYTES",
            };
            inputs.push(TensorMetadataView {
                name: f.name().to_owned(),
                datatype,
                shape: vec![-1],
            });
        }
    }
    let outputs = ModelOutput::all(model.task())
        .iter()
        .map(|o| TensorMetadataView {
            name: o.name().into(),
            datatype: o.datatype(),
            shape: batched(&o.shape(model)),
        })
        .collect();
    Ok(ModelMetadataResponse {
        name: lv.name.clone(),
        versions,
        platform: PLATFORM,
        inputs,
        outputs,
    })
}

/// `GET /v2/models/{name}`
#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    operation_id = "v2_model_metadata",
    tag = "v2",
    summary = "The default version's inputs and outputs as tensor metadata",
    params(ModelPath),
    responses((status = 200, body = ModelMetadataResponse), LookupErrors),
)]
pub async fn metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    let lv = lookup(&state, &name, None)?;
    Ok(Json(model_metadata(&state, &lv)?))
}

/// `GET /v2/models/{name}/versions/{version}`
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}",
    operation_id = "v2_version_metadata",
    tag = "v2",
    summary = "One version's inputs and outputs as tensor metadata",
    params(VersionPath),
    responses((status = 200, body = ModelMetadataResponse), LookupErrors),
)]
pub async fn version_metadata(
    State(state): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    let lv = lookup(&state, &name, Some(&v))?;
    Ok(Json(model_metadata(&state, &lv)?))
}

fn readiness(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<(StatusCode, Json<ModelReadyResponse>), ApiError> {
    check_name(name)?;
    let (status, error) = match lookup(state, name, version) {
        Ok(_) => (StatusCode::OK, None),
        Err(e @ (Error::ModelNotFound(_) | Error::VersionNotFound { .. })) => return Err(e.into()),
        Err(other) => (StatusCode::SERVICE_UNAVAILABLE, Some(other.to_string())),
    };
    let ready = ModelReadyResponse {
        name: name.to_owned(),
        ready: error.is_none(),
        error,
    };
    Ok((status, Json(ready)))
}

/// `GET /v2/models/{name}/ready`
#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    operation_id = "v2_model_ready",
    tag = "v2",
    summary = "Whether the default version can answer",
    params(ModelPath),
    responses(
        (status = 200, body = ModelReadyResponse),
        (status = 503, description = "Known but not ready, with the reason", body = ModelReadyResponse),
        ReadyErrors,
    ),
)]
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ModelReadyResponse>), ApiError> {
    readiness(&state, &name, None)
}

/// `GET /v2/models/{name}/versions/{version}/ready`
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}/ready",
    operation_id = "v2_version_ready",
    tag = "v2",
    summary = "Whether one version can answer",
    params(VersionPath),
    responses(
        (status = 200, body = ModelReadyResponse),
        (status = 503, description = "Known but not ready, with the reason", body = ModelReadyResponse),
        ReadyErrors,
    ),
)]
pub async fn version_ready(
    State(state): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ModelReadyResponse>), ApiError> {
    readiness(&state, &name, Some(&v))
}

// === inference ===

/// An infer body of any content type (the binary extension's is not JSON), read up to the
/// body limit, with its `inference-header-content-length` header: taken from the request
/// without copying its header map.
pub struct InferBody {
    json_len: Option<HeaderValue>,
    bytes: Bytes,
}

impl FromRequest<AppState> for InferBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json_len = req.headers().get(HEADER_LENGTH).cloned();
        let limit = state.config.api.body_limit;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| super::extract::body_error(&e, limit))?;
        Ok(InferBody { json_len, bytes })
    }
}

/// Decode → the serving core → encode.
async fn infer_on(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    timeout: Option<std::time::Duration>,
    body: InferBody,
) -> Result<Response, ApiError> {
    let start = std::time::Instant::now();
    let lv = lookup(state, name, version)?;
    let serving = state.serving();
    let req: InferRequest = decode::parse_request(body.json_len.as_ref(), &body.bytes)?;
    if lv.is_text() {
        return text_infer(state, &lv, req, timeout).await;
    }
    let model = &lv.layers()?.model;
    let spec = InputSpec::of(model).with_max_rows(serving.max_rows());
    let decoded = decode::to_rows(&spec, req.inputs)?;
    // Refused before anything is computed; only the outputs named are computed after.
    let selected = encode::select(
        model.task(),
        req.outputs.as_deref(),
        req.parameters.as_ref(),
    )?;
    let rows = Rows {
        data: decoded.rows,
        n_rows: decoded.n_rows,
    };
    let prediction = serving
        .predict(&lv, rows, timeout, &tracing::Span::current())
        .await?;
    let envelope = Envelope {
        model_name: &lv.name,
        model_version: lv.version,
        id: req.id,
        warnings: &decoded.warnings,
    };
    let answer = encode::answer(&prediction, envelope, &selected);
    lv.observe_request(Protocol::Http, start);
    Ok(answer)
}

/// A text model's V2 inference: a BYTES tensor of texts → `embedding`, FP32 `[N, size]`
/// (as JSON data; inputs longer than the model's maximum are refused, not truncated).
async fn text_infer(
    state: &AppState,
    lv: &LoadedVersion,
    req: InferRequest,
    timeout: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    if lv.text()?.model.is_classifier() {
        return text_classify(state, lv, req, timeout).await;
    }
    let start = std::time::Instant::now();
    if let Some(out) = req.outputs.iter().flatten().find(|o| o.name != "embedding") {
        return Err(Error::InvalidInput(format!(
            "output '{}': a text model answers 'embedding'",
            out.name
        ))
        .into());
    }
    let texts = decode::to_texts(req.inputs)?;
    let embeddings = state
        .serving()
        .embed(
            lv,
            crate::serving::text::TextRequest {
                texts,
                truncate: false,
                normalize: None,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let size = lv.text()?.model.hidden_size();
    let n = embeddings.vectors.len();
    let data: Vec<f32> = embeddings.vectors.concat();
    let mut answer = serde_json::json!({
        "model_name": lv.name,
        "model_version": lv.version.to_string(),
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [n, size], "data": data}],
    });
    if let Some(id) = req.id {
        answer["id"] = serde_json::Value::String(id);
    }
    let mut res = super::respond::json(serde_json::to_vec(&answer).expect("JSON values serialize"));
    super::respond::timing_headers(&mut res, &embeddings.timing);
    lv.observe_request(crate::metrics::Protocol::Http, start);
    Ok(res)
}

/// A text classifier's V2 inference: `text` (and `text_pair` for pairs), BYTES `[N]` →
/// `probabilities` FP32 `[N, classes]` and `label` BYTES `[N]` (the best class), or the
/// outputs the request names.
async fn text_classify(
    state: &AppState,
    lv: &LoadedVersion,
    req: InferRequest,
    timeout: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let start = std::time::Instant::now();
    let wanted: Vec<String> = match &req.outputs {
        Some(outs) if !outs.is_empty() => outs.iter().map(|o| o.name.clone()).collect(),
        _ => vec!["probabilities".into(), "label".into()],
    };
    if let Some(out) = wanted
        .iter()
        .find(|o| *o != "probabilities" && *o != "label")
    {
        return Err(Error::InvalidInput(format!(
            "output '{out}': a text classifier answers 'probabilities' and 'label'"
        ))
        .into());
    }
    let mut firsts = None;
    let mut seconds = None;
    for input in req.inputs {
        let slot = match input.name.as_str() {
            "text" => &mut firsts,
            "text_pair" => &mut seconds,
            other => {
                return Err(Error::InvalidInput(format!(
                    "input '{other}': a text classifier takes 'text' (and 'text_pair' for pairs)"
                ))
                .into())
            }
        };
        *slot = Some(decode::to_texts(vec![input])?);
    }
    let Some(firsts) = firsts else {
        return Err(Error::InvalidInput("the input 'text' is missing".into()).into());
    };
    let inputs: Vec<crate::serving::text::Sequence> = match seconds {
        None => firsts
            .into_iter()
            .map(crate::serving::text::Sequence::Single)
            .collect(),
        Some(seconds) if seconds.len() == firsts.len() => firsts
            .into_iter()
            .zip(seconds)
            .map(|(a, b)| crate::serving::text::Sequence::Pair(a, b))
            .collect(),
        Some(seconds) => {
            return Err(Error::InvalidInput(format!(
                "'text' holds {} texts and 'text_pair' {}",
                firsts.len(),
                seconds.len()
            ))
            .into())
        }
    };
    let p = state
        .serving()
        .classify_text(
            lv,
            crate::serving::text::PredictRequest {
                inputs,
                truncate: false,
                raw_scores: false,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let n = p.scores.len();
    let k = p.labels.len().max(p.scores.first().map_or(0, Vec::len));
    let outputs: Vec<serde_json::Value> = wanted
        .iter()
        .map(|name| {
            if name == "probabilities" {
                let data: Vec<f32> = p.scores.concat();
                let width = p.scores.first().map_or(k, Vec::len);
                serde_json::json!({"name": "probabilities", "datatype": "FP32", "shape": [n, width], "data": data})
            } else {
                let labels: Vec<&str> = p
                    .scores
                    .iter()
                    .map(|row| {
                        let best = if row.len() == 1 {
                            // One output (a sigmoid): the second label when over one half.
                            usize::from(row[0] > 0.5).min(p.labels.len().saturating_sub(1))
                        } else {
                            row.iter()
                                .enumerate()
                                .max_by(|a, b| a.1.total_cmp(b.1))
                                .map_or(0, |(i, _)| i)
                        };
                        p.labels.get(best).map_or("", String::as_str)
                    })
                    .collect();
                serde_json::json!({"name": "label", "datatype": "BYTES", "shape": [n], "data": labels})
            }
        })
        .collect();
    let mut answer = serde_json::json!({
        "model_name": lv.name,
        "model_version": lv.version.to_string(),
        "outputs": outputs,
    });
    if let Some(id) = req.id {
        answer["id"] = serde_json::Value::String(id);
    }
    let mut res = super::respond::json(serde_json::to_vec(&answer).expect("JSON values serialize"));
    super::respond::timing_headers(&mut res, &p.timing);
    lv.observe_request(crate::metrics::Protocol::Http, start);
    Ok(res)
}

/// `POST /v2/models/{name}/infer`
#[utoipa::path(
    post,
    path = "/v2/models/{name}/infer",
    operation_id = "v2_infer",
    tag = "v2",
    summary = "Run the default version (shares its batcher queue with v1 requests)",
    params(ModelPath, Timeout, BinaryHeader),
    request_body(
        description = "JSON, or with the binary extension: `application/octet-stream`, the \
            JSON part (its length in `Inference-Header-Content-Length`) followed by the tensors \
            whose `binary_data_size` it gives, in input order",
        content((InferRequest = "application/json"), ("application/octet-stream")),
    ),
    responses(
        (
            status = 200,
            description = "JSON, or `application/octet-stream` when outputs are sent as binary \
                data: the JSON part, then the tensors in output order",
            content((InferResponse = "application/json"), ("application/octet-stream")),
            headers(("inference-header-content-length" = usize, description = "Length of the JSON part (binary answers)")),
        ),
        InferErrors,
    ),
)]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Deadline(timeout): Deadline,
    body: InferBody,
) -> Result<Response, ApiError> {
    infer_on(&state, &name, None, timeout, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`
#[utoipa::path(
    post,
    path = "/v2/models/{name}/versions/{version}/infer",
    operation_id = "v2_version_infer",
    tag = "v2",
    summary = "Run one version",
    params(VersionPath, Timeout, BinaryHeader),
    request_body(
        description = "JSON, or with the binary extension: `application/octet-stream`, the \
            JSON part (its length in `Inference-Header-Content-Length`) followed by the tensors \
            whose `binary_data_size` it gives, in input order",
        content((InferRequest = "application/json"), ("application/octet-stream")),
    ),
    responses(
        (
            status = 200,
            description = "JSON, or `application/octet-stream` when outputs are sent as binary \
                data: the JSON part, then the tensors in output order",
            content((InferResponse = "application/json"), ("application/octet-stream")),
            headers(("inference-header-content-length" = usize, description = "Length of the JSON part (binary answers)")),
        ),
        InferErrors,
    ),
)]
pub async fn version_infer(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Deadline(timeout): Deadline,
    body: InferBody,
) -> Result<Response, ApiError> {
    infer_on(&state, &name, Some(&version), timeout, body).await
}
