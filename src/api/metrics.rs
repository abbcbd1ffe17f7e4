//! `GET /metrics`: the Prometheus exposition. State gauges are refreshed at scrape time.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::jobs::JobState;
use crate::metrics::{ModelLabels, StateLabels};
use crate::state::AppState;

const VERSION_STATES: [&str; 4] = ["AVAILABLE", "LOADING", "FAILED", "END"];
const JOB_STATES: [JobState; 6] = [
    JobState::Queued,
    JobState::Running,
    JobState::Waiting,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics (OpenMetrics text): requests, batches, queues, models, jobs",
    responses((
        status = 200,
        description = "The exposition",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String,
    )),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.queue_depth.clear();
    let mut per_state = [0i64; VERSION_STATES.len()];
    for model in state.registry.list() {
        for (v, s) in &model.versions {
            if let Some(i) = VERSION_STATES.iter().position(|n| *n == s.name()) {
                per_state[i] += 1;
            }
            if let Some(lv) = s.loaded() {
                let labels = ModelLabels {
                    model: model.name.clone(),
                    version: v.to_string(),
                };
                m.queue_depth
                    .get_or_create(&labels)
                    .set(lv.queue_depth() as i64);
            }
        }
    }
    for (name, n) in VERSION_STATES.iter().zip(per_state) {
        m.models.get_or_create(&StateLabels { state: name }).set(n);
    }
    let counts = state.jobs.count_by_state().await;
    for s in JOB_STATES {
        let n = counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
        m.jobs
            .get_or_create(&StateLabels { state: s.as_str() })
            .set(n);
    }
    m.update_process();
    let body = m.encode();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
