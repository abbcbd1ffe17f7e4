//! `/v1/datasets`: streamed uploads (CSV or JSON records) answered with their profile, and
//! listing, reading and deleting them. Parsing runs on blocking threads, never on the runtime.

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::extract::State;

use super::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::openapi::{DatasetErrors, DatasetPath, DatasetUploadErrors, StoreErrors};
use crate::dataset::{DatasetError, DatasetInfo, Delimiter, Format, Profile, UploadOptions};
use crate::state::AppState;

/// A dataset as the API shows it: its metadata with the profile's fields inline.
#[derive(Serialize, ToSchema)]
pub struct DatasetView<'a> {
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<Delimiter>,
    /// When the upload finished: RFC 3339, UTC, milliseconds.
    pub created: &'a str,
    /// Bytes of the stored file, as uploaded.
    pub size: u64,
    #[serde(flatten)]
    pub profile: &'a Profile,
}

impl<'a> From<&'a DatasetInfo> for DatasetView<'a> {
    fn from(d: &'a DatasetInfo) -> Self {
        DatasetView {
            id: &d.id,
            name: d.name.as_deref(),
            format: d.format,
            delimiter: d.delimiter,
            created: &d.created,
            size: d.size,
            profile: &d.profile,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// A name to show with the dataset.
    #[param(nullable = false)]
    name: Option<String>,
    /// `csv` or `json`; default: from the content type, else detected from the bytes.
    #[param(value_type = Option<Format>, nullable = false)]
    format: Option<String>,
    /// CSV: `comma`, `semicolon` or `tab`; default: detected.
    #[param(value_type = Option<Delimiter>, nullable = false)]
    delimiter: Option<String>,
}

/// The upload's format from `?format=` or the content type; `None`: detect from the bytes.
fn format_of(q: &UploadQuery, headers: &HeaderMap) -> Result<Option<Format>, ApiError> {
    if let Some(f) = &q.format {
        return Ok(Some(Format::parse(f)?));
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let ct = ct.to_str().unwrap_or("");
    if let Some(f) = Format::from_media_type(ct) {
        return Ok(Some(f));
    }
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // What curl and generic clients send for a file without a declared type.
    if [
        "application/octet-stream",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]
    .contains(&essence.as_str())
    {
        Ok(None)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "{essence} (send text/csv or application/json)"
        )))
    }
}

/// `POST /v1/datasets`
#[utoipa::path(
    post,
    path = "/v1/datasets",
    operation_id = "upload_dataset",
    tag = "datasets",
    summary = "Upload a dataset (streamed), answered with its profile",
    params(UploadQuery),
    request_body(
        description = "CSV with a header line, or a JSON array of objects (one per row). \
            `application/octet-stream`, `text/plain` or no content type: detected from the bytes.",
        content(
            (String = "text/csv", example = "sepal_length,species\n5.1,setosa\n"),
            (Vec<Object> = "application/json", example = json!([{"sepal_length": 5.1, "species": "setosa"}])),
        ),
    ),
    responses(
        (status = 201, body = DatasetView, headers(("location" = String, description = "The dataset's URL"))),
        DatasetUploadErrors,
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    mut body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&q, &headers)?;
    let delimiter = q.delimiter.as_deref().map(Delimiter::parse).transpose()?;
    let limit = state.datasets.max_upload_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
    }
    let mut upload = state.datasets.begin_upload_async(UploadOptions {
        name: q.name,
        format,
        delimiter,
    })?;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                upload.abort().await;
                if let Some(bad) = super::decompress::bad_encoding(&e) {
                    return Err(ApiError::InvalidContentEncoding(bad.to_string()));
                }
                return Err(match crate::server::body::timed_out(&e) {
                    Some(t) => ApiError::BodyTimeout(t),
                    None => {
                        DatasetError::Invalid(format!("the upload was interrupted: {e}")).into()
                    }
                });
            }
        };
        if let Ok(data) = frame.into_data() {
            upload.write_chunk(data).await?;
        }
    }
    let info = upload.finish().await?;
    tracing::info!(dataset = %info.id, rows = info.profile.rows, bytes = info.size, "dataset uploaded");
    let location = format!("/v1/datasets/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(DatasetView::from(&info)),
    )
        .into_response())
}

#[derive(Serialize, ToSchema)]
pub struct DatasetListResponse<'a> {
    pub datasets: Vec<DatasetView<'a>>,
}

/// `GET /v1/datasets`
#[utoipa::path(
    get,
    path = "/v1/datasets",
    operation_id = "list_datasets",
    tag = "datasets",
    summary = "Every dataset with its profile",
    responses((status = 200, body = DatasetListResponse), StoreErrors),
)]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = state.datasets.run_blocking(|s| s.list()).await?;
    let views = all.iter().map(DatasetView::from).collect();
    Ok(Json(DatasetListResponse { datasets: views }).into_response())
}

/// `GET /v1/datasets/{id}`
#[utoipa::path(
    get,
    path = "/v1/datasets/{id}",
    operation_id = "get_dataset",
    tag = "datasets",
    summary = "One dataset with its profile",
    params(DatasetPath),
    responses((status = 200, body = DatasetView), DatasetErrors),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = state.datasets.run_blocking(move |s| s.get(&id)).await?;
    Ok(Json(DatasetView::from(&info)).into_response())
}

/// `DELETE /v1/datasets/{id}`: the file is removed.
#[utoipa::path(
    delete,
    path = "/v1/datasets/{id}",
    operation_id = "delete_dataset",
    tag = "datasets",
    summary = "Delete a dataset and its file",
    params(DatasetPath),
    responses((status = 204, description = "Deleted"), DatasetErrors),
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let shown = id.clone();
    state.datasets.run_blocking(move |s| s.delete(&id)).await?;
    tracing::info!(dataset = %shown, "dataset deleted");
    Ok(StatusCode::NO_CONTENT)
}
