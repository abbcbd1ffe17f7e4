//! `POST /v1/models/{name}[/versions/{v}]:explain` (KServe V1's verb): Integrated Gradients
//! attributions per instance.
//!
//! A verb of the models route (declared once, predict scope, in `api::groups`; `predict::verb`
//! hands `:explain` here). The handler decodes — the instances exactly as `:predict` does,
//! the baseline as one more instance — calls the serving core (`serving::explain`, which
//! runs the math on a compute thread) and encodes the answer. See docs/explain.md.

use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{Map, Value};

use super::decode::{decode_predict, InputSpec};
use super::error::ApiError;
use super::openapi::{ExplainErrors, ModelPath, Timeout, VersionPath};
use super::respond;
use super::types::{Attributions, ExplainRequest, ExplainResponse, ExplanationView, Nested};
use crate::error::Error;
use crate::serving::explain::{ExplainInput, ExplainLimits};
use crate::serving::Rows;
use crate::state::AppState;

/// `POST /v1/models/{name}:explain` (served by `predict::verb`).
#[utoipa::path(
    post,
    path = "/v1/models/{name}:explain",
    operation_id = "explain",
    tag = "serving",
    summary = "Why the default version answered so: Integrated Gradients per input column (KServe V1's explain)",
    params(ModelPath, Timeout),
    request_body = ExplainRequest,
    responses((status = 200, body = ExplainResponse), ExplainErrors),
)]
#[expect(dead_code, reason = "describes a verb that `predict::verb` serves")]
fn explain() {}

/// `POST /v1/models/{name}/versions/{version}:explain` (served by `predict::version_verb`).
#[utoipa::path(
    post,
    path = "/v1/models/{name}/versions/{version}:explain",
    operation_id = "version_explain",
    tag = "serving",
    summary = "Explain one version's answers",
    params(VersionPath, Timeout),
    request_body = ExplainRequest,
    responses((status = 200, body = ExplainResponse), ExplainErrors),
)]
#[expect(
    dead_code,
    reason = "describes a verb that `predict::version_verb` serves"
)]
fn version_explain() {}

/// The keys of an `:explain` body that are not `:predict`'s.
const EXPLAIN_KEYS: [&str; 3] = ["target", "steps", "baseline"];

pub(super) async fn handle(
    state: &AppState,
    name: &str,
    version: Option<u64>,
    timeout: Option<Duration>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let serving = state.serving();
    let lv = serving.version(name, version)?;
    let mut fields: Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::from(Error::InvalidInput(format!("expected a JSON object: {e}")))
            }
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ApiError::MalformedJson(e.to_string()),
        })?;
    if let Some(other) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "instances" | "inputs" | "signature_name"))
        .filter(|k| !EXPLAIN_KEYS.contains(&k.as_str()))
    {
        return Err(Error::InvalidInput(format!(
            r#"unknown field "{other}": expected "instances" or "inputs" (and optionally "target", "steps", "baseline", "signature_name")"#
        ))
        .into());
    }
    let target = match fields.remove("target") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        // Invented labels are "0", "1", …: a number names them too.
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(Error::InvalidInput(format!(
                "target: expected a class label (a string), got {other}"
            ))
            .into())
        }
    };
    let steps = match fields.remove("steps") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            return Err(Error::InvalidInput(format!(
                "steps: expected a positive integer, got {other}"
            ))
            .into())
        }
    };
    let baseline = fields.remove("baseline").filter(|b| !b.is_null());
    let model = &lv.layers()?.model;
    let spec = InputSpec::of(model).with_max_rows(serving.max_rows());
    let body = serde_json::to_vec(&fields).expect("JSON values serialize");
    let decoded = decode_predict(&body, &spec)?;
    let baseline = baseline.map(|b| decode_baseline(model, b)).transpose()?;
    let input = ExplainInput {
        rows: Rows {
            data: decoded.rows,
            n_rows: decoded.n_rows,
        },
        baseline,
        target,
        steps,
    };
    let limits = ExplainLimits {
        max_points: state.config.api.max_explain_points,
        threads: state.config.registry.threads,
    };
    let explained = serving
        .explain(&lv, input, limits, timeout, &tracing::Span::current())
        .await?;
    let shape = explained.shape();
    let columns = explained.columns();
    let explanations = explained
        .rows()
        .iter()
        .map(|a| ExplanationView {
            target: explained.target_name(a),
            prediction: a.prediction,
            baseline_prediction: a.baseline_prediction,
            attributions: match columns {
                Some(names) => Attributions::Named {
                    names,
                    values: &a.attributions,
                },
                None => Attributions::Shaped(Nested {
                    data: &a.attributions,
                    shape: &shape,
                }),
            },
            completeness_residual: a.residual(),
            steps: a.steps,
        })
        .collect();
    let body = serde_json::to_vec(&ExplainResponse {
        method: "integrated_gradients",
        baseline: explained.baseline,
        explanations,
        warnings: &decoded.warnings,
    })
    .expect("responses serialize");
    let mut res = respond::json(body);
    respond::timing_headers(
        &mut res,
        &crate::serving::Timing {
            queue: Duration::ZERO,
            compute: explained.compute,
            batch_rows: explained.rows().len(),
        },
    );
    Ok(res)
}

/// The baseline as one instance of model input, decoded as `instances`' entries are; its
/// errors name `baseline`.
fn decode_baseline(model: &crate::model::Model, baseline: Value) -> Result<Vec<f32>, ApiError> {
    let spec = InputSpec::of(model).with_max_rows(1);
    let body = serde_json::to_vec(&serde_json::json!({ "instances": [baseline] }))
        .expect("JSON values serialize");
    match decode_predict(&body, &spec) {
        Ok(d) => Ok(d.rows),
        Err(ApiError::Serving(Error::InvalidInput(m))) => {
            Err(Error::InvalidInput(m.replacen("instances[0]", "baseline", 1)).into())
        }
        Err(e) => Err(e),
    }
}
