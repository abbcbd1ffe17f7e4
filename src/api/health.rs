//! `/health/live` (the process answers) and `/health/ready` (every startup model has loaded
//! and warmed up, or failed with its status, and the server is not draining).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::types::HealthResponse;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    tag = "operations",
    summary = "The process answers",
    responses((status = 200, body = HealthResponse)),
)]
pub async fn live() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "live",
        reasons: Vec::new(),
    })
}

#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "ready",
    tag = "operations",
    summary = "Every startup model has loaded (or failed) and the server is not draining",
    responses(
        (status = 200, body = HealthResponse),
        (status = 503, description = "Not ready, with the reasons", body = HealthResponse),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let mut reasons = Vec::new();
    if state.health.is_draining() {
        reasons.push("the server is draining".to_owned());
    }
    if !state.registry.is_initial_load_done() {
        reasons.push("models found at startup are still loading".to_owned());
    }
    if reasons.is_empty() {
        // Still ready: predictions come from memory and go on; job, upload and repository
        // routes answer 503 until the dependency is back. Load balancers must not take
        // every replica out.
        let mut degraded = Vec::new();
        if let Some(e) = state.jobs.store_unavailable() {
            degraded.push(format!("the job database cannot be reached: {e}"));
        }
        if let Some(e) = state.registry.store_unavailable() {
            degraded.push(format!("the model store cannot be reached: {e}"));
        }
        if !degraded.is_empty() {
            return (
                StatusCode::OK,
                Json(HealthResponse {
                    status: "degraded",
                    reasons: degraded,
                }),
            );
        }
    }
    if reasons.is_empty() {
        (
            StatusCode::OK,
            Json(HealthResponse {
                status: "ready",
                reasons,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthResponse {
                status: "not_ready",
                reasons,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use crate::config::Config;
    use crate::registry::Registry;
    use crate::state::{AppState, Health, Shared};

    fn state(dir: &std::path::Path) -> AppState {
        let config = Arc::new(Config::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let models: Arc<dyn crate::store::ModelStore> =
            Arc::new(crate::store::LocalDir::new(dir.join("models")));
        let registry = Arc::new(Registry::new(
            config.registry.clone(),
            models.clone(),
            candle_core::Device::Cpu,
            metrics.clone(),
        ));
        let datasets = Arc::new(crate::dataset::DatasetStore::open(dir).unwrap());
        let store = crate::jobs::SqliteJobStore::open(&dir.join("kiln.db")).unwrap();
        let training = crate::config::TrainingConfig {
            data_dir: dir.to_owned(),
            ..config.training.clone()
        };
        let jobs = crate::jobs::JobManager::start(
            &training,
            crate::jobs::JobParts {
                store: Arc::new(store),
                datasets: datasets.clone(),
                registry: registry.clone(),
                models: models.clone(),
                metrics: metrics.clone(),
                checkpoint_store: None,
            },
        )
        .unwrap();
        AppState::new(Shared {
            registry,
            models,
            config,
            health: Arc::new(Health::default()),
            datasets,
            jobs,
            metrics,
            keys: None,
        })
    }

    async fn status(state: &AppState, path: &str) -> u16 {
        let req = Request::get(path).body(Body::empty()).unwrap();
        crate::api::router(state.clone())
            .oneshot(req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn ready_waits_for_the_startup_load_and_turns_503_when_draining() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        // The watcher has not finished its first scan: live but not ready.
        assert_eq!(status(&state, "/health/live").await, 200);
        assert_eq!(status(&state, "/health/ready").await, 503);
        state.registry.mark_initial_load_done();
        assert_eq!(status(&state, "/health/ready").await, 200);
        state.health.start_draining();
        assert_eq!(status(&state, "/health/ready").await, 503);
        assert_eq!(status(&state, "/health/live").await, 200);
    }
}
