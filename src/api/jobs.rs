//! `/v1/training-jobs`: submit (202 + Location), list with filters and pagination, show,
//! cancel, and follow a job's epochs as server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;

use super::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::extract::{refuse_verb, require_verb, JsonBody};
use super::openapi::{CancelErrors, JobErrors, JobListErrors, JobPath, SubmitErrors};
use crate::error::Error;
use crate::jobs::manager::valid_job_id;
use crate::jobs::store::rfc3339;
use crate::jobs::store::ParentFilter;
use crate::jobs::{JobDetails, JobEvent, JobFilter, JobManager, JobRecord, JobState};
use crate::model::format::Metrics;
use crate::preprocess::DataReport;
use crate::state::AppState;
use crate::training::search::TrialResult;
use crate::training::spec::{JobSpec, ResolvedSpec, TrialConfig};
use crate::training::trainer::EpochEvent;

/// A job as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct JobView<'a> {
    pub id: &'a str,
    pub state: JobState,
    pub model: &'a str,
    pub dataset: &'a str,
    pub target: &'a str,
    /// The published model version (succeeded jobs).
    pub version: Option<u64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub progress: ProgressView<'a>,
    /// Every epoch so far (`GET /v1/training-jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<EpochEvent>>)]
    pub history: Option<&'a [EpochEvent]>,
    /// What preparation did: rows, splits, per-column cleaning (once the job has run).
    #[schema(value_type = Option<serde_json::Value>)]
    pub report: Option<&'a DataReport>,
    /// The final metrics (succeeded jobs).
    #[schema(value_type = Option<serde_json::Value>)]
    pub metrics: Option<&'a Metrics>,
    pub error: Option<&'a str>,
    /// The replica (`--replica-id`) that claimed the job last; absent until one has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<&'a str>,
    /// A search trial's job: the search job it belongs to (listed with `?parent=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<&'a str>,
    /// A search trial's job: its trial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial: Option<u32>,
    /// A search job's trials, each a child job, once queued (`GET /v1/training-jobs/{id}`
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trials: Option<Vec<TrialView<'a>>>,
    /// The spec with every default filled in.
    #[schema(value_type = ResolvedSpec)]
    pub spec: &'a ResolvedSpec,
}

/// One trial of a search, as its parent job shows it.
#[derive(Serialize, ToSchema)]
pub struct TrialView<'a> {
    /// The trial's candidate values.
    #[serde(flatten)]
    #[schema(value_type = TrialConfig)]
    pub config: Option<&'a TrialConfig>,
    /// The child job that runs the trial.
    pub job: &'a str,
    pub state: JobState,
    /// The replica that claimed it last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<&'a str>,
    /// Epochs done so far.
    pub epoch: u32,
    /// How the trial did, once ended: `outcome`, `score`, `epochs_run`, `metrics`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<&'a TrialResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// How far a job has come.
#[derive(Serialize, ToSchema)]
pub struct ProgressView<'a> {
    /// Epochs completed.
    pub epoch: u32,
    /// The most epochs the spec allows (early stopping may end the run sooner; a search or
    /// a refit counts its stages' epochs on from there).
    pub epochs: u32,
    /// `epoch / epochs`, at most 1, and 1 once the job has succeeded.
    pub fraction: f64,
    /// The last epoch's numbers (`null` before the first epoch ends).
    #[schema(value_type = Option<EpochEvent>)]
    pub last: Option<&'a EpochEvent>,
}

fn view<'a>(r: &'a JobRecord, history: Option<&'a [EpochEvent]>) -> JobView<'a> {
    view_with(r, history, None)
}

fn view_with<'a>(
    r: &'a JobRecord,
    history: Option<&'a [EpochEvent]>,
    children: Option<&'a [JobRecord]>,
) -> JobView<'a> {
    let trials = children.filter(|_| !r.spec.trials.is_empty()).map(|c| {
        c.iter()
            .map(|child| TrialView {
                config: r.spec.trials.iter().find(|t| Some(t.trial) == child.trial),
                job: &child.id,
                state: child.state,
                replica: child.replica.as_deref(),
                epoch: child.progress.as_ref().map_or(0, |p| p.epoch),
                result: child.trial_result.as_ref(),
                error: child.error.as_deref(),
            })
            .collect()
    });
    let epochs = r.spec.spec.training.epochs.unwrap_or(0);
    let epoch = r.progress.as_ref().map_or(0, |p| p.epoch);
    let progress = ProgressView {
        epoch,
        epochs,
        fraction: if r.state == JobState::Succeeded {
            1.0
        } else if epochs == 0 {
            0.0
        } else {
            (f64::from(epoch) / f64::from(epochs)).min(1.0)
        },
        last: r.progress.as_ref(),
    };
    JobView {
        id: &r.id,
        state: r.state,
        model: r.model(),
        dataset: &r.spec.spec.dataset,
        target: &r.spec.spec.target,
        version: r.version,
        created_at: rfc3339(r.created_ms),
        started_at: r.started_ms.map(rfc3339),
        finished_at: r.finished_ms.map(rfc3339),
        progress,
        history,
        report: r.report.as_ref(),
        metrics: r.metrics.as_ref(),
        error: r.error.as_deref(),
        replica: r.replica.as_deref(),
        parent: r.parent.as_deref(),
        trial: r.trial,
        trials,
        spec: &r.spec,
    }
}

/// `POST /v1/training-jobs`
#[utoipa::path(
    post,
    path = "/v1/training-jobs",
    operation_id = "submit_job",
    tag = "training",
    summary = "Submit a training job: checked against its dataset, then queued",
    request_body = JobSpec,
    responses(
        (status = 202, description = "Queued", body = JobView, headers(("location" = String, description = "The job's URL"))),
        SubmitErrors,
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let record = state.jobs.submit(&body).await?;
    let location = format!("/v1/training-jobs/{}", record.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view(&record, None)),
    )
        .into_response())
}

/// `GET /v1/training-jobs/{id}`
#[utoipa::path(
    get,
    path = "/v1/training-jobs/{id}",
    operation_id = "get_job",
    tag = "training",
    summary = "A job with its epoch history",
    params(JobPath),
    responses((status = 200, body = JobView), JobErrors),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    refuse_verb("GET", "/v1/training-jobs/", &id)?;
    let d: JobDetails = state.jobs.get(&id).await?;
    Ok(Json(view_with(&d.record, Some(&d.history), Some(&d.children))).into_response())
}

/// `POST /v1/training-jobs/{id}:cancel`
#[utoipa::path(
    post,
    path = "/v1/training-jobs/{id}:cancel",
    operation_id = "cancel_job",
    tag = "training",
    summary = "Cancel a queued or running job",
    params(JobPath),
    responses((status = 200, body = JobView), CancelErrors),
)]
pub async fn verb(
    State(state): State<AppState>,
    Path(segment): Path<String>,
) -> Result<Response, ApiError> {
    require_verb("/v1/training-jobs/", &segment, "GET,HEAD")?;
    let (id, verb) = segment.rsplit_once(':').unwrap_or((&segment, ""));
    if verb != "cancel" {
        return Err(
            Error::InvalidInput(format!("unknown method ':{verb}': expected :cancel")).into(),
        );
    }
    let record = state.jobs.cancel(id).await?;
    Ok(Json(view(&record, None)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `queued`, `running`, `waiting`, `succeeded`, `failed` or `cancelled`.
    #[param(value_type = Option<JobState>, nullable = false)]
    state: Option<String>,
    /// Only jobs that train this model.
    #[param(nullable = false)]
    model: Option<String>,
    /// A search job's id: list its trials' child jobs. `any`: every job, trials included.
    /// Absent: only jobs that are not a search's trials.
    #[param(pattern = "^(any|job_[0-9a-f]{16})$", nullable = false)]
    parent: Option<String>,
    /// Jobs per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    limit: Option<usize>,
    /// Page after this job id (the previous page's `next`).
    #[param(nullable = false)]
    after: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobListResponse<'a> {
    pub jobs: Vec<JobView<'a>>,
    /// Pass as `?after=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<&'a str>,
}

/// `GET /v1/training-jobs?state=&model=&parent=&limit=&after=` (newest first).
#[utoipa::path(
    get,
    path = "/v1/training-jobs",
    operation_id = "list_jobs",
    tag = "training",
    summary = "Jobs, newest first, filtered and paged",
    params(ListQuery),
    responses((status = 200, body = JobListResponse), JobListErrors),
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let job_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            Error::InvalidInput(format!(
                "state '{s}': expected queued, running, waiting, succeeded, failed or cancelled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(Error::InvalidInput("limit must be between 1 and 1000".into()).into());
    }
    let records = state
        .jobs
        .list(JobFilter {
            state: job_state,
            model: q.model,
            parent: match q.parent {
                None => ParentFilter::TopLevel,
                Some(p) if p == "any" => ParentFilter::Any,
                Some(p) if valid_job_id(&p) => ParentFilter::Of(p),
                Some(p) => {
                    return Err(Error::InvalidInput(format!(
                        "parent '{p}': expected a job id (job_ and 16 hex digits) or 'any'"
                    ))
                    .into())
                }
            },
            before: q.after,
            limit: limit + 1,
        })
        .await?;
    let more = records.len() > limit;
    let page = &records[..records.len().min(limit)];
    Ok(Json(JobListResponse {
        jobs: page.iter().map(|r| view(r, None)).collect(),
        next: if more {
            page.last().map(|r| r.id.as_str())
        } else {
            None
        },
    })
    .into_response())
}

/// The data of the `end` event: how the job ended.
#[derive(Serialize, ToSchema)]
pub struct JobEndView<'a> {
    pub state: JobState,
    pub model: &'a str,
    /// The published model version (succeeded jobs).
    pub version: Option<u64>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub metrics: Option<&'a Metrics>,
    pub error: Option<&'a str>,
}

/// The data of the `error` event: the job could not be read.
#[derive(Serialize, ToSchema)]
pub struct StreamErrorView {
    pub error: String,
}

fn json_event(kind: &'static str, data: &impl Serialize) -> Event {
    let data = serde_json::to_string(data).expect("event views serialize");
    Event::default().event(kind).data(data)
}

fn end_event(r: &JobRecord) -> Event {
    let end = JobEndView {
        state: r.state,
        model: r.model(),
        version: r.version,
        metrics: r.metrics.as_ref(),
        error: r.error.as_deref(),
    };
    json_event("end", &end)
}

struct Follow {
    jobs: JobManager,
    id: String,
    rx: Option<broadcast::Receiver<JobEvent>>,
    pending: VecDeque<Event>,
    /// Last epoch sent (live events repeat what the history replay already sent).
    last_epoch: u32,
    polls: u32,
    done: bool,
}

impl Follow {
    /// Replays stored epochs after `last_epoch`; ends the stream if the job is final.
    async fn catch_up(&mut self) {
        match self.jobs.get(&self.id).await {
            Ok(d) => {
                for e in &d.history {
                    if e.epoch > self.last_epoch {
                        self.last_epoch = e.epoch;
                        self.pending.push_back(json_event("epoch", e));
                    }
                }
                if d.record.state.is_final() {
                    self.pending.push_back(end_event(&d.record));
                    self.done = true;
                }
            }
            Err(e) => {
                let error = StreamErrorView {
                    error: e.to_string(),
                };
                self.pending.push_back(json_event("error", &error));
                self.done = true;
            }
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some((Ok(ev), self));
            }
            if self.done {
                return None;
            }
            let Some(rx) = self.rx.as_mut() else {
                // Not running (queued, or between a restart and its resume): poll the store.
                if self.polls > 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                self.polls += 1;
                self.rx = self.jobs.subscribe(&self.id);
                self.catch_up().await;
                continue;
            };
            match rx.recv().await {
                Ok(JobEvent::Epoch(e)) => {
                    if e.epoch > self.last_epoch {
                        self.last_epoch = e.epoch;
                        return Some((Ok(json_event("epoch", &*e)), self));
                    }
                }
                Ok(JobEvent::Ended) | Err(broadcast::error::RecvError::Closed) => {
                    // The job ended (or was requeued by a shutdown): report from the store.
                    self.rx = None;
                    self.catch_up().await;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
            }
        }
    }
}

/// `GET /v1/training-jobs/{id}/events`: one `epoch` event per epoch (those already done
/// first), then one `end` event with the final state, version and metrics.
#[utoipa::path(
    get,
    path = "/v1/training-jobs/{id}/events",
    operation_id = "job_events",
    tag = "training",
    summary = "Follow a job as server-sent events",
    description = "One `epoch` event per epoch, those already done first (data: `EpochEvent`), \
        then one `end` event when the job ends (data: `JobEndView`), and the stream closes. \
        `error` (data: `StreamErrorView`) if the job can no longer be read.",
    params(JobPath),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        JobErrors,
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // 404 for an unknown job before the stream starts.
    state.jobs.get(&id).await?;
    let follow = Follow {
        rx: state.jobs.subscribe(&id),
        jobs: state.jobs.clone(),
        id,
        pending: VecDeque::new(),
        last_epoch: 0,
        polls: 1,
        done: false,
    };
    let mut follow = follow;
    follow.catch_up().await;
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
