//! The gRPC listener over a real socket with tonic's client: every call of
//! `inference.GRPCInferenceService` and `grpc.health.v1.Health`, every class of error with
//! its status code, keys and scopes, batches shared with REST, and the drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln::grpc::proto::inference as pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use crate::util::*;

type Client = GrpcInferenceServiceClient<Channel>;

pub(crate) async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn client(s: &Server) -> Client {
    GrpcInferenceServiceClient::new(channel(s.grpc.expect("gRPC is on")).await)
}

fn fp32(name: &str, shape: &[i64], values: &[f32]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents: Some(pb::InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        }),
    }
}

fn infer_request(model: &str, inputs: Vec<InferInputTensor>) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs,
        ..Default::default()
    }
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The status of a call that must fail, with its message.
pub(crate) fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
) -> (Code, String) {
    let s = r.expect_err("the call must be refused");
    (s.code(), s.message().to_owned())
}

pub(crate) fn models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    fixture(dir.path(), "tab", 1, &tabular_spec());
    fixture(dir.path(), "reg", 1, &regression_spec());
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_as_rest_does() {
    let dir = models();
    let s = Server::start(dir.path(), "").await;
    let mut c = client(&s).await;

    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "kiln");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("mlp", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("mlp", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        refused(c.model_ready(ready("nope", "")).await).0,
        Code::NotFound
    );
    assert_eq!(
        refused(c.model_ready(ready("mlp", "7")).await).0,
        Code::NotFound
    );

    // Model metadata: the same tensors as REST's.
    let m = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "tab".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let (_, rest) = s.get("/v2/models/tab").await;
    assert_eq!(m.name, "tab");
    assert_eq!(m.versions, ["1"]);
    assert_eq!(m.platform, rest["platform"]);
    let as_json = |t: &[pb::model_metadata_response::TensorMetadata]| -> Value {
        t.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect()
    };
    assert_eq!(as_json(&m.inputs), rest["inputs"]);
    assert_eq!(as_json(&m.outputs), rest["outputs"]);

    // Typed contents in, typed contents out: the same numbers as REST's V2 answer.
    let rows: Vec<f32> = rows(3, 6, 7).concat();
    let mut req = infer_request("mlp", vec![fp32("input", &[3, 6], &rows)]);
    req.id = "req-1".into();
    let res = c.model_infer(req).await.unwrap();
    assert!(res.metadata().get("x-batch-size").is_some());
    let res = res.into_inner();
    assert_eq!(
        (
            res.model_name.as_str(),
            res.model_version.as_str(),
            res.id.as_str()
        ),
        ("mlp", "1", "req-1")
    );
    assert!(res.raw_output_contents.is_empty());
    let names: Vec<&str> = res.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probabilities", "label"]);
    let probs = &res.outputs[0];
    assert_eq!(
        (probs.datatype.as_str(), &probs.shape[..]),
        ("FP32", &[3, 3][..])
    );
    let (status, v2) = s
        .post(
            "/v2/models/mlp/infer",
            &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 6], "data": rows}]}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    let grpc_probs: Value = probs
        .contents
        .as_ref()
        .unwrap()
        .fp32_contents
        .iter()
        .map(|&x| json!(x))
        .collect();
    assert_close(&grpc_probs, &v2["outputs"][0]["data"], 1e-6);
    let labels: Vec<String> = res.outputs[1]
        .contents
        .as_ref()
        .unwrap()
        .bytes_contents
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(json!(labels), v2["outputs"][1]["data"]);

    // Raw bytes in, raw bytes out (tritonclient's way), only the output asked for.
    let raw: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut t = fp32("input", &[3, 6], &[]);
    t.contents = None;
    let mut req = infer_request("mlp", vec![t]);
    req.raw_input_contents = vec![raw.into()];
    req.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        parameters: HashMap::new(),
    }];
    let res = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(res.outputs.len(), 1);
    assert!(res.outputs[0].contents.is_none());
    let raw_probs: Value = le_f32(&res.raw_output_contents[0])
        .into_iter()
        .map(|x| json!(x))
        .collect();
    assert_close(&raw_probs, &v2["outputs"][0]["data"], 1e-6);

    // One input per feature, BYTES for the categorical one; an unknown category warns.
    let feature =
        |name: &str, datatype: &str, contents: pb::InferTensorContents| InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![2],
            parameters: HashMap::new(),
            contents: Some(contents),
        };
    let req = infer_request(
        "tab",
        vec![
            feature(
                "a",
                "FP64",
                pb::InferTensorContents {
                    fp64_contents: vec![1.0, 2.0],
                    ..Default::default()
                },
            ),
            feature(
                "b",
                "INT32",
                pb::InferTensorContents {
                    int_contents: vec![3, 4],
                    ..Default::default()
                },
            ),
            feature(
                "color",
                "BYTES",
                pb::InferTensorContents {
                    bytes_contents: vec![b"red".to_vec().into(), b"mauve".to_vec().into()],
                    ..Default::default()
                },
            ),
        ],
    );
    let res = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(res.outputs[0].shape, [2, 2]);
    let Some(pb::InferParameter {
        parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(w)),
    }) = res.parameters.get("warnings")
    else {
        panic!("no warnings: {:?}", res.parameters)
    };
    assert!(w.contains("mauve"), "{w}");

    // Regression: values in the target's original units, as REST answers them.
    let req = infer_request("reg", vec![fp32("input", &[1, 2], &[0.5, -1.0])]);
    let res = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(res.outputs[0].name, "output");
    let (_, v2) = s
        .post(
            "/v2/models/reg/infer",
            &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.5, -1.0]}]}),
        )
        .await;
    let out: Value = res.outputs[0]
        .contents
        .as_ref()
        .unwrap()
        .fp32_contents
        .iter()
        .map(|&x| json!(x))
        .collect();
    assert_close(&out, &v2["outputs"][0]["data"], 1e-4);

    // Health: the server and the inference service; an unknown service is NOT_FOUND.
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(s.grpc.unwrap()).await);
    for service in ["", "inference.GRPCInferenceService"] {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_eq!(refused(r).0, Code::NotFound);

    let mut watch = h
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        first.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(watch);

    // The repository extension: index, unload (then NOT_FOUND... or unavailable), load.
    let idx = c
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<&str> = idx.models.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["mlp", "reg", "tab"]);
    assert!(idx.models.iter().all(|m| m.state == "READY"));
    c.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "reg".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let req = infer_request("reg", vec![fp32("input", &[1, 2], &[0.5, -1.0])]);
    let (code, message) = refused(c.model_infer(req).await);
    assert!(
        matches!(code, Code::Unavailable | Code::NotFound),
        "{code:?} {message}"
    );
    assert!(!c
        .model_ready(ready("reg", ""))
        .await
        .map(|r| r.into_inner().ready)
        .unwrap_or(false));
    c.repository_model_load(pb::RepositoryModelLoadRequest {
        model_name: "reg".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        c.model_ready(ready("reg", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let (code, _) = refused(
        c.repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "../etc".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);

    // Calls are counted per method and status code.
    let (_, _) = s.get("/health/live").await;
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"kiln_grpc_requests_total{method="inference.GRPCInferenceService/ModelInfer",code="OK"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"code="NOT_FOUND""#), "{metrics}");
    // Answered inferences are timed per model, under the gRPC protocol label.
    assert!(
        metrics.contains(
            r#"kiln_request_duration_seconds_count{model="reg",version="1",protocol="grpc"}"#
        ),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_says_what_and_where() {
    let dir = models();
    let s = Server::start(dir.path(), "max_rows_per_request = 4").await;
    let mut c = client(&s).await;
    let cases: Vec<(pb::ModelInferRequest, Code, &str)> = vec![
        (
            infer_request("mlp", vec![fp32("input", &[1, 6], &[1.0; 5])]),
            Code::InvalidArgument,
            "holds 6 values but 5 were sent",
        ),
        (
            infer_request("mlp", vec![fp32("input", &[1, 5], &[1.0; 5])]),
            Code::InvalidArgument,
            "expected shape [N, 6]",
        ),
        (
            {
                let mut t = fp32("input", &[1, 6], &[]);
                t.datatype = "FP64".into();
                t.contents = Some(pb::InferTensorContents {
                    fp32_contents: vec![1.0; 6],
                    ..Default::default()
                });
                infer_request("mlp", vec![t])
            },
            Code::InvalidArgument,
            "input 'input': datatype FP64 takes its values in contents.fp64_contents",
        ),
        (
            {
                let mut r = infer_request("mlp", vec![fp32("input", &[1, 6], &[1.0; 6])]);
                r.outputs = vec![InferRequestedOutputTensor {
                    name: "logits".into(),
                    parameters: HashMap::new(),
                }];
                r
            },
            Code::InvalidArgument,
            "unknown output 'logits'",
        ),
        (
            {
                let mut r = infer_request(
                    "mlp",
                    vec![fp32("input", &[1, 6], &[]), fp32("x", &[1], &[])],
                );
                r.raw_input_contents = vec![vec![0u8; 24].into()];
                r
            },
            Code::InvalidArgument,
            "raw_input_contents holds 1 entries for 2 inputs",
        ),
        (
            infer_request("mlp", vec![fp32("input", &[5, 6], &[0.5; 30])]),
            Code::InvalidArgument,
            "the limit is 4",
        ),
        (
            infer_request("nope", vec![fp32("input", &[1, 6], &[1.0; 6])]),
            Code::NotFound,
            "model 'nope' not found",
        ),
        (
            {
                let mut r = infer_request("mlp", vec![fp32("input", &[1, 6], &[1.0; 6])]);
                r.model_version = "x".into();
                r
            },
            Code::NotFound,
            "versions are positive integers",
        ),
    ];
    for (req, code, says) in cases {
        let (got, message) = refused(c.model_infer(req).await);
        assert_eq!(got, code, "{message}");
        assert!(message.contains(says), "{message:?} lacks {says:?}");
    }
    // A malformed deadline is refused too.
    let mut req = tonic::Request::new(infer_request(
        "mlp",
        vec![fp32("input", &[1, 6], &[1.0; 6])],
    ));
    req.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    assert_eq!(refused(c.model_infer(req).await).0, Code::InvalidArgument);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_scopes_are_rests() {
    let dir = models();
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    use kiln::auth::Scope;
    let predict = kiln::auth::new_key(keyfile.path(), "p", &[Scope::Predict]).unwrap();
    let admin = kiln::auth::new_key(keyfile.path(), "a", &[Scope::Admin]).unwrap();
    let toml = format!("api_keys = {:?}", keyfile.path().display().to_string());
    let s = Server::start(dir.path(), &toml).await;
    let mut c = client(&s).await;
    fn with<T>(key: Option<&str>, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    }
    let infer = || infer_request("mlp", vec![fp32("input", &[1, 6], &[1.0; 6])]);
    let (code, message) = refused(c.model_infer(with(None, infer())).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("Bearer"), "{message}");
    assert_eq!(
        refused(c.model_infer(with(Some("kiln_wrong"), infer())).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        refused(c.model_infer(with(Some(&admin), infer())).await).0,
        Code::PermissionDenied
    );
    c.model_infer(with(Some(&predict), infer())).await.unwrap();
    let index = || pb::RepositoryIndexRequest::default();
    assert_eq!(
        refused(c.repository_index(with(Some(&predict), index())).await).0,
        Code::PermissionDenied
    );
    c.repository_index(with(Some(&admin), index()))
        .await
        .unwrap();
    // Liveness, readiness and health are open, as REST's health checks are.
    c.server_live(with(None, pb::ServerLiveRequest {}))
        .await
        .unwrap();
    c.server_ready(with(None, pb::ServerReadyRequest {}))
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(s.grpc.unwrap()).await);
    h.check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    s.stop().await;
}

/// A ModelInfer call with a `grpc-timeout` header, over a bare HTTP/2 connection (no client
/// timer): the server's status code and message.
async fn call_with_timeout(
    addr: SocketAddr,
    req: &pb::ModelInferRequest,
    timeout: &str,
) -> (Code, String) {
    call_raw(
        addr,
        "/inference.GRPCInferenceService/ModelInfer",
        req,
        timeout,
    )
    .await
}

/// A unary call to `path` with a `grpc-timeout` header over a bare HTTP/2 connection: the
/// server's status code and message.
pub(crate) async fn call_raw(
    addr: SocketAddr,
    path: &str,
    req: &impl prost::Message,
    timeout: &str,
) -> (Code, String) {
    use http_body_util::{BodyExt, Full};
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let msg = req.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let request = axum::http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(axum::body::Bytes::from(body)))
        .unwrap();
    let res = send.send_request(request).await.unwrap();
    let headers = res.headers().clone();
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let code = Code::from(field("grpc-status").parse::<i32>().unwrap());
    let message = percent_decode(&field("grpc-message"));
    (code, message)
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_and_a_passed_deadline_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "slow", 1, &slow_spec());
    let s = Server::start(
        dir.path(),
        "workers = 1\n[batching]\nqueue_capacity = 1\nmax_batch_size = 4",
    )
    .await;
    let addr = s.grpc.unwrap();
    let slow = |n: usize| {
        let t = fp32("input", &[n as i64, 8, 32, 32], &vec![0.5; n * 8 * 32 * 32]);
        infer_request("slow", vec![t])
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let req = slow(4);
        tasks.push(tokio::spawn(async move {
            let mut c = GrpcInferenceServiceClient::new(channel(addr).await);
            c.model_infer(req).await.map(|_| ()).map_err(|s| s.code())
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(codes.contains(&Err(Code::ResourceExhausted)), "{codes:?}");
    assert!(codes.contains(&Ok(())), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Ok(()) | Err(Code::ResourceExhausted))),
        "{codes:?}"
    );

    // A call whose grpc-timeout passes while the worker is busy is never computed.
    let busy = {
        let req = slow(4);
        tokio::spawn(async move {
            let mut c = GrpcInferenceServiceClient::new(channel(addr).await);
            c.model_infer(req).await.map(|_| ()).map_err(|s| s.code())
        })
    };
    loop {
        let (_, list) = s.get("/v1/models").await;
        if list["models"][0]["versions"][0]["stats"]["queue_depth"]
            .as_u64()
            .unwrap_or(0)
            == 0
            && list["models"][0]["versions"][0]["stats"]["requests"]
                .as_u64()
                .unwrap()
                >= 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Sent without tonic's client, which would give up on its own timer first (CANCELLED):
    // this is the server's answer.
    let (code, message) = call_with_timeout(addr, &slow(1), "1m").await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert_eq!(busy.await.unwrap(), Ok(()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_rest_requests_share_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    // One worker, and a partial batch waits 300 ms to grow: both requests join it.
    let s = Arc::new(
        Server::start(
            dir.path(),
            "workers = 1\n[batching]\nmax_queue_delay_ms = 300",
        )
        .await,
    );
    let mut c = client(&s).await;
    let rest = {
        let s = s.clone();
        tokio::spawn(async move {
            let r = s
                .post_raw(
                    "/v2/models/mlp/infer",
                    "application/json",
                    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 6], "data": vec![0.5; 12]}]}).to_string(),
                )
                .await;
            assert_eq!(r.status(), 200);
            r.headers()["x-batch-size"].to_str().unwrap().to_owned()
        })
    };
    let res = c
        .model_infer(infer_request(
            "mlp",
            vec![fp32("input", &[1, 6], &[0.5; 6])],
        ))
        .await
        .unwrap();
    let grpc_batch = res
        .metadata()
        .get("x-batch-size")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        (grpc_batch.as_str(), rest.await.unwrap().as_str()),
        ("3", "3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_finishes_calls_in_flight_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "slow", 1, &slow_spec());
    let s = Server::start(dir.path(), "workers = 1").await;
    let addr = s.grpc.unwrap();
    let t = fp32("input", &[4, 8, 32, 32], &vec![0.5; 4 * 8 * 32 * 32]);
    let in_flight = tokio::spawn(async move {
        let mut c = GrpcInferenceServiceClient::new(channel(addr).await);
        c.model_infer(infer_request("slow", vec![t]))
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    });
    loop {
        let (_, list) = s.get("/v1/models").await;
        if list["models"][0]["versions"][0]["stats"]["requests"]
            .as_u64()
            .unwrap()
            >= 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stopped = tokio::spawn(s.stop());
    // Once the listener has closed, a new call is UNAVAILABLE.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Err(_) => true,
            Ok(ch) => {
                let r = GrpcInferenceServiceClient::new(ch)
                    .server_live(pb::ServerLiveRequest {})
                    .await;
                matches!(r, Err(ref e) if e.code() == Code::Unavailable)
            }
        };
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still answering after stop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = GrpcInferenceServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    );
    assert_eq!(
        refused(c.server_live(pb::ServerLiveRequest {}).await).0,
        Code::Unavailable
    );
    assert_eq!(
        in_flight.await.unwrap(),
        Ok(()),
        "the call in flight is answered"
    );
    stopped.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_new_grpc_connection_waits_until_one_closes() {
    let dir = models();
    let s = Server::start(dir.path(), "max_connections = 1").await;
    let addr = s.grpc.unwrap();
    let live = |c: Channel| async move {
        GrpcInferenceServiceClient::new(c)
            .server_live(pb::ServerLiveRequest {})
            .await
            .map(|r| r.into_inner().live)
    };
    let a = channel(addr).await;
    assert!(live(a.clone()).await.unwrap());
    // The kernel completes the second connection's handshake (backlog); kiln does not
    // accept it while the first is open.
    let b = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut second = tokio::spawn(live(b));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "a second gRPC connection was served with max_connections = 1"
    );
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}: {metrics}"))
    };
    // Only the first is open (accepted); the second waits.
    assert_eq!(value("kiln_grpc_connections"), 1.0);
    assert!(value("kiln_grpc_connection_limit_reached_total") >= 1.0);
    drop(a);
    let answered = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served once the first connection closed")
        .unwrap();
    assert!(answered.unwrap());
    s.stop().await;
}

/// REST's body read timeout on gRPC: a request message that stalls (a frame header
/// announcing 100 bytes, 10 of them, then nothing) is answered DEADLINE_EXCEEDED
/// (`body_timeout`, REST's 408) instead of holding its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_message_is_deadline_exceeded() {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    let dir = models();
    let s = Server::start(dir.path(), "body_read_timeout_ms = 300").await;
    let addr = s.grpc.unwrap();
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut head = vec![0u8];
    head.extend_from_slice(&100u32.to_be_bytes());
    head.extend_from_slice(&[0u8; 10]);
    let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        hyper::body::Frame::data(axum::body::Bytes::from(head)),
    )]);
    let body = StreamBody::new(first.chain(futures_util::stream::pending()));
    let request = axum::http::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), send.send_request(request))
        .await
        .expect("a stalled message is answered")
        .unwrap();
    let headers = res.headers().clone();
    let collected = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .expect("the answer ends")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        Code::from(field("grpc-status").parse::<i32>().unwrap()),
        Code::DeadlineExceeded,
        "{}",
        field("grpc-message")
    );
    assert_eq!(field("kiln-error-code"), "body_timeout");
    drop(send);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_grpc_listen_turns_grpc_off() {
    let dir = models();
    let s = Server::start(dir.path(), "grpc_listen = \"\"").await;
    assert_eq!(s.grpc, None);
    s.stop().await;
}

/// The committed code generated from proto/ is the code of the committed .proto files
/// (regenerate with tools/protogen; docs/grpc.md): each generated file names the files it
/// came from and their SHA-256.
#[test]
fn generated_code_matches_its_proto() {
    use sha2::Digest;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("src/grpc/proto");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let code = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| {
            code.lines()
                .take(4)
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{} has no '{key}' line", path.display()))
                .to_owned()
        };
        let mut hasher = sha2::Sha256::new();
        for proto in header("// protos: ").split(' ') {
            hasher.update(std::fs::read(root.join("proto").join(proto)).unwrap());
        }
        let hash: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            header("// proto sha256: "),
            hash,
            "{} is stale: run cargo run --manifest-path tools/protogen/Cargo.toml",
            path.display()
        );
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "google.protobuf.rs",
            "inference.rs",
            "tensorflow.error.rs",
            "tensorflow.rs",
            "tensorflow.serving.rs"
        ]
    );
}
