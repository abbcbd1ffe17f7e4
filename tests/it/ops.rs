//! Operations: the Prometheus exposition reflects what the server did.

use serde_json::json;

use crate::util::*;

fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_batches_rejections_and_state() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(dir.path(), "").await;
    for _ in 0..3 {
        assert_eq!(
            s.post(
                "/v1/models/mlp:predict",
                &json!({"instances": [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]})
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(
        s.post("/v1/models/mlp:predict", &json!({"instances": [[1]]}))
            .await
            .0,
        400
    );
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert_eq!(
        value(
            &text,
            r#"kiln_http_requests_total{route="/v1/models/{name}",method="POST",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"kiln_http_requests_total{route="/v1/models/{name}",method="POST",status="400"}"#
        ),
        1.0
    );
    // Three batches of two rows (the warm-up pass runs before the batcher exists).
    assert_eq!(
        value(&text, r#"kiln_batch_rows_count{model="mlp",version="1"}"#),
        3.0
    );
    assert_eq!(
        value(&text, r#"kiln_batch_rows_sum{model="mlp",version="1"}"#),
        6.0
    );
    assert_eq!(
        value(
            &text,
            r#"kiln_queue_duration_seconds_count{model="mlp",version="1"}"#
        ),
        3.0
    );
    assert_eq!(value(&text, r#"kiln_models{state="AVAILABLE"}"#), 1.0);
    assert_eq!(
        value(&text, r#"kiln_queue_depth{model="mlp",version="1"}"#),
        0.0
    );
    assert_eq!(value(&text, r#"kiln_training_jobs{state="queued"}"#), 0.0);
    assert!(value(&text, "kiln_process_resident_memory_bytes ") > 1e6);
    assert!(text.contains("# TYPE kiln_http_request_duration_seconds histogram"));
    // Per model, end to end, by protocol: the three answered predictions (a refused one is
    // the per-route histogram's only).
    assert_eq!(
        value(
            &text,
            r#"kiln_request_duration_seconds_count{model="mlp",version="1",protocol="http"}"#
        ),
        3.0
    );
    assert!(
        value(
            &text,
            r#"kiln_request_duration_seconds_sum{model="mlp",version="1",protocol="http"}"#
        ) > 0.0
    );
    // The process's CPU time is a counter.
    assert!(text.contains("# TYPE kiln_process_cpu_seconds counter"));
    assert!(value(&text, "kiln_process_cpu_seconds_total ") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_generated() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "").await;
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let a = s.client.get(s.url("/v1/models")).send().await.unwrap();
    let b = s.client.get(s.url("/nope")).send().await.unwrap();
    let (a, b) = (
        a.headers()["x-request-id"].to_str().unwrap().to_owned(),
        b.headers()["x-request-id"].to_str().unwrap().to_owned(),
    );
    assert_eq!(a.len(), 16);
    assert_ne!(a, b);
    // An unusable id (control characters, too long) is replaced.
    let long = "x".repeat(200);
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("x-request-id", long.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_per_request_are_limited_and_cors_is_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(
        dir.path(),
        "max_rows_per_request = 3\ncors_origins = [\"https://app.example\"]",
    )
    .await;
    let four = json!({"instances": [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]});
    let (code, e) = s.post("/v1/models/mlp:predict", &four).await;
    assert_eq!(
        (code, e["code"].as_str()),
        (413, Some("too_many_rows")),
        "{e}"
    );
    let v2 = json!({"inputs": [{"name": "input", "shape": [4, 6], "datatype": "FP32", "data": vec![0.5; 24]}]});
    assert_eq!(s.post("/v2/models/mlp/infer", &v2).await.0, 413);
    assert_eq!(
        s.post(
            "/v1/models/mlp:predict",
            &json!({"instances": [[1, 2, 3, 4, 5, 6]]})
        )
        .await
        .0,
        200
    );
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Without configured origins, no CORS headers at all.
    let plain = Server::start(dir.path(), "").await;
    let r = plain
        .client
        .get(plain.url("/v1/models"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
