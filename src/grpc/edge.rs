//! What every gRPC call passes before its service: the API key check (the same keys and
//! scopes as REST, the key as `authorization: Bearer <key>` metadata) and the metrics. A
//! hand-written service, as REST's `access::Guard`: nothing is allocated for a call that is
//! let through but the boxed future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Request, Response};
use tonic::body::Body;
use tonic::Code;

use super::status;
use super::CallBody;
use crate::auth::Scope;
use crate::metrics::{GrpcLabels, GrpcMethodLabels, GrpcMetrics};
use crate::state::AppState;

/// A call kiln serves, by its path; its metric label and the scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    ServerLive,
    ServerReady,
    ModelReady,
    ServerMetadata,
    ModelMetadata,
    ModelInfer,
    RepositoryIndex,
    RepositoryModelLoad,
    RepositoryModelUnload,
    HealthCheck,
    HealthWatch,
    TfPredict,
    TfClassify,
    TfRegress,
    TfGetModelMetadata,
    TfGetModelStatus,
    /// Not a call kiln serves: answered UNIMPLEMENTED, unchecked (it reveals nothing), as
    /// REST's unmatched paths reach the 404 fallback.
    Other,
}

const CALLS: &[(Call, &str)] = &[
    (
        Call::ModelInfer,
        "/inference.GRPCInferenceService/ModelInfer",
    ),
    (
        Call::ServerLive,
        "/inference.GRPCInferenceService/ServerLive",
    ),
    (
        Call::ServerReady,
        "/inference.GRPCInferenceService/ServerReady",
    ),
    (
        Call::ModelReady,
        "/inference.GRPCInferenceService/ModelReady",
    ),
    (
        Call::ServerMetadata,
        "/inference.GRPCInferenceService/ServerMetadata",
    ),
    (
        Call::ModelMetadata,
        "/inference.GRPCInferenceService/ModelMetadata",
    ),
    (
        Call::RepositoryIndex,
        "/inference.GRPCInferenceService/RepositoryIndex",
    ),
    (
        Call::RepositoryModelLoad,
        "/inference.GRPCInferenceService/RepositoryModelLoad",
    ),
    (
        Call::RepositoryModelUnload,
        "/inference.GRPCInferenceService/RepositoryModelUnload",
    ),
    (
        Call::TfPredict,
        "/tensorflow.serving.PredictionService/Predict",
    ),
    (
        Call::TfClassify,
        "/tensorflow.serving.PredictionService/Classify",
    ),
    (
        Call::TfRegress,
        "/tensorflow.serving.PredictionService/Regress",
    ),
    (
        Call::TfGetModelMetadata,
        "/tensorflow.serving.PredictionService/GetModelMetadata",
    ),
    (
        Call::TfGetModelStatus,
        "/tensorflow.serving.ModelService/GetModelStatus",
    ),
    (Call::HealthCheck, "/grpc.health.v1.Health/Check"),
    (Call::HealthWatch, "/grpc.health.v1.Health/Watch"),
];

impl Call {
    fn of(path: &str) -> (Call, &'static str) {
        CALLS
            .iter()
            .find(|(_, p)| *p == path)
            .map_or((Call::Other, "other"), |&(c, p)| (c, &p[1..]))
    }

    /// What a key must allow; `None`: open. Health and liveness are open as REST's
    /// `/v2/health/*` are; model management needs `admin` as `/v2/repository/*` does.
    fn scope(self) -> Option<Scope> {
        match self {
            Call::ServerLive
            | Call::ServerReady
            | Call::HealthCheck
            | Call::HealthWatch
            | Call::Other => None,
            // As REST's /v1/models/… routes: predict and read models.
            Call::ModelReady
            | Call::ServerMetadata
            | Call::ModelMetadata
            | Call::ModelInfer
            | Call::TfPredict
            | Call::TfClassify
            | Call::TfRegress
            | Call::TfGetModelMetadata
            | Call::TfGetModelStatus => Some(Scope::Predict),
            Call::RepositoryIndex | Call::RepositoryModelLoad | Call::RepositoryModelUnload => {
                Some(Scope::Admin)
            }
        }
    }
}

/// The edge around kiln's gRPC services.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    state: AppState,
}

impl<S> Edge<S> {
    pub(super) fn new(inner: S, state: AppState) -> Self {
        Edge { inner, state }
    }
}

/// The call's status code: in the headers when the answer is only a status (every refusal
/// and error of a unary call), otherwise in the trailers after a message (OK).
fn code_of(res: &Response<Body>) -> Code {
    res.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

fn record(metrics: &GrpcMetrics, method: &'static str, code: Code, start: Instant) {
    let code = status::code_name(code);
    metrics
        .requests
        .get_or_create(&GrpcLabels { method, code })
        .inc();
    metrics
        .seconds
        .get_or_create(&GrpcMethodLabels { method })
        .observe(start.elapsed().as_secs_f64());
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> tower::Service<Request<CallBody>> for Edge<S>
where
    S: tower::Service<Request<CallBody>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<CallBody>) -> BoxFuture {
        let start = Instant::now();
        let (call, method) = Call::of(req.uri().path());
        let metrics = self.state.metrics.grpc.clone();
        if let (Some(scope), Some(keys)) = (call.scope(), &self.state.keys) {
            if let Err(refused) = crate::api::access::check(keys, scope, req.headers()) {
                let status = status::of(refused);
                record(&metrics, method, status.code(), start);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            record(&metrics, method, code_of(&res), start);
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_by_path() {
        assert_eq!(
            Call::of("/inference.GRPCInferenceService/ModelInfer"),
            (
                Call::ModelInfer,
                "inference.GRPCInferenceService/ModelInfer"
            )
        );
        assert_eq!(
            Call::of("/inference.GRPCInferenceService/Nope").0,
            Call::Other
        );
        assert_eq!(Call::ModelInfer.scope(), Some(Scope::Predict));
        assert_eq!(Call::RepositoryModelLoad.scope(), Some(Scope::Admin));
        assert_eq!(Call::HealthCheck.scope(), None);
    }
}
