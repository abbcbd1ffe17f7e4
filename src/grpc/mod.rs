//! The gRPC edge: the Open Inference Protocol's `inference.GRPCInferenceService`, TF
//! Serving's `tensorflow.serving.PredictionService` and `ModelService` ([`tf`]) and
//! `grpc.health.v1.Health`, on a listener of its own (`grpc_listen`, default `0.0.0.0:8081`).
//!
//! ```text
//! ModelInfer ─ edge (key + scope, metrics) ─ infer: decode (typed contents or raw bytes,
//!     checked by the V2 decoder REST uses) → Serving::predict (the same batcher queue as
//!     REST) → encode (the V2 outputs: typed contents or raw_output_contents)
//! ```
//!
//! Only the wire differs from REST's V2: the tensor checks, the outputs a model answers and
//! the metadata come from `api::v2`'s protocol-independent decode and encode, and every
//! error is mapped from the same error types ([`status`]). Runs on the runtime's tasks: one
//! per HTTP/2 connection (`serve`), one per call (hyper's executor).

mod edge;
mod health;
mod infer;
mod serve;
pub mod status;
mod tf;

/// The code generated from `proto/*.proto` (tools/protogen; docs/grpc.md): messages, the
/// service trait kiln implements and a client (for tests, benches and other Rust programs).
pub mod proto {
    /// `package inference;`: the Open Inference Protocol.
    #[allow(
        clippy::all,
        clippy::wildcard_enum_match_arm,
        clippy::uninlined_format_args,
        clippy::manual_let_else
    )]
    pub mod inference {
        include!("proto/inference.rs");
    }

    /// TensorFlow's messages (`package tensorflow;`: tensors, examples, signatures) and TF
    /// Serving's API (`tensorflow.serving`).
    #[allow(
        clippy::all,
        clippy::wildcard_enum_match_arm,
        clippy::uninlined_format_args,
        clippy::manual_let_else,
        clippy::doc_lazy_continuation
    )]
    pub mod tensorflow {
        include!("proto/tensorflow.rs");

        /// `package tensorflow.serving;`: PredictionService, ModelService.
        pub mod serving {
            include!("proto/tensorflow.serving.rs");
        }

        /// `package tensorflow.error;`: the status codes of a version's status.
        pub mod error {
            include!("proto/tensorflow.error.rs");
        }
    }

    /// The protobuf well-known types TF Serving's messages use (`Any`, `Int64Value`),
    /// generated rather than taken from prost-types.
    #[allow(clippy::all)]
    pub mod google {
        pub mod protobuf {
            include!("proto/google.protobuf.rs");
        }
    }
}

use std::convert::Infallible;

use tonic::service::Routes;

use crate::state::AppState;

pub use edge::Edge;
pub use serve::{serve_until, CallBody, Limits};

/// The service the gRPC listener serves: every gRPC service kiln has, behind the edge
/// (API keys, metrics). Request messages are limited to the REST body limit.
pub fn service(state: AppState) -> Edge<Routes> {
    let limit = state.config.api.body_limit;
    let inference =
        proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer::new(
            infer::Inference::new(state.clone()),
        )
        .max_decoding_message_size(limit);
    let prediction =
        proto::tensorflow::serving::prediction_service_server::PredictionServiceServer::new(
            tf::TfServing::new(state.clone()),
        )
        .max_decoding_message_size(limit);
    let model_service = proto::tensorflow::serving::model_service_server::ModelServiceServer::new(
        tf::TfServing::new(state.clone()),
    )
    .max_decoding_message_size(limit);
    let health =
        tonic_health::pb::health_server::HealthServer::new(health::Health::new(state.clone()));
    let routes = Routes::new(inference)
        .add_service(prediction)
        .add_service(model_service)
        .add_service(health);
    Edge::new(routes, state)
}

/// What the accept loop serves: a clonable service of HTTP/2 requests that never fails (a
/// refusal is a gRPC status in the answer).
pub trait GrpcService:
    tower::Service<
        axum::http::Request<CallBody>,
        Response = axum::http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            axum::http::Request<CallBody>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}
