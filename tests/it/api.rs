//! Every endpoint and every error case of the TF-Serving-compatible REST API.

use serde_json::{json, Value};

use crate::util::*;

async fn server_with_fixtures() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "tab", 1, &tabular_spec());
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    fixture(dir.path(), "reg", 1, &regression_spec());
    let server = Server::start(dir.path(), "").await;
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_status_and_metadata() {
    let (s, _dir) = server_with_fixtures().await;
    let (code, list) = s.get("/v1/models").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mlp", "reg", "tab"]);
    assert_eq!(list["models"][0]["default_version"], "1");
    assert_eq!(list["models"][0]["versions"][0]["state"], "AVAILABLE");

    let (code, st) = s.get("/v1/models/tab").await;
    assert_eq!(code, 200);
    assert_eq!(
        st,
        json!({"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    );
    let (code, st) = s.get("/v1/models/tab/versions/1").await;
    assert_eq!(
        (code, &st["model_version_status"][0]["state"]),
        (200, &json!("AVAILABLE"))
    );

    let (code, md) = s.get("/v1/models/tab/metadata").await;
    assert_eq!(code, 200);
    assert_eq!(
        md["model_spec"],
        json!({"name": "tab", "version": "1", "signature_name": "serving_default"})
    );
    // TF Serving's exact JSON: a SignatureDefMap under `metadata.signature_def`, dims as
    // strings; examples-taking models add `classify` (or `regress`).
    let dim = |sizes: &[i64]| json!({"dim": sizes.iter().map(|s| json!({"size": s.to_string(), "name": ""})).collect::<Vec<_>>(), "unknown_rank": false});
    assert_eq!(
        md["metadata"]["signature_def"],
        json!({"signature_def": {
            "serving_default": {
                "inputs": {"input": {"dtype": "DT_FLOAT", "tensor_shape": dim(&[-1, 5]), "name": "input"}},
                "outputs": {"output": {"dtype": "DT_FLOAT", "tensor_shape": dim(&[-1, 2]), "name": "output"}},
                "method_name": "tensorflow/serving/predict"
            },
            "classify": {
                "inputs": {"inputs": {"dtype": "DT_STRING", "tensor_shape": dim(&[-1]), "name": "examples"}},
                "outputs": {
                    "classes": {"dtype": "DT_STRING", "tensor_shape": dim(&[-1, 2]), "name": "classes"},
                    "scores": {"dtype": "DT_FLOAT", "tensor_shape": dim(&[-1, 2]), "name": "scores"}
                },
                "method_name": "tensorflow/serving/classify"
            }
        }})
    );
    // kiln's own description beside it.
    let sig = &md["metadata"]["kiln"];
    assert_eq!(sig["task"], "classification");
    assert_eq!(sig["inputs"][0]["shape"], json!([-1, 5]));
    assert_eq!(sig["inputs"][0]["features"], json!(["a", "b", "color"]));
    assert_eq!(sig["outputs"][0]["shape"], json!([-1, 2]));
    assert_eq!(sig["labels"], json!(["no", "yes"]));
    assert!(sig["preprocessing"]["features"].is_array());
    let (code, md) = s.get("/v1/models/mlp/versions/1/metadata").await;
    assert_eq!(
        (code, &md["metadata"]["kiln"]["inputs"][0]["shape"]),
        (200, &json!([-1, 6]))
    );
    // No feature names, so no examples: `serving_default` only.
    let sigs = &md["metadata"]["signature_def"]["signature_def"];
    assert_eq!(
        sigs.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["serving_default"]
    );
    assert_eq!(
        sigs["serving_default"]["inputs"]["input"]["tensor_shape"],
        dim(&[-1, 6])
    );

    let (code, h) = s.get("/health/live").await;
    assert_eq!((code, &h["status"]), (200, &json!("live")));
    let (code, h) = s.get("/health/ready").await;
    assert_eq!((code, &h["status"]), (200, &json!("ready")));
    let base = s.base.clone();
    s.stop().await;
    assert!(
        reqwest::get(format!("{base}/health/live")).await.is_err(),
        "still listening after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_formats_agree() {
    let (s, _dir) = server_with_fixtures().await;
    // Named features as objects, as raw arrays in signature order, and as columns.
    let (c1, by_name) = s
        .post(
            "/v1/models/tab:predict",
            &json!({"instances": [{"a": 1.5, "b": -2, "color": "green"}, {"color": "red", "b": 0.5, "a": null}]}),
        )
        .await;
    let (c2, by_array) = s
        .post(
            "/v1/models/tab:predict",
            &json!({"instances": [[1.5, -2, "green"], ["NA", 0.5, "red"]]}),
        )
        .await;
    let (c3, by_column) = s
        .post(
            "/v1/models/tab:predict",
            &json!({"inputs": {"a": [1.5, null], "b": [-2, 0.5], "color": ["green", "red"]}}),
        )
        .await;
    assert_eq!(
        (c1, c2, c3),
        (200, 200, 200),
        "{by_name} {by_array} {by_column}"
    );
    assert_eq!(by_name["predictions"].as_array().unwrap().len(), 2);
    assert_close(&by_name["predictions"], &by_array["predictions"], 1e-6);
    assert_close(&by_name["predictions"], &by_column["outputs"], 1e-6);
    let p: Vec<f64> = serde_json::from_value(by_name["predictions"][0].clone()).unwrap();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);

    // Tensor input: row and columnar formats give the same numbers.
    let xs = rows(3, 6, 7);
    let (c1, r) = s
        .post("/v1/models/mlp:predict", &json!({"instances": xs}))
        .await;
    let (c2, c) = s
        .post(
            "/v1/models/mlp/versions/1:predict",
            &json!({"inputs": xs, "signature_name": "serving_default"}),
        )
        .await;
    assert_eq!((c1, c2), (200, 200));
    assert_close(&r["predictions"], &c["outputs"], 1e-6);
    assert_eq!(r["predictions"][0].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_and_regress() {
    let (s, _dir) = server_with_fixtures().await;
    let (code, pred) = s
        .post(
            "/v1/models/tab:predict",
            &json!({"instances": [{"a": 3, "b": 1, "color": "blue"}]}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, cls) = s
        .post(
            "/v1/models/tab:classify",
            &json!({"examples": [{"a": 3, "b": 1}], "context": {"color": "blue"}}),
        )
        .await;
    assert_eq!(code, 200, "{cls}");
    let result = cls["results"][0].as_array().unwrap();
    assert_eq!(result.len(), 2);
    // Best first, scores equal to the predicted probabilities of each label.
    assert!(result[0][1].as_f64().unwrap() >= result[1][1].as_f64().unwrap());
    for pair in result {
        let idx = if pair[0] == "no" { 0 } else { 1 };
        assert!(
            (pair[1].as_f64().unwrap() - pred["predictions"][0][idx].as_f64().unwrap()).abs()
                < 1e-6
        );
    }

    // Regression answers in original units: y = out * 10 + 100.
    let (code, reg) = s
        .post(
            "/v1/models/reg:regress",
            &json!({"examples": [{"x1": 1, "x2": 2}, {"x1": 0, "x2": 0}]}),
        )
        .await;
    assert_eq!(code, 200, "{reg}");
    let (_, raw) = s
        .post(
            "/v1/models/reg:predict",
            &json!({"instances": [[1, 2], [0, 0]]}),
        )
        .await;
    assert_eq!(reg["results"].as_array().unwrap().len(), 2);
    assert_close(&reg["results"][0], &raw["predictions"][0][0], 1e-4);
    // An all-zero instance gives the bias, mapped back to original units: bias * 10 + 100.
    let (_, lm) = s.get("/v1/models/reg/metadata").await;
    assert_eq!(
        lm["metadata"]["kiln"]["preprocessing"]["target"]["shift"],
        100.0
    );
    let regress = &lm["metadata"]["signature_def"]["signature_def"]["regress"];
    assert_eq!(regress["method_name"], "tensorflow/serving/regress");
    assert_eq!(
        regress["outputs"]["outputs"]["tensor_shape"]["dim"][1]["size"],
        "1"
    );
    assert!(lm["metadata"]["signature_def"]["signature_def"]["classify"].is_null());
    let (code, e) = s
        .post(
            "/v1/models/reg:classify",
            &json!({"examples": [{"x1": 1, "x2": 2}]}),
        )
        .await;
    assert_eq!((code, e["code"].as_str()), (400, Some("invalid_input")));
    let (code, e) = s
        .post(
            "/v1/models/tab:regress",
            &json!({"examples": [{"a": 1, "b": 2, "color": "red"}]}),
        )
        .await;
    assert_eq!((code, e["code"].as_str()), (400, Some("invalid_input")));
    let (code, e) = s
        .post("/v1/models/mlp:classify", &json!({"examples": [{"a": 1}]}))
        .await;
    assert_eq!(
        (code, e["code"].as_str()),
        (400, Some("invalid_input")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_category_is_a_warning() {
    let (s, _dir) = server_with_fixtures().await;
    let (code, r) = s
        .post(
            "/v1/models/tab:predict",
            &json!({"instances": [{"a": 1, "b": 1, "color": "purple"}]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let w = r["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("instances[0]") && w.contains("color") && w.contains("purple"),
        "{w}"
    );
}

/// Each bad request: (path, body, status, code, a fragment the message must contain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_json_errors() {
    let (s, _dir) = server_with_fixtures().await;
    let cases: Vec<(&str, &str, u16, &str, &str)> = vec![
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2",
            400,
            "malformed_json",
            "line 1",
        ),
        (
            "/v1/models/mlp:predict",
            "not json",
            400,
            "malformed_json",
            "line 1",
        ),
        (
            "/v1/models/mlp:predict",
            "{}",
            400,
            "invalid_input",
            "instances",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": []}",
            400,
            "invalid_input",
            "empty",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,3,4,5,6]], \"inputs\": [[1]]}",
            400,
            "invalid_input",
            "not both",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instance\": [[1,2,3,4,5,6]]}",
            400,
            "invalid_input",
            "unknown field",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,3,4,5,6],[1,2,3]]}",
            400,
            "invalid_input",
            "instances[1]: expected 6 values",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,3,4,5,6,7]]}",
            400,
            "invalid_input",
            "got more",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,\"x\",4,5,6]]}",
            400,
            "invalid_input",
            "instances[0][2]: expected a number, got the string \\\"x\\\"",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,null,4,5,6]]}",
            400,
            "invalid_input",
            "instances[0][2]",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,1e39,4,5,6]]}",
            400,
            "invalid_input",
            "not a finite",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,NaN,4,5,6]]}",
            400,
            "malformed_json",
            "",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[[1],2,3,4,5,6]]}",
            400,
            "invalid_input",
            "got an array",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [{\"a\": 1}]}",
            400,
            "invalid_input",
            "no feature names",
        ),
        (
            "/v1/models/mlp:predict",
            "{\"instances\": [[1,2,3,4,5,6]], \"signature_name\": \"other\"}",
            400,
            "invalid_input",
            "signature_name",
        ),
        (
            "/v1/models/tab:predict",
            "{\"instances\": [{\"a\": 1, \"color\": \"red\"}]}",
            400,
            "invalid_input",
            "feature 'b' is missing",
        ),
        (
            "/v1/models/tab:predict",
            "{\"instances\": [{\"a\": 1, \"b\": 2, \"color\": \"red\", \"zz\": 1}]}",
            400,
            "invalid_input",
            "unknown feature 'zz'",
        ),
        (
            "/v1/models/tab:predict",
            "{\"instances\": [{\"a\": \"abc\", \"b\": 2, \"color\": \"red\"}]}",
            400,
            "invalid_input",
            "feature 'a' expected a number",
        ),
        (
            "/v1/models/tab:predict",
            "{\"instances\": [[1, 2]]}",
            400,
            "invalid_input",
            "expected 3 feature values",
        ),
        (
            "/v1/models/tab:predict",
            "{\"inputs\": {\"a\": [1, 2], \"b\": [1], \"color\": [\"red\", \"red\"]}}",
            400,
            "invalid_input",
            "column 'b' has 1 values",
        ),
        (
            "/v1/models/tab:classify",
            "{\"instances\": []}",
            400,
            "invalid_input",
            "examples",
        ),
        (
            "/v1/models/nope:predict",
            "{\"instances\": [[1]]}",
            404,
            "model_not_found",
            "'nope'",
        ),
        (
            "/v1/models/mlp/versions/7:predict",
            "{\"instances\": [[1,2,3,4,5,6]]}",
            404,
            "version_not_found",
            "version 7",
        ),
        (
            "/v1/models/mlp/versions/x:predict",
            "{\"instances\": [[1,2,3,4,5,6]]}",
            404,
            "version_not_found",
            "positive integers",
        ),
        (
            "/v1/models/mlp:explode",
            "{}",
            400,
            "invalid_input",
            ":explode",
        ),
        (
            "/v1/models/..:predict",
            "{}",
            400,
            "invalid_model_name",
            "..",
        ),
    ];
    for (path, body, status, code, fragment) in cases {
        let r = s.post_raw(path, "application/json", body).await;
        let got_status = r.status().as_u16();
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{path} {body}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(got_status, status, "{path} {body} → {v}");
        assert_eq!(v["code"], code, "{path} {body} → {v}");
        let msg = v["error"].as_str().unwrap();
        let fragment = fragment.replace("\\\"", "\"");
        assert!(
            msg.contains(&fragment),
            "{path} {body}: {msg:?} lacks {fragment:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(dir.path(), "body_limit_bytes = 200").await;
    // curl -d sends form-urlencoded: accepted as JSON.
    let ok = "{\"instances\": [[1,2,3,4,5,6]]}";
    let r = s
        .post_raw(
            "/v1/models/mlp:predict",
            "application/x-www-form-urlencoded",
            ok,
        )
        .await;
    assert_eq!(r.status(), 200);
    for h in [
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
        "x-batch-size",
    ] {
        let v: f64 = r.headers()[h].to_str().unwrap().parse().unwrap();
        assert!(v >= 0.0, "{h}");
    }
    // Timing headers on every answer, errors included.
    let r = s.client.get(s.url("/v1/models")).send().await.unwrap();
    assert!(r.headers().contains_key("x-total-time") && r.headers().contains_key("x-queue-time"));

    let r = s.post_raw("/v1/models/mlp:predict", "text/csv", ok).await;
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "unsupported_media_type"
    );
    let big = format!(
        "{{\"instances\": [{}]}}",
        vec!["[1,2,3,4,5,6]"; 40].join(",")
    );
    let r = s
        .post_raw("/v1/models/mlp:predict", "application/json", big)
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "body_too_large");

    let r = s.client.get(s.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "route_not_found");
    let r = s.client.delete(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
    let r = s
        .client
        .get(s.url("/v1/models/mlp:predict"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    // A resource and its `:verb` methods share a route: each answers 405 with the methods
    // its own path documents, whether the router or the handler refuses.
    for (method, path, allow) in [
        ("DELETE", "/v1/models/mlp:predict", "POST"),
        ("PUT", "/v1/models/mlp:predict", "POST"),
        (
            "OPTIONS",
            "/v1/training-jobs/job_0000000000000000:cancel",
            "POST",
        ),
        ("GET", "/v1/models/mlp/versions/1:predict", "POST"),
        ("POST", "/v1/models/mlp", "GET,HEAD,DELETE"),
        ("POST", "/v1/models/mlp/versions/1", "GET,HEAD,DELETE"),
        ("POST", "/v1/training-jobs/job_0000000000000000", "GET,HEAD"),
        ("PUT", "/v1/training-jobs/job_0000000000000000", "GET,HEAD"),
        ("PUT", "/v1/models", "GET,HEAD"),
    ] {
        let r = s
            .client
            .request(method.parse().unwrap(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "method_not_allowed",
            "{method} {path}"
        );
    }
    let r = s
        .client
        .post(s.url("/v1/models/mlp:predict"))
        .header("x-request-timeout-ms", "soon")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("x-request-timeout-ms"));
    let (code, e) = s.get("/v1/models/none/metadata").await;
    assert_eq!((code, e["code"].as_str()), (404, Some("model_not_found")));
    let (code, e) = s.get("/v1/models/mlp/versions/3").await;
    assert_eq!((code, e["code"].as_str()), (404, Some("version_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_models_serve() {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let s = Server::start(&models, "").await;
    let (code, r) = s
        .post(
            "/v1/models/iris:classify",
            &json!({"examples": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
                                  {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["results"][0][0][0], "setosa");
    assert_eq!(r["results"][1][0][0], "virginica");
    let (code, a) = s
        .post(
            "/v1/models/iris:predict",
            &json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}),
        )
        .await;
    let (_, b) = s
        .post(
            "/v1/models/iris:predict",
            &json!({"instances": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}),
        )
        .await;
    assert_eq!(code, 200);
    assert_close(&a, &b, 1e-6);
    // The conv model: 64 raw pixel values (an 8x8 image, row by row) give 10 probabilities.
    let img = vec![0.0; 64];
    let (code, r) = s
        .post("/v1/models/digits:predict", &json!({"instances": [img]}))
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["predictions"][0].as_array().unwrap().len(), 10);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `Content-Encoding: gzip` bodies of inference and dataset uploads are read decompressed,
/// with every size limit on what they decompress to: a gzip bomb is 413, not a buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_request_bodies_are_decompressed_within_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(
        dir.path(),
        "body_limit_bytes = 65536\nmax_upload_bytes = 65536",
    )
    .await;
    let send = |path: &str, content_type: &str, encoding: &str, body: Vec<u8>| {
        s.client
            .post(s.url(path))
            .header("content-type", content_type)
            .header("content-encoding", encoding)
            .body(body)
    };
    let predict = br#"{"instances": [[1, 2, 3, 4, 5, 6]]}"#;
    let (_, plain) = s
        .post(
            "/v1/models/mlp:predict",
            &serde_json::from_slice(predict).unwrap(),
        )
        .await;
    let r = send(
        "/v1/models/mlp:predict",
        "application/json",
        "gzip",
        gzip(predict),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), plain);
    let infer = br#"{"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}"#;
    let r = send(
        "/v2/models/mlp/versions/1/infer",
        "application/json",
        "gzip",
        gzip(infer),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let csv = b"a,b,label\n1,2,x\n3,4,y\n5,6,x\n";
    let r = send("/v1/datasets", "text/csv", "gzip", gzip(csv))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["rows"], 3);
    // `identity` is no encoding at all.
    let r = send(
        "/v1/models/mlp:predict",
        "application/json",
        "identity",
        predict.to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // Bombs: 32 MiB of JSON whitespace (and of CSV) in ~32 KiB, against 64 KiB limits.
    let mut bomb = vec![b' '; 32 << 20];
    bomb[..predict.len()].copy_from_slice(predict);
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 65536, "{}", bomb.len());
    for path in ["/v1/models/mlp:predict", "/v2/models/mlp/infer"] {
        let r = send(path, "application/json", "gzip", bomb.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "body_too_large");
    }
    let mut rows = b"a,b,label\n".to_vec();
    while rows.len() < 32 << 20 {
        rows.extend_from_slice(b"1,2,x\n");
    }
    let r = send("/v1/datasets", "text/csv", "gzip", gzip(&rows))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "body_too_large");

    // Not gzip, or an encoding kiln does not read: kiln's JSON errors.
    for path in ["/v1/models/mlp:predict", "/v1/datasets"] {
        let r = send(path, "application/json", "gzip", predict.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_content_encoding", "{path}: {e}");
        let r = send(path, "application/json", "br", predict.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{path}");
        assert_eq!(r.headers()["accept-encoding"], "gzip, identity");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "unsupported_content_encoding", "{path}: {e}");
    }
}

/// The OpenAPI document and the metrics exposition come gzip-compressed to clients that
/// accept it, and as they are to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_text_answers_are_compressed_on_request() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(dir.path(), "").await;
    for path in ["/openapi.json", "/metrics"] {
        let plain = s.client.get(s.url(path)).send().await.unwrap();
        assert!(plain.headers().get("content-encoding").is_none(), "{path}");
        let plain = plain.bytes().await.unwrap();
        let r = s
            .client
            .get(s.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-encoding"], "gzip", "{path}");
        let zipped = r.bytes().await.unwrap();
        assert!(zipped.len() < plain.len(), "{path}");
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut text)
            .unwrap();
        if path == "/openapi.json" {
            assert_eq!(text, plain, "{path}");
        } else {
            assert!(String::from_utf8(text)
                .unwrap()
                .contains("kiln_http_requests_total"));
        }
    }
    // Predictions are never compressed.
    let r = s
        .client
        .post(s.url("/v1/models/mlp:predict"))
        .header("accept-encoding", "gzip")
        .body(r#"{"instances": [[1, 2, 3, 4, 5, 6]]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
}
