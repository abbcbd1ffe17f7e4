//! `POST /v1/models/{name}[/versions/{v}]:predict | :classify | :regress`.
//!
//! extract → decode and validate (named features through the fitted preprocessing) →
//! the version's batcher → encode. The handler never runs the model.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;

use super::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use super::decode::{decode_examples, decode_predict, Decoded, InputSpec, Layout};
use super::error::ApiError;
use super::extract::{check_name, parse_version, split_verb, Deadline, JsonBody, Verb};
use super::openapi::{InferErrors, ModelPath, Timeout, VersionPath};
use super::types::{
    ClassifyResponse, ExamplesRequest, Nested, PredictRequest, PredictResponse, RegressResponse,
};
use crate::batcher::Computed;
use crate::error::Error;
use crate::model::format::Task;
use crate::registry::LoadedVersion;
use crate::state::AppState;

pub use super::extract::TIMEOUT_HEADER;

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
    let lv = state.registry.get(name, version)?;
    let timeout = timeout.unwrap_or(lv.batcher.config().request_timeout);
    check_task(&lv, verb)?;
    let max_rows = state.config.api.max_rows_per_request;
    let decoded = if body.len() > BLOCKING_DECODE_BYTES {
        let lv2 = lv.clone();
        tokio::task::spawn_blocking(move || decode(&lv2, verb, &body, max_rows))
            .await
            .map_err(|e| Error::Forward(format!("decoder task failed: {e}")))??
    } else {
        decode(&lv, verb, &body, max_rows)?
    };
    let computed = compute(state, &lv, decoded.rows, decoded.n_rows, timeout).await?;
    Ok(encode(
        &lv,
        verb,
        decoded.layout,
        decoded.n_rows,
        &decoded.warnings,
        computed,
    ))
}

/// A request's rows through its version's batcher (v1 and v2 alike, so they share one
/// queue): the row limit, the request span's fields, the computed batch.
pub(crate) async fn compute(
    state: &AppState,
    lv: &LoadedVersion,
    rows: Vec<f32>,
    n_rows: usize,
    timeout: Duration,
) -> Result<Computed, Error> {
    let limit = state.config.api.max_rows_per_request;
    if n_rows > limit {
        return Err(Error::TooManyRows {
            rows: n_rows,
            limit,
        });
    }
    let span = tracing::Span::current();
    span.record("model", lv.name.as_str());
    span.record("version", lv.version);
    let computed = lv
        .batcher
        .run(rows, n_rows, lv.model.spec().row_len(), timeout, &span)
        .await?;
    span.record("batch", computed.batch_rows);
    Ok(computed)
}

fn decode(
    lv: &LoadedVersion,
    verb: Verb,
    body: &[u8],
    max_rows: usize,
) -> Result<Decoded, ApiError> {
    let spec = InputSpec::of(&lv.model).with_max_rows(max_rows);
    match verb {
        Verb::Predict => decode_predict(body, &spec),
        Verb::Classify | Verb::Regress => decode_examples(body, &spec),
    }
}

fn check_task(lv: &LoadedVersion, verb: Verb) -> Result<(), Error> {
    let task = lv.model.spec().task;
    match (verb, task) {
        (Verb::Predict, _) | (Verb::Classify, Task::Classification) => Ok(()),
        (Verb::Regress, Task::Regression) if lv.model.output_len() == 1 => Ok(()),
        (Verb::Regress, Task::Regression) => Err(Error::InvalidInput(format!(
            "model '{}' outputs {} values per instance; :regress needs one: use :predict",
            lv.name,
            lv.model.output_len()
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

fn encode(
    lv: &LoadedVersion,
    verb: Verb,
    layout: Layout,
    n_rows: usize,
    warnings: &[String],
    mut c: Computed,
) -> Response {
    let model = &lv.model;
    let spec = model.spec();
    if spec.task == Task::Regression {
        if let Some(p) = &spec.preprocessing {
            for y in &mut c.outputs {
                *y = p.untransform_target(*y);
            }
        }
    }
    let body = match verb {
        Verb::Predict => {
            let mut shape = Vec::with_capacity(model.output_shape().len() + 1);
            shape.push(n_rows);
            shape.extend_from_slice(model.output_shape());
            let nested = Nested {
                data: &c.outputs,
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
            let labels: Vec<String> = if spec.labels.is_empty() {
                (0..model.output_len().max(2))
                    .map(|i| i.to_string())
                    .collect()
            } else {
                spec.labels.clone()
            };
            let per_row = model.output_len();
            let probabilities = model.outputs_probabilities();
            let results = c
                .outputs
                .chunks(per_row)
                .map(|row| {
                    let scores = class_scores(row, probabilities);
                    let mut pairs: Vec<(&str, f32)> =
                        labels.iter().map(String::as_str).zip(scores).collect();
                    pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
                    pairs
                })
                .collect();
            serde_json::to_vec(&ClassifyResponse { results, warnings })
        }
        Verb::Regress => serde_json::to_vec(&RegressResponse {
            results: &c.outputs,
            warnings,
        }),
    }
    .expect("responses serialize");
    let mut res = Response::new(axum::body::Body::from(body));
    let h = res.headers_mut();
    // Room for every header this answer gets (these, the edge's, hyper's): no regrowth.
    h.reserve(10);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(super::X_QUEUE_TIME, ms_header(c.queue_time));
    h.insert(super::X_INFERENCE_TIME, ms_header(c.compute_time));
    h.insert(super::X_BATCH_SIZE, HeaderValue::from(c.batch_rows));
    res
}

/// Scores per class: probabilities as the model gives them, a sigmoid's `[1-p, p]`, or a
/// softmax over logits.
pub(crate) fn class_scores(row: &[f32], probabilities: bool) -> Vec<f32> {
    match (row.len(), probabilities) {
        (1, true) => vec![1.0 - row[0], row[0]],
        (1, false) => {
            let p = 1.0 / (1.0 + (-row[0]).exp());
            vec![1.0 - p, p]
        }
        (_, true) => row.to_vec(),
        (_, false) => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        }
    }
}

/// Milliseconds with microsecond precision, as a header value (formatted on the stack).
pub fn ms_header(d: Duration) -> HeaderValue {
    use std::io::Write;
    let us = d.as_micros();
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    write!(w, "{}.{:03}", us / 1000, us % 1000).expect("48 bytes hold any duration");
    let len = 48 - w.len();
    HeaderValue::from_bytes(&buf[..len]).expect("a number is a valid header")
}

#[cfg(test)]
mod tests {
    use super::class_scores;

    #[test]
    fn ms_headers() {
        use std::time::Duration;
        assert_eq!(
            super::ms_header(Duration::from_micros(1_234_567)),
            "1234.567"
        );
        assert_eq!(super::ms_header(Duration::from_nanos(999)), "0.000");
        assert_eq!(super::ms_header(Duration::from_micros(42)), "0.042");
    }

    #[test]
    fn scores() {
        assert_eq!(class_scores(&[0.25], true), vec![0.75, 0.25]);
        let s = class_scores(&[0.0, 0.0], false);
        assert!((s[0] - 0.5).abs() < 1e-6);
        let s = class_scores(&[1.0, 2.0, 3.0], false);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6 && s[2] > s[1]);
    }
}
