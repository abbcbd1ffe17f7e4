//! `/health/live` (the process answers) and `/health/ready` (every startup model has loaded
//! and warmed up, or failed with its status, and the server is not draining).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::types::HealthResponse;
use crate::state::AppState;

pub async fn live() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "live",
        reasons: Vec::new(),
    })
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let mut reasons = Vec::new();
    if state.health.is_draining() {
        reasons.push("the server is draining".to_owned());
    }
    if !state.registry.is_initial_load_done() {
        reasons.push("models found at startup are still loading".to_owned());
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
