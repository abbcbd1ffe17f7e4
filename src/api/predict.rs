//! `POST /v1/models/{name}[/versions/{v}]:predict | :classify | :regress`.
//!
//! extract → decode and validate (named features through the fitted preprocessing) → the
//! serving core (the version's batcher) → encode the `Prediction`. The handler never runs
//! the model and never reads what its outputs mean from the spec.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;

use super::extract::Path;
use axum::response::Response;

use super::decode::{decode_examples, decode_predict, Decoded, InputSpec, Layout};
use super::error::ApiError;
use super::extract::{
    check_name, parse_version, require_verb, split_verb, Deadline, JsonBody, Verb,
};
use super::openapi::{InferErrors, ModelPath, Timeout, VersionPath};
use super::respond;
use super::types::{
    ClassifyResponse, ExamplesRequest, Nested, PredictRequest, PredictResponse, RegressResponse,
};
use crate::error::Error;
use crate::metrics::Protocol;
use crate::model::format::Task;
use crate::registry::LoadedVersion;
use crate::serving::{Prediction, Rows};
use crate::state::AppState;

/// Bodies above this size are decoded on a blocking thread, not on the async runtime.
const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// `POST /v1/models/{name}:{verb}`: `:predict`, `:classify` or `:regress` (documented
/// one by one below: axum routes the three as one path segment).
#[utoipa::path(
    post,
    path = "/v1/models/{name}:predict",
    operation_id = "predict",
    tag = "serving",
    summary = "Run the default version on instances (TF Serving's Predict)",
    params(ModelPath, Timeout),
    request_body = PredictRequest,
    responses((status = 200, body = PredictResponse), InferErrors),
)]
pub async fn verb(
    State(state): State<AppState>,
    Path(segment): Path<String>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    require_verb("/v1/models/", &segment, "GET,HEAD,DELETE")?;
    let (name, verb) = split_verb(&segment)?;
    check_name(name)?;
    handle(&state, name, None, verb, timeout, body).await
}

/// `POST /v1/models/{name}/versions/{version}:{verb}`
#[utoipa::path(
    post,
    path = "/v1/models/{name}/versions/{version}:predict",
    operation_id = "version_predict",
    tag = "serving",
    summary = "Run one version on instances",
    params(VersionPath, Timeout),
    request_body = PredictRequest,
    responses((status = 200, body = PredictResponse), InferErrors),
)]
pub async fn version_verb(
    State(state): State<AppState>,
    Path((name, segment)): Path<(String, String)>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // The path is written out only for the 405 (no allocation on the way to a prediction).
    require_verb(
        format_args!("/v1/models/{name}/versions/"),
        &segment,
        "GET,HEAD,DELETE",
    )?;
    let (version, verb) = split_verb(&segment)?;
    check_name(&name)?;
    let version = parse_version(&name, version)?;
    handle(&state, &name, Some(version), verb, timeout, body).await
}

// The other verbs, for the OpenAPI document only: `verb` and `version_verb` serve them.

#[utoipa::path(
    post,
    path = "/v1/models/{name}:classify",
    operation_id = "classify",
    tag = "serving",
    summary = "Score every class of a classifier, best first (TF Serving's Classify)",
    params(ModelPath, Timeout),
    request_body = ExamplesRequest,
    responses((status = 200, body = ClassifyResponse), InferErrors),
)]
#[expect(dead_code, reason = "describes a verb that `verb` serves")]
fn classify() {}

#[utoipa::path(
    post,
    path = "/v1/models/{name}:regress",
    operation_id = "regress",
    tag = "serving",
    summary = "One value per example of a regression model (TF Serving's Regress)",
    params(ModelPath, Timeout),
    request_body = ExamplesRequest,
    responses((status = 200, body = RegressResponse), InferErrors),
)]
#[expect(dead_code, reason = "describes a verb that `verb` serves")]
fn regress() {}

#[utoipa::path(
    post,
    path = "/v1/models/{name}/versions/{version}:classify",
    operation_id = "version_classify",
    tag = "serving",
    summary = "Score every class with one version",
    params(VersionPath, Timeout),
    request_body = ExamplesRequest,
    responses((status = 200, body = ClassifyResponse), InferErrors),
)]
#[expect(dead_code, reason = "describes a verb that `version_verb` serves")]
fn version_classify() {}

#[utoipa::path(
    post,
    path = "/v1/models/{name}/versions/{version}:regress",
    operation_id = "version_regress",
    tag = "serving",
    summary = "Regress with one version",
    params(VersionPath, Timeout),
    request_body = ExamplesRequest,
    responses((status = 200, body = RegressResponse), InferErrors),
)]
#[expect(dead_code, reason = "describes a verb that `version_verb` serves")]
fn version_regress() {}

async fn handle(
    state: &AppState,
    name: &str,
    version: Option<u64>,
    verb: Verb,
    timeout: Option<Duration>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    match verb {
        Verb::Explain => return super::explain::handle(state, name, version, timeout, body).await,
        Verb::Evaluate => {
            return super::evaluate::handle(state, name, version, timeout, body).await
        }
        Verb::Predict | Verb::Classify | Verb::Regress => {}
    }
    let serving = state.serving();
    let lv = serving.version(name, version)?;
    if lv.is_text() {
        return super::text::tf_predict(state, &lv, verb, timeout, &body).await;
    }
    check_task(&lv, verb)?;
    let max_rows = serving.max_rows();
    let decoded = if body.len() > BLOCKING_DECODE_BYTES {
        let lv2 = lv.clone();
        tokio::task::spawn_blocking(move || decode(&lv2, verb, &body, max_rows))
            .await
            .map_err(|e| Error::Forward(format!("decoder task failed: {e}")))??
    } else {
        decode(&lv, verb, &body, max_rows)?
    };
    let rows = Rows {
        data: decoded.rows,
        n_rows: decoded.n_rows,
    };
    let prediction = serving
        .predict(&lv, rows, timeout, &tracing::Span::current())
        .await?;
    let answer = encode(&prediction, verb, decoded.layout, &decoded.warnings);
    lv.observe_request(Protocol::Http, start);
    Ok(answer)
}

fn decode(
    lv: &LoadedVersion,
    verb: Verb,
    body: &[u8],
    max_rows: usize,
) -> Result<Decoded, ApiError> {
    let spec = InputSpec::of(&lv.layers()?.model).with_max_rows(max_rows);
    match verb {
        Verb::Predict | Verb::Explain | Verb::Evaluate => decode_predict(body, &spec),
        Verb::Classify | Verb::Regress => decode_examples(body, &spec),
    }
}

/// Refuses a verb the version's task does not answer (`:classify` of a regression model…);
/// gRPC's Classify and Regress ask it too.
pub(crate) fn check_task(lv: &LoadedVersion, verb: Verb) -> Result<(), Error> {
    let model = &lv.layers()?.model;
    match (verb, model.task()) {
        (Verb::Predict | Verb::Explain | Verb::Evaluate, _)
        | (Verb::Classify, Task::Classification) => Ok(()),
        (Verb::Regress, Task::Regression) if model.output_len() == 1 => Ok(()),
        (Verb::Regress, Task::Regression) => Err(Error::InvalidInput(format!(
            "model '{}' outputs {} values per instance; :regress needs one: use :predict",
            lv.name,
            model.output_len()
        ))),
        (Verb::Classify, Task::Regression) => Err(Error::InvalidInput(format!(
            "model '{}' is a regression model: use :regress or :predict",
            lv.name
        ))),
        (Verb::Regress, Task::Classification) => Err(Error::InvalidInput(format!(
            "model '{}' is a classifier: use :classify or :predict",
            lv.name
        ))),
    }
}

/// TF Serving's answers: the output as is (`:predict`, `:regress`; regression in original
/// units), or every class with its score, best first (`:classify`).
fn encode(p: &Prediction, verb: Verb, layout: Layout, warnings: &[String]) -> Response {
    let body = match verb {
        Verb::Predict | Verb::Explain | Verb::Evaluate => {
            let mut shape = Vec::with_capacity(p.output_shape().len() + 1);
            shape.push(p.n_rows());
            shape.extend_from_slice(p.output_shape());
            let nested = Nested {
                data: p.values(),
                shape: &shape,
            };
            let (predictions, outputs) = match layout {
                Layout::Row => (Some(nested), None),
                Layout::Columnar => (None, Some(nested)),
            };
            serde_json::to_vec(&PredictResponse {
                predictions,
                outputs,
                warnings,
            })
        }
        Verb::Classify => {
            let labels = p.labels();
            let results = (0..p.n_rows())
                .map(|row| {
                    let mut pairs: Vec<(&str, f32)> = labels
                        .iter()
                        .map(String::as_str)
                        .zip(p.scores(row))
                        .collect();
                    pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
                    pairs
                })
                .collect();
            serde_json::to_vec(&ClassifyResponse { results, warnings })
        }
        Verb::Regress => serde_json::to_vec(&RegressResponse {
            results: p.values(),
            warnings,
        }),
    }
    .expect("responses serialize");
    let mut res = respond::json(body);
    respond::timing_headers(&mut res, &p.timing);
    res
}
