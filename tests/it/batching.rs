//! The dynamic batcher seen from outside: concurrent requests are computed together and
//! answer exactly what they answer alone; overload is 503; a passed deadline is 504.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_equal_to_unbatched() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    // A queue delay makes batches form deterministically even on a fast machine.
    let s = Arc::new(
        Server::start(
            dir.path(),
            "workers = 1\n[batching]\nmax_batch_size = 16\nmax_queue_delay_ms = 200",
        )
        .await,
    );
    let xs = rows(12, 6, 42);
    let mut tasks = Vec::new();
    for x in xs.clone() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = s
                .client
                .post(s.url("/v1/models/mlp:predict"))
                .json(&json!({"instances": [x]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let batch: usize = r.headers()["x-batch-size"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let v: Value = r.json().await.unwrap();
            (batch, v["predictions"][0].clone())
        }));
    }
    let mut batched = Vec::new();
    for t in tasks {
        batched.push(t.await.unwrap());
    }
    let max_batch = batched.iter().map(|(b, _)| *b).max().unwrap();
    assert!(
        max_batch > 1,
        "no two requests were batched together: {batched:?}"
    );
    let (_, list) = s.get("/v1/models").await;
    let stats = &list["models"][0]["versions"][0]["stats"];
    assert!(stats["max_batch_rows"].as_u64().unwrap() > 1, "{stats}");
    assert_eq!(stats["rows"], 12);
    assert!(stats["batches"].as_u64().unwrap() < 12, "{stats}");

    // Unbatched: one at a time, each alone in its batch.
    let s1 = Server::start(dir.path(), "[batching]\nmax_batch_size = 1").await;
    for (x, (_, got)) in xs.iter().zip(&batched) {
        let r = s1
            .client
            .post(s1.url("/v1/models/mlp:predict"))
            .json(&json!({"instances": [x]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-batch-size"], "1");
        let v: Value = r.json().await.unwrap();
        assert_close(&v["predictions"][0], got, 1e-5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_max_batch_size_is_split_in_order() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(dir.path(), "[batching]\nmax_batch_size = 4").await;
    let xs = rows(11, 6, 3);
    let (code, all) = s
        .post("/v1/models/mlp:predict", &json!({"instances": xs}))
        .await;
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["predictions"].as_array().unwrap().len(), 11);
    for (i, x) in xs.iter().enumerate() {
        let (_, one) = s
            .post("/v1/models/mlp:predict", &json!({"instances": [x]}))
            .await;
        assert_close(&one["predictions"][0], &all["predictions"][i], 1e-5);
    }
    let (_, list) = s.get("/v1/models").await;
    assert!(
        list["models"][0]["versions"][0]["stats"]["max_batch_rows"]
            .as_u64()
            .unwrap()
            <= 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "slow", 1, &slow_spec());
    let s = Arc::new(
        Server::start(
            dir.path(),
            "workers = 1\n[batching]\nqueue_capacity = 1\nmax_batch_size = 4",
        )
        .await,
    );
    let body = Arc::new(slow_body(4));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (s, body) = (s.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = s
                .post_raw(
                    "/v1/models/slow:predict",
                    "application/json",
                    body.to_string(),
                )
                .await;
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let v: Value = r.json().await.unwrap();
            (status, retry, v)
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        if status == 503 {
            assert_eq!(v["code"], "queue_full", "{v}");
            assert_eq!(retry.as_deref(), Some("1"));
        } else {
            assert_eq!(status, 200, "{v}");
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&503),
        "no request was refused: {statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "no request was served: {statuses:?}"
    );
    let (_, list) = s.get("/v1/models").await;
    assert!(
        list["models"][0]["versions"][0]["stats"]["rejected_queue_full"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_answers_504_and_is_never_computed() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "slow", 1, &slow_spec());
    let s =
        Arc::new(Server::start(dir.path(), "workers = 1\n[batching]\nmax_batch_size = 4").await);
    let busy = {
        let s = s.clone();
        tokio::spawn(async move {
            s.post_raw("/v1/models/slow:predict", "application/json", slow_body(4))
                .await
                .status()
        })
    };
    // Wait until the worker has the long batch, then send a request with a 1 ms deadline.
    loop {
        let (_, list) = s.get("/v1/models").await;
        if list["models"][0]["versions"][0]["stats"]["requests"]
            .as_u64()
            .unwrap()
            >= 1
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let r = s
        .client
        .post(s.url("/v1/models/slow:predict"))
        .header("x-request-timeout-ms", "1")
        .body(slow_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "deadline_exceeded"
    );
    assert_eq!(busy.await.unwrap(), 200);
    // Give the batcher a moment to drain, then check the expired entry was never computed.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, list) = s.get("/v1/models").await;
    let stats = &list["models"][0]["versions"][0]["stats"];
    assert_eq!(
        stats["rows"], 4,
        "the expired request was computed: {stats}"
    );
    assert!(stats["rejected_deadline"].as_u64().unwrap() >= 1, "{stats}");
}
