//! Open Inference Protocol (V2) conformance: every endpoint, datatypes, errors, the binary
//! tensor extension, and agreement with the v1 API on the same model version.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::util::*;

async fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "tab", 1, &tabular_spec());
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    fixture(dir.path(), "reg", 1, &regression_spec());
    let s = Server::start(dir.path(), "").await;
    (s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_health() {
    let (s, _d) = server().await;
    let (code, m) = s.get("/v2").await;
    assert_eq!((code, m["name"].as_str()), (200, Some("kiln")));
    assert!(m["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    assert_eq!(s.get("/v2/health/live").await.0, 200);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    let (code, m) = s.get("/v2/models/tab").await;
    assert_eq!(code, 200);
    assert_eq!(m["name"], "tab");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(m["platform"], "kiln_candle");
    assert_eq!(
        m["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 3]})
    );
    assert_eq!(
        m["inputs"][3],
        json!({"name": "color", "datatype": "BYTES", "shape": [-1]})
    );
    assert_eq!(
        m["outputs"][0],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})
    );
    assert_eq!(
        m["outputs"][1],
        json!({"name": "label", "datatype": "BYTES", "shape": [-1]})
    );
    let (code, m) = s.get("/v2/models/reg/versions/1").await;
    assert_eq!((code, &m["outputs"][0]["name"]), (200, &json!("output")));
    let (code, r) = s.get("/v2/models/mlp/ready").await;
    assert_eq!((code, &r["ready"]), (200, &json!(true)));
    assert_eq!(s.get("/v2/models/mlp/versions/1/ready").await.0, 200);
    let (code, e) = s.get("/v2/models/nope").await;
    assert_eq!((code, e["code"].as_str()), (404, Some("model_not_found")));
    let (code, e) = s.get("/v2/models/mlp/versions/9/ready").await;
    assert_eq!((code, e["code"].as_str()), (404, Some("version_not_found")));
    assert_eq!(s.get("/v2/models/..%2Fx").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_answer_the_same() {
    let (s, _d) = server().await;
    // One raw tensor of feature values, in signature order (strings need per-feature inputs).
    let (_, v1) = s
        .post("/v1/models/tab:predict", &json!({"instances": [{"a": 1.5, "b": -2, "color": "green"}, {"a": 0, "b": 3, "color": "red"}]}))
        .await;
    let req = json!({"id": "r-1", "inputs": [
        {"name": "a", "shape": [2], "datatype": "FP64", "data": [1.5, 0]},
        {"name": "b", "shape": [2, 1], "datatype": "INT32", "data": [[-2], [3]]},
        {"name": "color", "shape": [2], "datatype": "BYTES", "data": ["green", "red"]}]});
    let (code, v2) = s.post("/v2/models/tab/infer", &req).await;
    assert_eq!(code, 200, "{v2}");
    assert_eq!(v2["id"], "r-1");
    assert_eq!(v2["model_name"], "tab");
    assert_eq!(v2["model_version"], "1");
    let probs = &v2["outputs"][0];
    assert_eq!(
        (probs["name"].as_str(), &probs["shape"]),
        (Some("probabilities"), &json!([2, 2]))
    );
    let flat: Vec<Value> = v1["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    assert_close(&probs["data"], &Value::Array(flat), 1e-6);
    assert_eq!(v2["outputs"][1]["datatype"], "BYTES");
    assert_eq!(v2["outputs"][1]["shape"], json!([2]));

    // Tensor input for a model without features, nested or flat, any numeric datatype.
    let xs = rows(2, 6, 5);
    let (_, v1) = s
        .post(
            "/v1/models/reg:predict",
            &json!({"instances": [[1, 2], [3, 4]]}),
        )
        .await;
    for (dt, data) in [
        ("FP32", json!([[1, 2], [3, 4]])),
        ("INT64", json!([1, 2, 3, 4])),
        ("UINT8", json!([1, 2, 3, 4])),
    ] {
        let (code, v2) = s
            .post("/v2/models/reg/versions/1/infer", &json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": dt, "data": data}]}))
            .await;
        assert_eq!(code, 200, "{dt}: {v2}");
        assert_eq!(v2["outputs"][0]["name"], "output");
        assert_close(
            &v2["outputs"][0]["data"],
            &json!([v1["predictions"][0][0], v1["predictions"][1][0]]),
            1e-4,
        );
    }
    let (code, v2) = s
        .post(
            "/v2/models/mlp/infer",
            &json!({"inputs": [{"name": "x", "shape": [2, 6], "datatype": "FP32", "data": xs}],
                                              "outputs": [{"name": "label"}]}),
        )
        .await;
    assert_eq!(code, 200, "{v2}");
    assert_eq!(v2["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v2["outputs"][0]["name"], "label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_or_404_with_our_error_shape() {
    let (s, _d) = server().await;
    let t = |shape: Value, dt: &str, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": dt, "data": data}]});
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v2/models/reg/infer",
            t(json!([2, 2]), "FP32", json!([1, 2, 3])),
            400,
            "holds 4 values but 3",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 3]), "FP32", json!([1, 2, 3])),
            400,
            "expected shape [N, 2]",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1000000000000_i64]), "FP32", json!([1])),
            400,
            "holds",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 2]), "INT32", json!([1.5, 2])),
            400,
            "not a valid INT32",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 2]), "UINT8", json!([-1, 2])),
            400,
            "UINT8",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 2]), "FP128", json!([1, 2])),
            400,
            "unknown datatype",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 2]), "BYTES", json!(["a", "b"])),
            400,
            "BYTES",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 2]), "FP32", json!([1, "a"])),
            400,
            "mixes",
        ),
        (
            "/v2/models/reg/infer",
            t(json!([1, 2]), "FP32", json!([1, 1e39])),
            400,
            "range",
        ),
        (
            "/v2/models/mlp/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 1e39]}]}),
            400,
            "finite",
        ),
        ("/v2/models/reg/infer", json!({"inputs": []}), 400, "empty"),
        (
            "/v2/models/reg/infer",
            json!({"input": []}),
            400,
            "unknown field",
        ),
        (
            "/v2/models/tab/infer",
            json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                                                    {"name": "color", "shape": [1], "datatype": "BYTES", "data": ["red"]}]}),
            400,
            "'b'",
        ),
        (
            "/v2/models/reg/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                                        "outputs": [{"name": "probabilities"}]}),
            400,
            "unknown output",
        ),
        (
            "/v2/models/reg/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                                        "outputs": [{"name": "output"}, {"name": "output"}]}),
            400,
            "twice",
        ),
        (
            "/v2/models/none/infer",
            t(json!([1, 2]), "FP32", json!([1, 2])),
            404,
            "'none'",
        ),
        (
            "/v2/models/reg/versions/4/infer",
            t(json!([1, 2]), "FP32", json!([1, 2])),
            404,
            "version 4",
        ),
    ];
    for (path, body, status, fragment) in cases {
        let (code, e) = s.post(path, &body).await;
        assert_eq!(code, status, "{path} {body} → {e}");
        assert!(e["code"].is_string(), "{e}");
        assert!(
            e["error"].as_str().unwrap().contains(fragment),
            "{body}: {e} lacks {fragment:?}"
        );
    }
    let r = s
        .post_raw("/v2/models/reg/infer", "application/json", "{\"inputs\": [")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "malformed_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensor_extension_round_trip() {
    let (s, _d) = server().await;
    let xs: Vec<f32> = rows(3, 6, 9).concat();
    let header = json!({"inputs": [{"name": "input", "shape": [3, 6], "datatype": "FP32", "parameters": {"binary_data_size": xs.len() * 4}}],
                        "parameters": {"binary_data_output": true}})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(xs.iter().flat_map(|x| x.to_le_bytes()));
    let r = s
        .client
        .post(s.url("/v2/models/mlp/infer"))
        .header("inference-header-content-length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    let probs = &head["outputs"][0];
    assert_eq!(probs["name"], "probabilities");
    let size = probs["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(size, 3 * 3 * 4);
    let floats: Vec<f32> = bytes[n..n + size]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // The same request as JSON gives the same probabilities.
    let (_, j) = s.post("/v2/models/mlp/infer", &json!({"inputs": [{"name": "input", "shape": [3, 6], "datatype": "FP32", "data": xs}]})).await;
    assert_close(&json!(floats), &j["outputs"][0]["data"], 1e-6);
    // Labels as binary BYTES: 4-byte little-endian length, then the bytes.
    let rest = &bytes[n + size..];
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    assert_eq!(
        std::str::from_utf8(&rest[4..4 + len]).unwrap(),
        j["outputs"][1]["data"][0].as_str().unwrap()
    );
    // A binary size past the end of the body is refused.
    let r = s
        .client
        .post(s.url("/v2/models/mlp/infer"))
        .header("inference-header-content-length", header.len())
        .body(header.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_requests_share_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Arc::new(
        Server::start(
            dir.path(),
            "workers = 1\n[batching]\nmax_queue_delay_ms = 300",
        )
        .await,
    );
    let x = rows(1, 6, 1).remove(0);
    let (s1, s2) = (s.clone(), s.clone());
    let x1 = x.clone();
    let v1 = tokio::spawn(async move {
        let r = s1
            .client
            .post(s1.url("/v1/models/mlp:predict"))
            .json(&json!({"instances": [x1]}))
            .send()
            .await
            .unwrap();
        r.headers()["x-batch-size"].to_str().unwrap().to_owned()
    });
    let v2 = tokio::spawn(async move {
        let body =
            json!({"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": x}]});
        let r = s2
            .client
            .post(s2.url("/v2/models/mlp/infer"))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.headers()["x-batch-size"].to_str().unwrap().to_owned()
    });
    assert_eq!(
        (v1.await.unwrap(), v2.await.unwrap()),
        ("2".to_owned(), "2".to_owned())
    );
}

/// FP16 and BF16 inputs, as JSON numbers and as binary data: values every 16-bit format
/// holds exactly give the FP32 request's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_precision_inputs_as_json_and_binary_data() {
    let (s, _d) = server().await;
    let xs = [1.5f32, -2.0, 0.25, 3.0];
    let tensor = |dt: &str| json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": dt, "data": xs}]});
    let (code, want) = s.post("/v2/models/reg/infer", &tensor("FP32")).await;
    assert_eq!(code, 200, "{want}");
    let want = &want["outputs"][0]["data"];
    for dt in ["FP16", "BF16"] {
        let (code, got) = s.post("/v2/models/reg/infer", &tensor(dt)).await;
        assert_eq!(code, 200, "{dt}: {got}");
        assert_eq!(&got["outputs"][0]["data"], want, "{dt} as JSON");

        let bits: Vec<u16> = xs
            .iter()
            .map(|&x| match dt {
                "FP16" => half::f16::from_f32(x).to_bits(),
                // bfloat16 is the top half of an f32 (exact for these values).
                _ => (x.to_bits() >> 16) as u16,
            })
            .collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let post = |bytes: &[u8]| {
            let header = json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": dt,
                                            "parameters": {"binary_data_size": bytes.len()}}]})
            .to_string();
            let mut body = header.clone().into_bytes();
            body.extend_from_slice(bytes);
            s.client
                .post(s.url("/v2/models/reg/infer"))
                .header("inference-header-content-length", header.len())
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
        };
        let r = post(&bytes).await.unwrap();
        assert_eq!(r.status(), 200, "{dt} as binary data");
        let got: Value = r.json().await.unwrap();
        assert_eq!(&got["outputs"][0]["data"], want, "{dt} as binary data");
        // An odd number of bytes is no whole number of 16-bit values.
        let r = post(&bytes[..7]).await.unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains(dt), "{e}");
    }
}

/// V2 reads the per-request deadline header as v1 does (one extractor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_header_is_read_as_in_v1() {
    let (s, _d) = server().await;
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]});
    for (value, status) in [("soon", 400), ("0", 400), ("5000", 200), (" 5000 ", 200)] {
        let r = s
            .client
            .post(s.url("/v2/models/reg/infer"))
            .header("x-request-timeout-ms", value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{value:?}");
        if status == 400 {
            let e: Value = r.json().await.unwrap();
            assert!(
                e["error"]
                    .as_str()
                    .unwrap()
                    .contains("x-request-timeout-ms"),
                "{e}"
            );
        }
    }
}
