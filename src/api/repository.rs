//! Model management: Triton's repository extension (`/v2/repository/…`: index, load,
//! unload) and kiln's upload and delete of versions.
//!
//! Deleting drains rather than refuses: the version directory disappears at once (renamed,
//! then removed), the registry stops routing new requests to it, and requests already
//! running on it finish on the loaded copy before it is dropped.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{check_name, parse_version};
use crate::error::Error;
use crate::model::{Model, SPEC_FILE, WEIGHTS_FILE};
use crate::registry::VersionState;
use crate::state::AppState;

fn triton_state(s: &VersionState) -> &'static str {
    match s {
        VersionState::Available(_) => "READY",
        VersionState::Loading => "LOADING",
        VersionState::Failed(_) | VersionState::End => "UNAVAILABLE",
    }
}

/// `POST /v2/repository/index`: every model version with its state and the reason.
pub async fn index(State(state): State<AppState>) -> Json<Vec<Value>> {
    let mut out = Vec::new();
    for m in state.registry.list() {
        for (v, s) in &m.versions {
            let reason = match s {
                VersionState::Failed(e) => e.clone(),
                VersionState::End => "unloaded".into(),
                VersionState::Available(_) | VersionState::Loading => String::new(),
            };
            out.push(json!({"name": m.name, "version": v.to_string(), "state": triton_state(s), "reason": reason}));
        }
    }
    Json(out)
}

/// `POST /v2/repository/models/{name}/load`
pub async fn load(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    state.registry.load_model(&name).await?;
    let view = state.registry.view(&name)?;
    if view.default_version.is_none() {
        let reasons: Vec<String> = view
            .versions
            .iter()
            .filter_map(|(v, s)| s.error().map(|e| format!("version {v}: {e}")))
            .collect();
        return Err(Error::InvalidModel(format!(
            "model '{name}' did not load: {}",
            reasons.join("; ")
        ))
        .into());
    }
    Ok(Json(
        json!({"name": name, "state": "READY", "default_version": view.default_version.map(|v| v.to_string())}),
    ))
}

/// `POST /v2/repository/models/{name}/unload`
pub async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    state.registry.unload_model(&name).await?;
    Ok(Json(json!({"name": name, "state": "UNAVAILABLE"})))
}

/// `POST /v1/models/{name}/versions` (multipart: `model.json` + `model.safetensors`): the
/// version is loaded and run once before it is published, then answered with its number.
pub async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let (mut spec, mut weights) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, "multipart body"))?
    {
        let key = field
            .file_name()
            .or(field.name())
            .unwrap_or_default()
            .to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| multipart_error(&e, &format!("multipart part '{key}'")))?;
        match key.as_str() {
            SPEC_FILE | "spec" => spec = Some(bytes),
            WEIGHTS_FILE | "weights" => weights = Some(bytes),
            other => {
                return Err(Error::InvalidInput(format!(
                    "unexpected part '{other}': send '{SPEC_FILE}' and '{WEIGHTS_FILE}'"
                ))
                .into())
            }
        }
    }
    let (Some(spec), Some(weights)) = (spec, weights) else {
        return Err(Error::InvalidInput(format!(
            "the upload needs two parts: '{SPEC_FILE}' and '{WEIGHTS_FILE}'"
        ))
        .into());
    };
    let models_dir = state.config.models_dir.clone();
    let model_name = name.clone();
    let version = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
        let device = candle_core::Device::Cpu;
        let text = std::str::from_utf8(&spec)
            .map_err(|_| Error::InvalidModel(format!("{SPEC_FILE} is not UTF-8")))?;
        let parsed = crate::model::format::ModelSpec::from_json(text)
            .map_err(|m| Error::InvalidModel(format!("{SPEC_FILE}: {m}")))?;
        let tensors = candle_core::safetensors::load_buffer(&weights, &device).map_err(|e| {
            Error::InvalidModel(format!(
                "{WEIGHTS_FILE} is not a valid safetensors file: {e}"
            ))
        })?;
        let model = Model::from_tensors(parsed, tensors, &device)
            .map_err(|e| Error::InvalidModel(e.to_string()))?;
        model
            .warm_up()
            .map_err(|e| Error::InvalidModel(e.to_string()))?;
        crate::training::publish::publish_files(&models_dir, &model_name, &spec, &weights, "upload")
            .map_err(|e| Error::Internal(e.to_string()))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    state.registry.refresh().await;
    let st = state
        .registry
        .view(&name)
        .ok()
        .and_then(|v| {
            v.versions
                .into_iter()
                .find(|(n, _)| *n == version)
                .map(|(_, s)| s.name())
        })
        .unwrap_or("END");
    tracing::info!(model = %name, version, "model version uploaded");
    let location = format!("/v1/models/{name}/versions/{version}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(json!({"name": name, "version": version.to_string(), "state": st})),
    )
        .into_response())
}

/// A multipart body that stalled is 408; anything else wrong with it is the client's 400.
fn multipart_error(e: &axum::extract::multipart::MultipartError, at: &str) -> Error {
    match crate::server::body::timed_out(e) {
        Some(t) => Error::BodyTimeout(t),
        None => Error::InvalidInput(format!("{at}: {e}")),
    }
}

/// Moves a directory out of the watcher's sight at once, then removes it.
fn remove_dir(models: &std::path::Path, dir: &std::path::Path, label: &str) -> Result<(), Error> {
    let trash = models.join(format!(".deleted-{label}-{}", std::process::id()));
    std::fs::rename(dir, &trash)
        .map_err(|e| Error::Internal(format!("removing {}: {e}", dir.display())))?;
    std::fs::remove_dir_all(&trash)
        .map_err(|e| Error::Internal(format!("removing {}: {e}", trash.display())))
}

/// `DELETE /v1/models/{name}/versions/{version}`
pub async fn delete_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    let v = parse_version(&name, &version)?;
    let models = state.config.models_dir.clone();
    let dir = models.join(&name).join(v.to_string());
    if !dir.is_dir() {
        return Err(Error::VersionNotFound {
            name,
            version,
            detail: String::new(),
        }
        .into());
    }
    let label = format!("{name}-{v}");
    tokio::task::spawn_blocking(move || remove_dir(&models, &dir, &label))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    state.registry.refresh().await;
    tracing::info!(model = %name, version = v, "model version deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/models/{name}`: every version.
pub async fn delete_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    let models = state.config.models_dir.clone();
    let dir = models.join(&name);
    if !dir.is_dir() {
        return Err(Error::ModelNotFound(name).into());
    }
    let registry = Arc::clone(&state.registry);
    let label = name.clone();
    tokio::task::spawn_blocking(move || remove_dir(&models, &dir, &label))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    registry.refresh().await;
    tracing::info!(model = %name, "model deleted");
    Ok(StatusCode::NO_CONTENT)
}
