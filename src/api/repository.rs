//! Model management: Triton's repository extension (`/v2/repository/…`: index, load,
//! unload) and kiln's upload and delete of versions. HTTP only: the model store validates,
//! publishes and deletes; the registry loads and unloads.
//!
//! Deleting drains rather than refuses: the version leaves the store at once, the registry
//! stops routing new requests to it, and requests already running on it finish on the loaded
//! copy before it is dropped.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};

use super::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{check_name, parse_version, refuse_verb};
use super::openapi::{
    DeleteErrors, LoadErrors, ModelPath, UnloadErrors, UploadErrors, VersionPath,
};
use super::types::ModelUploadForm;
use crate::error::Error;
use crate::registry::VersionState;
use crate::state::AppState;
use crate::store::{validate_and_publish, ModelFiles};

/// The upload's multipart part names (also accepted: `spec`, `weights`).
const SPEC_PART: &str = "model.json";
const WEIGHTS_PART: &str = "model.safetensors";

fn triton_state(s: &VersionState) -> &'static str {
    match s {
        VersionState::Available(_) => "READY",
        VersionState::Loading => "LOADING",
        VersionState::Failed(_) | VersionState::End => "UNAVAILABLE",
    }
}

/// One model version in the repository index.
#[derive(Serialize, ToSchema)]
pub struct RepositoryIndexView {
    pub name: String,
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why the version is unavailable; empty otherwise.
    pub reason: String,
}

/// A model's state after `load` or `unload`.
#[derive(Serialize, ToSchema)]
pub struct RepositoryModelResponse {
    pub name: String,
    /// `READY` after a load, `UNAVAILABLE` after an unload.
    pub state: &'static str,
    /// The version requests without a version go to (after a load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_version: Option<String>,
}

/// The version an upload published.
#[derive(Serialize, ToSchema)]
pub struct UploadResponse {
    pub name: String,
    pub version: String,
    /// The version's state once the registry has seen it (`AVAILABLE` normally).
    pub state: &'static str,
}

/// `POST /v2/repository/index`: every model version with its state and the reason.
#[utoipa::path(
    post,
    path = "/v2/repository/index",
    operation_id = "repository_index",
    tag = "repository",
    summary = "Every model version with its state and the reason (Triton's repository index)",
    responses((status = 200, body = Vec<RepositoryIndexView>)),
)]
pub async fn index(State(state): State<AppState>) -> Json<Vec<RepositoryIndexView>> {
    Json(index_of(&state))
}

/// Every model version with its state and the reason (REST and gRPC).
pub(crate) fn index_of(state: &AppState) -> Vec<RepositoryIndexView> {
    let mut out = Vec::new();
    for m in state.registry.list() {
        for (v, s) in &m.versions {
            let reason = match s {
                VersionState::Failed(e) => e.clone(),
                VersionState::End => "unloaded".into(),
                VersionState::Available(_) | VersionState::Loading => String::new(),
            };
            out.push(RepositoryIndexView {
                name: m.name.clone(),
                version: v.to_string(),
                state: triton_state(s),
                reason,
            });
        }
    }
    out
}

/// `POST /v2/repository/models/{name}/load`
#[utoipa::path(
    post,
    path = "/v2/repository/models/{name}/load",
    operation_id = "load_model",
    tag = "repository",
    summary = "Load (or reload) a model's versions from the models directory",
    params(ModelPath),
    responses((status = 200, body = RepositoryModelResponse), LoadErrors),
)]
pub async fn load(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RepositoryModelResponse>, ApiError> {
    Ok(Json(load_named(&state, name).await?))
}

/// Loads (or reloads) a model's versions; an error when none of them loads (REST and gRPC).
pub(crate) async fn load_named(
    state: &AppState,
    name: String,
) -> Result<RepositoryModelResponse, ApiError> {
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
    Ok(RepositoryModelResponse {
        name,
        state: "READY",
        default_version: view.default_version.map(|v| v.to_string()),
    })
}

/// `POST /v2/repository/models/{name}/unload`
#[utoipa::path(
    post,
    path = "/v2/repository/models/{name}/unload",
    operation_id = "unload_model",
    tag = "repository",
    summary = "Unload a model: its requests in flight finish, new ones are refused",
    params(ModelPath),
    responses((status = 200, body = RepositoryModelResponse), UnloadErrors),
)]
pub async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RepositoryModelResponse>, ApiError> {
    Ok(Json(unload_named(&state, name).await?))
}

/// Unloads a model: its requests in flight finish, new ones are refused (REST and gRPC).
pub(crate) async fn unload_named(
    state: &AppState,
    name: String,
) -> Result<RepositoryModelResponse, ApiError> {
    check_name(&name)?;
    state.registry.unload_model(&name).await?;
    Ok(RepositoryModelResponse {
        name,
        state: "UNAVAILABLE",
        default_version: None,
    })
}

/// `POST /v1/models/{name}/versions` (multipart: `model.json` + `model.safetensors`): the
/// version is loaded and run once before it is published, then answered with its number.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/versions",
    operation_id = "upload_version",
    tag = "repository",
    summary = "Upload a new version: validated (loaded and run once), then published",
    params(ModelPath),
    request_body(content = ModelUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = UploadResponse, headers(("location" = String, description = "The new version's URL"))),
        UploadErrors,
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    // No multipart content type, or one without a boundary: our error shape, not axum's text.
    let mut form = form.map_err(|e| {
        Error::InvalidInput(format!(
            "{}: send multipart/form-data (with its boundary) holding '{SPEC_PART}' and '{WEIGHTS_PART}'",
            e.body_text()
        ))
    })?;
    let (mut spec, mut weights) = (None, None);
    // A text model's config.json and tokenizer.json (docs/text-models.md).
    let mut extra = std::collections::BTreeMap::new();
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
            SPEC_PART | "spec" => spec = Some(bytes),
            WEIGHTS_PART | "weights" => weights = Some(bytes),
            other => match crate::store::EXTRA_FILES.iter().find(|f| **f == other) {
                Some(file) => {
                    extra.insert(*file, bytes);
                }
                None => {
                    return Err(Error::InvalidInput(format!(
                        "unexpected part '{other}': send '{SPEC_PART}' and '{WEIGHTS_PART}' (and a text model's 'config.json' and 'tokenizer.json')"
                    ))
                    .into())
                }
            },
        }
    }
    let (Some(spec), Some(weights)) = (spec, weights) else {
        return Err(Error::InvalidInput(format!(
            "the upload needs two parts: '{SPEC_PART}' and '{WEIGHTS_PART}'"
        ))
        .into());
    };
    let mut files = ModelFiles::new(spec, weights);
    files.extra = extra;
    let published = validate_and_publish(&*state.models, &name, files)
        .await
        .map_err(Error::from)?;
    let version = published.version;
    // Published is published: a load that cannot even start is the log's, not the client's.
    let st = match state.registry.load_version(&name, version).await {
        Ok(s) => s.name(),
        Err(e) => {
            tracing::error!(model = %name, version, error = %e, "the uploaded version cannot be loaded");
            "END"
        }
    };
    tracing::info!(model = %name, version, "model version uploaded");
    let location = format!("/v1/models/{name}/versions/{version}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(UploadResponse {
            name,
            version: version.to_string(),
            state: st,
        }),
    )
        .into_response())
}

/// A multipart body that stalled is 408; anything else wrong with it is the client's 400.
fn multipart_error(e: &axum::extract::multipart::MultipartError, at: &str) -> ApiError {
    match crate::server::body::timed_out(e) {
        Some(t) => ApiError::BodyTimeout(t),
        None => Error::InvalidInput(format!("{at}: {e}")).into(),
    }
}

/// `DELETE /v1/models/{name}/versions/{version}`
#[utoipa::path(
    delete,
    path = "/v1/models/{name}/versions/{version}",
    operation_id = "delete_version",
    tag = "repository",
    summary = "Delete a version: new requests stop at once, requests in flight finish",
    params(VersionPath),
    responses((status = 204, description = "Deleted"), DeleteErrors),
)]
pub async fn delete_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    refuse_verb("DELETE", &format!("/v1/models/{name}/versions/"), &version)?;
    check_name(&name)?;
    let v = parse_version(&name, &version)?;
    state
        .models
        .delete_version(&name, v)
        .await
        .map_err(Error::from)?;
    state.registry.refresh_model(&name).await?;
    tracing::info!(model = %name, version = v, "model version deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/models/{name}`: every version.
#[utoipa::path(
    delete,
    path = "/v1/models/{name}",
    operation_id = "delete_model",
    tag = "repository",
    summary = "Delete a model and every version (drained, as a version is)",
    params(ModelPath),
    responses((status = 204, description = "Deleted"), DeleteErrors),
)]
pub async fn delete_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    refuse_verb("DELETE", "/v1/models/", &name)?;
    check_name(&name)?;
    state
        .models
        .delete_model(&name)
        .await
        .map_err(Error::from)?;
    state.registry.refresh_model(&name).await?;
    tracing::info!(model = %name, "model deleted");
    Ok(StatusCode::NO_CONTENT)
}
