//! `grpc.health.v1.Health`, so that Kubernetes gRPC probes and grpc-health-probe work:
//! SERVING when `/health/ready` would answer 200 (every startup model loaded or failed, not
//! draining), NOT_SERVING otherwise. Computed on each call from the same state, so it needs
//! nothing kept in step. Services: `""` (the server) and each one kiln serves ([`SERVICES`]).

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::state::AppState;

/// The services a health check may name: the server (`""`) and each one kiln serves.
const SERVICES: &[&str] = &[
    "",
    "inference.GRPCInferenceService",
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
];

/// How often a `Watch` looks at the readiness again.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

pub(super) struct Health {
    state: AppState,
}

impl Health {
    pub(super) fn new(state: AppState) -> Self {
        Health { state }
    }
}

/// Whether kiln is ready, as `/health/ready` decides it.
pub(super) fn ready(state: &AppState) -> bool {
    !state.health.is_draining() && state.registry.is_initial_load_done()
}

fn status_of(state: &AppState, service: &str) -> Option<ServingStatus> {
    if !SERVICES.contains(&service) {
        return None;
    }
    Some(if ready(state) {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    })
}

fn unknown(service: &str) -> Status {
    Status::not_found(format!(
        "unknown service '{service}': kiln answers for {SERVICES:?}"
    ))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        let status = status_of(&self.state, service).ok_or_else(|| unknown(service))?;
        Ok(Response::new(HealthCheckResponse {
            status: status.into(),
        }))
    }

    type WatchStream = WatchStream;

    /// The status at once, then each change (the protocol's Watch; an unknown service is
    /// SERVICE_UNKNOWN rather than an error). Once the server drains, the stream ends after
    /// saying NOT_SERVING: an open Watch must not hold the drain until its timeout.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let state = self.state.clone();
        let stream = futures_util::stream::unfold(None, move |last: Option<ServingStatus>| {
            let state = state.clone();
            let service = service.clone();
            async move {
                loop {
                    if last == Some(ServingStatus::NotServing) && state.health.is_draining() {
                        return None;
                    }
                    let now = status_of(&state, &service).unwrap_or(ServingStatus::ServiceUnknown);
                    if last != Some(now) {
                        let msg = HealthCheckResponse { status: now.into() };
                        return Some((Ok(msg), Some(now)));
                    }
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
