//! The training half over HTTP: upload → profile; job → events → succeeded → predict on the
//! new version; specs refused before queuing; cancel; serving while training.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

pub fn iris_csv() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv")).unwrap()
}

pub async fn upload(
    s: &Server,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value, Option<String>) {
    let r = s.post_raw("/v1/datasets", content_type, body).await;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap(), location)
}

/// Reads a job's server-sent events until the `end` event; returns (kind, data) pairs.
pub async fn follow(s: &Server, id: &str) -> Vec<(String, Value)> {
    let mut r = s
        .client
        .get(s.url(&format!("/v1/training-jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(chunk) = tokio::time::timeout_at(deadline.into(), r.chunk())
        .await
        .expect("events timed out")
        .unwrap()
    {
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut kind, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if kind.is_empty() {
                continue; // keep-alive comment
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            let last = kind == "end";
            events.push((kind, v));
            if last {
                return events;
            }
        }
    }
    panic!("the event stream ended without an end event: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_profiles_and_bad_files_name_row_and_column() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (code, ds, location) = upload(&s, "text/csv", iris_csv()).await;
    assert_eq!(code, 201, "{ds}");
    let id = ds["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ds_"));
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/datasets/{id}").as_str())
    );
    assert_eq!(ds["rows"], 120);
    assert_eq!(ds["duplicates"], 1);
    let cols = ds["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 5);
    assert_eq!(cols[0]["name"], "sepal_length");
    assert_eq!(cols[0]["dtype"], "float");
    assert_eq!(cols[0]["missing"], 0);
    for k in ["min", "max", "mean", "std"] {
        assert!(cols[0][k].is_number(), "{k}");
    }
    assert_eq!(cols[4]["dtype"], "category");
    assert_eq!(cols[4]["categories"]["setosa"], 40);

    let (code, list) = s.get("/v1/datasets").await;
    assert_eq!(
        (code, list["datasets"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (code, one) = s.get(&format!("/v1/datasets/{id}")).await;
    assert_eq!((code, &one["rows"]), (200, &json!(120)));

    // JSON records, semicolons and quoted fields.
    let (code, ds2, _) = upload(
        &s,
        "application/json",
        r#"[{"a": 1, "b": "x"}, {"a": 2.5, "b": null}]"#,
    )
    .await;
    assert_eq!((code, &ds2["rows"]), (201, &json!(2)), "{ds2}");
    let (code, ds3, _) = upload(&s, "text/csv", "a;b\n1;\"x;y\"\n2;z\n").await;
    assert_eq!(
        (code, &ds3["columns"][1]["dtype"]),
        (201, &json!("category")),
        "{ds3}"
    );

    let bad: Vec<(&str, Vec<u8>, u16, &[&str])> = vec![
        (
            "text/csv",
            b"a,b,c\n1,2,3\n4,5\n".to_vec(),
            400,
            &["row 2", "2 fields", "3"],
        ),
        (
            "text/csv",
            b"a,b\n1,\xff\xfe\n".to_vec(),
            400,
            &["row 1", "UTF-8"],
        ),
        ("text/csv", Vec::new(), 400, &["empty"]),
        (
            "text/csv",
            b"a,b,a\n1,2,3\n".to_vec(),
            400,
            &["'a'", "twice"],
        ),
        ("text/csv", b"a,b\n".to_vec(), 400, &["no"]),
        ("application/xml", b"<a/>".to_vec(), 415, &["xml"]),
    ];
    for (ct, body, status, fragments) in bad {
        let (code, e, _) = upload(&s, ct, body.clone()).await;
        assert_eq!(code, status, "{} → {e}", String::from_utf8_lossy(&body));
        let msg = e["error"].as_str().unwrap();
        for f in fragments {
            assert!(msg.contains(f), "{msg:?} lacks {f:?}");
        }
    }
    // Only the three good uploads were kept.
    let (_, list) = s.get("/v1/datasets").await;
    assert_eq!(list["datasets"].as_array().unwrap().len(), 3);

    // Delete removes the files.
    let dir = s.data.path().join("datasets").join(&id);
    assert!(dir.exists());
    let r = s
        .client
        .delete(s.url(&format!("/v1/datasets/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!dir.exists());
    let (code, e) = s.get(&format!("/v1/datasets/{id}")).await;
    assert_eq!((code, e["code"].as_str()), (404, Some("dataset_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_413_and_leaves_nothing() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "max_upload_bytes = 1000").await;
    let (code, e, _) = upload(&s, "text/csv", iris_csv()).await;
    assert_eq!((code, e["code"].as_str()), (413, Some("body_too_large")));
    // Streamed without a length: refused while streaming, still nothing left.
    let stream =
        futures_util::stream::iter((0..50).map(|_| Ok::<_, std::io::Error>(vec![b'1'; 100])));
    let sent = s
        .client
        .post(s.url("/v1/datasets"))
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The server answers 413 as soon as the limit is passed; a client still sending may see
    // the connection close instead of reading that answer. Either way nothing is stored.
    if let Ok(r) = sent {
        assert_eq!(r.status(), 413);
    }
    // An aborted upload's temporary file is removed as its task ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leftovers: Vec<_> = std::fs::read_dir(s.data.path().join("datasets"))
            .unwrap()
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{leftovers:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_publishes_and_serves_with_named_features() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({
        "model": "flowers",
        "dataset": ds["id"],
        "target": "species",
        "task": "classification",
        "features": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "preprocessing": {"missing": "mean", "drop_duplicates": true, "outliers": null, "categorical": "one_hot", "scale": "standard"},
        "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                   {"type": "dense", "units": 3, "activation": "softmax"}],
        "training": {"optimizer": {"type": "adam", "learning_rate": 0.01}, "loss": "sparse_categorical_crossentropy",
                     "metrics": ["accuracy"], "epochs": 30, "batch_size": 16, "validation_split": 0.2, "seed": 7,
                     "early_stopping": null, "refit": false}
    });
    let r = s
        .client
        .post(s.url("/v1/training-jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/training-jobs/{id}"));
    assert!(
        ["queued", "running"].contains(&job["state"].as_str().unwrap()),
        "{job}"
    );

    let events = follow(&s, &id).await;
    let epochs: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "epoch")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(epochs.len(), 30);
    for (i, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"], i + 1);
        for k in ["loss", "val_loss", "samples_per_sec", "eta_seconds"] {
            assert!(e[k].is_number(), "{k} in {e}");
        }
        assert!(e["metrics"]["val_accuracy"].is_number());
    }
    let (_, end) = events.last().unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    let version = end["version"].as_u64().unwrap();
    assert_eq!(version, 1);

    let (code, job) = s.get(&format!("/v1/training-jobs/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["version"], 1);
    assert_eq!(job["history"].as_array().unwrap().len(), 30);
    assert_eq!(job["progress"]["fraction"], 1.0);
    assert!(
        job["metrics"]["accuracy"].as_f64().unwrap() > 0.8,
        "{}",
        job["metrics"]
    );
    assert!(job["metrics"]["confusion_matrix"].is_array());
    let report = &job["report"];
    assert_eq!(report["duplicates_dropped"], 1);
    assert_eq!(
        report["train_rows"].as_u64().unwrap() + report["validation_rows"].as_u64().unwrap(),
        119
    );
    assert_eq!(
        report["target"]["classes"],
        json!(["setosa", "versicolor", "virginica"])
    );

    // Served at once, with the fitted preprocessing applied to named features.
    let (code, r) = s
        .post(
            "/v1/models/flowers:classify",
            &json!({"examples": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
                                  {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["results"][0][0][0], "setosa");
    assert_eq!(r["results"][1][0][0], "virginica");
    let (_, md) = s.get("/v1/models/flowers/metadata").await;
    assert_eq!(md["metadata"]["training"]["job"], id.as_str());
    assert!(models.path().join("flowers/1/model.safetensors").is_file());

    // The job list filters by state and model.
    let (_, list) = s
        .get("/v1/training-jobs?state=succeeded&model=flowers")
        .await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let (_, list) = s.get("/v1/training-jobs?state=failed").await;
    assert!(list["jobs"].as_array().unwrap().is_empty());
    let (code, _) = s.get("/v1/training-jobs?state=bogus").await;
    assert_eq!(code, 400);
    // A query string axum cannot read is our JSON error too, naming the parameter.
    for bad in ["limit=lots", "colour=red"] {
        let (code, body) = s.get(&format!("/v1/training-jobs?{bad}")).await;
        assert_eq!(code, 400, "{bad}");
        assert_eq!(body["code"], "invalid_input", "{bad}: {body}");
        let key = bad.split('=').next().unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(key),
            "{bad}: {body}"
        );
    }
    // Following a finished job replays its events and ends.
    assert_eq!(follow(&s, &id).await.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_before_queuing() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let id = ds["id"].as_str().unwrap();
    let cases = vec![
        (
            json!({"model": "m", "dataset": id, "target": "species", "layers": [{"type": "transformer", "units": 3}]}),
            "transformer",
        ),
        (
            json!({"model": "m", "dataset": id, "target": "species", "layers": [{"type": "dense", "units": 4, "activation": "softmax"}]}),
            "4 units",
        ),
        (
            json!({"model": "m", "dataset": id, "target": "color"}),
            "target column 'color'",
        ),
        (
            json!({"model": "m", "dataset": id, "target": "species", "features": ["sepal_length", "stem"]}),
            "feature 'stem'",
        ),
        (
            json!({"model": "m", "dataset": "ds_0000000000000000", "target": "species"}),
            "not found",
        ),
        (
            json!({"model": "../x", "dataset": id, "target": "species"}),
            "model name",
        ),
        (
            json!({"model": "m", "dataset": id, "target": "species", "training": {"loss": "mse"}}),
            "mse",
        ),
        (
            json!({"model": "m", "dataset": id, "target": "species", "training": {"optimizer": {"type": "adam", "learning_rate": -1}}}),
            "learning_rate",
        ),
        (json!({"model": "m", "target": "species"}), "dataset"),
    ];
    for (spec, fragment) in cases {
        let (code, e) = s.post("/v1/training-jobs", &spec).await;
        assert_eq!(
            (code, e["code"].as_str()),
            (400, Some("invalid_spec")),
            "{spec} → {e}"
        );
        assert!(
            e["error"].as_str().unwrap().contains(fragment),
            "{spec}: {e}"
        );
    }
    let (_, list) = s.get("/v1/training-jobs").await;
    assert!(
        list["jobs"].as_array().unwrap().is_empty(),
        "a refused spec was stored"
    );
    let (code, e) = s.get("/v1/training-jobs/job_0000000000000000").await;
    assert_eq!((code, e["code"].as_str()), (404, Some("job_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_serving_goes_on() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "long", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 100000, "batch_size": 1, "early_stopping": null}});
    let (code, job) = s.post("/v1/training-jobs", &spec).await;
    assert_eq!(code, 202);
    let id = job["id"].as_str().unwrap().to_owned();
    // Wait for it to run a few epochs, predicting all the while.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut served = 0;
    loop {
        let (code, _) = s
            .post(
                "/v1/models/mlp:predict",
                &json!({"instances": [[1, 2, 3, 4, 5, 6]]}),
            )
            .await;
        assert_eq!(code, 200, "a prediction failed while training");
        served += 1;
        let (_, j) = s.get(&format!("/v1/training-jobs/{id}")).await;
        if j["state"] == "running" && j["progress"]["epoch"].as_u64().unwrap() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not progress: {j}");
    }
    assert!(served > 0);
    let (code, j) = s
        .post(&format!("/v1/training-jobs/{id}:cancel"), &json!({}))
        .await;
    assert_eq!(code, 200, "{j}");
    let events = follow(&s, &id).await;
    assert_eq!(events.last().unwrap().1["state"], "cancelled");
    let (_, j) = s.get(&format!("/v1/training-jobs/{id}")).await;
    assert_eq!(j["state"], "cancelled");
    assert!(
        !models.path().join("long").exists(),
        "a cancelled job published a model"
    );
    let (code, e) = s
        .post(&format!("/v1/training-jobs/{id}:cancel"), &json!({}))
        .await;
    assert_eq!((code, e["code"].as_str()), (409, Some("conflict")));
    // A queued job is cancelled at once.
    let (_, a) = s.post("/v1/training-jobs", &spec).await;
    let (_, b) = s.post("/v1/training-jobs", &spec).await;
    let (code, j) = s
        .post(
            &format!("/v1/training-jobs/{}:cancel", b["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!((code, j["state"].as_str()), (200, Some("cancelled")), "{j}");
    let (code, _) = s
        .post(
            &format!("/v1/training-jobs/{}:cancel", a["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(code, 200);
}
