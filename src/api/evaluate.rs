//! `POST /v1/models/{name}[/versions/{v}]:evaluate`: a version's loss and metrics on
//! labelled data — an uploaded dataset (`{"dataset": "ds_…"}`) or the data in the body (CSV,
//! or JSON records, as `POST /v1/datasets` takes them).
//!
//! A verb of the models route (declared once, predict scope, in `api::groups`;
//! `predict::verb` hands `:evaluate` here). The handler reads the table on a blocking thread,
//! then the serving core (`serving::evaluate`) encodes and computes it chunk by chunk through
//! the version's batcher. See docs/explain.md.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use serde::Deserialize;

use super::error::ApiError;
use super::openapi::{EvaluateErrors, ModelPath, Timeout, VersionPath};
use super::respond;
use super::types::{EvaluateRequest, EvaluateResponse};
use crate::dataset::{read_table, DatasetError, Table};
use crate::error::Error;
use crate::serving::evaluate::EvalData;
use crate::state::AppState;

/// `POST /v1/models/{name}:evaluate` (served by `predict::verb`).
#[utoipa::path(
    post,
    path = "/v1/models/{name}:evaluate",
    operation_id = "evaluate",
    tag = "serving",
    summary = "The default version's loss and metrics on labelled data",
    description = "The body is `{\"dataset\": \"ds_…\"}` (an uploaded dataset with the target \
        column), or the data itself: CSV (`text/csv`) or a JSON array of records, whose target \
        column is the one the model was trained on.",
    params(ModelPath, Timeout),
    request_body = EvaluateRequest,
    responses((status = 200, body = EvaluateResponse), EvaluateErrors),
)]
#[expect(dead_code, reason = "describes a verb that `predict::verb` serves")]
fn evaluate() {}

/// `POST /v1/models/{name}/versions/{version}:evaluate` (served by `predict::version_verb`).
#[utoipa::path(
    post,
    path = "/v1/models/{name}/versions/{version}:evaluate",
    operation_id = "version_evaluate",
    tag = "serving",
    summary = "One version's loss and metrics on labelled data",
    params(VersionPath, Timeout),
    request_body = EvaluateRequest,
    responses((status = 200, body = EvaluateResponse), EvaluateErrors),
)]
#[expect(
    dead_code,
    reason = "describes a verb that `predict::version_verb` serves"
)]
fn version_evaluate() {}

/// `{"dataset": …, "target": …}`, as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByDataset {
    dataset: String,
    #[serde(default)]
    target: Option<String>,
}

pub(super) async fn handle(
    state: &AppState,
    name: &str,
    version: Option<u64>,
    timeout: Option<Duration>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let serving = state.serving();
    let lv = serving.version(name, version)?;
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let (table, target) = match first {
        None => {
            return Err(Error::InvalidInput(
                "empty body: send {\"dataset\": \"ds_…\"}, or the data as CSV or JSON records"
                    .into(),
            )
            .into())
        }
        Some(b'{') => {
            let req: ByDataset = serde_json::from_slice(&body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::from(Error::InvalidInput(format!(
                    "expected {{\"dataset\": \"ds_…\"}} (and optionally \"target\"): {e}"
                ))),
                serde_json::error::Category::Syntax
                | serde_json::error::Category::Eof
                | serde_json::error::Category::Io => ApiError::MalformedJson(e.to_string()),
            })?;
            let datasets = state.datasets.clone();
            let id = req.dataset;
            let table = tokio::task::spawn_blocking(move || datasets.load_table(&id))
                .await
                .map_err(|e| Error::Internal(format!("dataset reader failed: {e}")))??;
            (table, req.target)
        }
        Some(_) => {
            let dir = state.config.training.data_dir.clone();
            let table = tokio::task::spawn_blocking(move || table_of_body(&dir, body))
                .await
                .map_err(|e| Error::Internal(format!("data reader failed: {e}")))??;
            (table, None)
        }
    };
    let data = EvalData::of(&lv.layers()?.model, &table, target.as_deref())?;
    let evaluation = serving
        .evaluate(&lv, data, timeout, &tracing::Span::current())
        .await?;
    let body = serde_json::to_vec(&EvaluateResponse::of(&lv.name, lv.version, &evaluation))
        .expect("responses serialize");
    Ok(respond::json(body))
}

/// Parses a body of CSV or JSON records as an upload is parsed (the reader works on files:
/// the body is written to a file of its own in the data directory, removed once read, and
/// dropped before the table is built, so the data is not held twice).
fn table_of_body(dir: &std::path::Path, body: Bytes) -> Result<Table, ApiError> {
    use rand::RngCore;
    let path: PathBuf = dir.join(format!(".evaluate-{:016x}", rand::rng().next_u64()));
    let io = |e: std::io::Error| Error::Internal(format!("{}: {e}", path.display()));
    let written = std::fs::write(&path, &body);
    drop(body);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(io(e).into());
    }
    let table = read_table(&path, None, None);
    let _ = std::fs::remove_file(&path);
    table.map_err(|e| match e {
        DatasetError::Invalid(m) => Error::InvalidInput(format!("the data: {m}")).into(),
        other @ (DatasetError::InvalidId(_)
        | DatasetError::TooLarge { .. }
        | DatasetError::NotFound(_)
        | DatasetError::Io { .. }
        | DatasetError::Corrupt { .. }
        | DatasetError::Internal(_)
        | DatasetError::Unavailable(_)) => ApiError::from(other),
    })
}
