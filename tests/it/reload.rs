//! The watcher: hot reload without a gap, broken models beside good ones, version policies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

async fn wait_for(s: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = s.get("/v1/models").await;
        if check(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn model<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or(&Value::Null)
}

fn out3_spec() -> Value {
    mlp_spec(6)
}

fn out4_spec() -> Value {
    json!({
        "format_version": 1, "task": "classification", "input": {"shape": [6]},
        "layers": [{"type": "dense", "units": 4}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_replaces_the_old_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "m", 1, &out3_spec());
    let s = Arc::new(Server::start(dir.path(), "poll_interval_ms = 30").await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut hammers = Vec::new();
    for _ in 0..3 {
        let (s, stop, ok, errors) = (s.clone(), stop.clone(), ok.clone(), errors.clone());
        hammers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (code, v) = s
                    .post(
                        "/v1/models/m:predict",
                        &json!({"instances": [[0, 1, 2, 3, 4, 5]]}),
                    )
                    .await;
                if code == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("error during reload: {code} {v}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    fixture(dir.path(), "m", 2, &out4_spec());
    wait_for(&s, "version 2", |l| model(l, "m")["default_version"] == "2").await;
    let (_, r) = s
        .post(
            "/v1/models/m:predict",
            &json!({"instances": [[0, 1, 2, 3, 4, 5]]}),
        )
        .await;
    assert_eq!(r["predictions"][0].as_array().unwrap().len(), 4);
    let list = wait_for(&s, "version 1 retired", |l| {
        model(l, "m")["versions"][0]["state"] == "END"
    })
    .await;
    assert_eq!(model(&list, "m")["versions"][1]["state"], "AVAILABLE");
    let (code, e) = s
        .post(
            "/v1/models/m/versions/1:predict",
            &json!({"instances": [[0, 1, 2, 3, 4, 5]]}),
        )
        .await;
    assert_eq!((code, e["code"].as_str()), (404, Some("version_not_found")));
    let (_, st) = s.get("/v1/models/m/versions/1").await;
    assert_eq!(st["model_version_status"][0]["state"], "END");

    // Removing version 2 brings version 1 back, again without a gap.
    std::fs::remove_dir_all(dir.path().join("m/2")).unwrap();
    wait_for(&s, "version 1 again", |l| {
        model(l, "m")["default_version"] == "1"
            && model(l, "m")["versions"].as_array().unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "requests failed during the swap"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    let (_, r) = s
        .post(
            "/v1/models/m:predict",
            &json!({"instances": [[0, 1, 2, 3, 4, 5]]}),
        )
        .await;
    assert_eq!(r["predictions"][0].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_models_fail_with_their_reason_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fixture(root, "good", 1, &mlp_spec(6));
    // Bad JSON.
    let bad = root.join("badjson/1");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("model.json"), "{\"format_version\": 1, ").unwrap();
    // Unknown layer.
    let mut spec = mlp_spec(6);
    let w = weights_for(&spec);
    spec["layers"][1] = json!({"type": "transformer", "units": 3});
    write_version(root, "unknownlayer", 1, &spec, &w);
    // Missing tensor.
    let spec = mlp_spec(6);
    let mut w = weights_for(&spec);
    w.remove("1.bias");
    write_version(root, "missing", 1, &spec, &w);
    // Misshapen tensor: the weights of a 5-wide input for a 6-wide model.
    write_version(
        root,
        "misshapen",
        1,
        &mlp_spec(6),
        &weights_for(&mlp_spec(5)),
    );
    // Missing weights file.
    let nofile = root.join("noweights/1");
    std::fs::create_dir_all(&nofile).unwrap();
    std::fs::write(
        nofile.join("model.json"),
        serde_json::to_vec(&mlp_spec(6)).unwrap(),
    )
    .unwrap();

    let s = Server::start(root, "poll_interval_ms = 30").await;
    let (code, _) = s.get("/health/ready").await;
    assert_eq!(code, 200);
    let (_, list) = s.get("/v1/models").await;
    let expect = [
        ("badjson", "model.json"),
        ("unknownlayer", "transformer"),
        ("missing", "1.bias"),
        ("misshapen", "0.weight"),
        ("noweights", "model.safetensors"),
    ];
    for (name, fragment) in expect {
        let v = &model(&list, name)["versions"][0];
        assert_eq!(v["state"], "FAILED", "{name}: {v}");
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(fragment), "{name}: {err}");
        let (code, st) = s.get(&format!("/v1/models/{name}")).await;
        assert_eq!(code, 200);
        assert_eq!(st["model_version_status"][0]["state"], "FAILED");
        assert!(st["model_version_status"][0]["status"]["error_message"]
            .as_str()
            .unwrap()
            .contains(fragment));
        let (code, e) = s
            .post(
                &format!("/v1/models/{name}:predict"),
                &json!({"instances": [[1, 2, 3, 4, 5, 6]]}),
            )
            .await;
        assert_eq!(code, 503, "{name}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains("failed to load"),
            "{e}"
        );
    }
    let missing_err = model(&list, "missing")["versions"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(missing_err.contains("layer 1"), "{missing_err}");
    assert!(model(&list, "misshapen")["versions"][0]["error"]
        .as_str()
        .unwrap()
        .contains("[16, 6]"));
    let (code, _) = s
        .post(
            "/v1/models/good:predict",
            &json!({"instances": [[1, 2, 3, 4, 5, 6]]}),
        )
        .await;
    assert_eq!(code, 200);

    // Fixing a failed version's files makes the watcher load it again.
    std::fs::write(
        bad.join("model.json"),
        serde_json::to_vec(&mlp_spec(6)).unwrap(),
    )
    .unwrap();
    candle_core::safetensors::save(&weights_for(&mlp_spec(6)), bad.join("model.safetensors"))
        .unwrap();
    wait_for(&s, "the fixed model", |l| {
        model(l, "badjson")["versions"][0]["state"] == "AVAILABLE"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_policies_and_temporary_directories() {
    let dir = tempfile::tempdir().unwrap();
    for v in 1..=3 {
        fixture(dir.path(), "all", v, &mlp_spec(6));
        fixture(dir.path(), "some", v, &mlp_spec(6));
        fixture(dir.path(), "latest", v, &mlp_spec(6));
    }
    // An unfinished publish: never loaded.
    let tmp = fixture(dir.path(), "latest", 9, &mlp_spec(6));
    std::fs::rename(&tmp, dir.path().join("latest/9.tmp")).unwrap();
    let s = Server::start(
        dir.path(),
        "[models.all]\nversion_policy = \"all\"\n[models.some]\nversion_policy = [1, 3]",
    )
    .await;
    let (_, list) = s.get("/v1/models").await;
    let states = |name: &str| -> Vec<(String, String)> {
        model(&list, name)["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_str().unwrap().to_owned(),
                    v["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let avail = |vs: &[&str]| {
        vs.iter()
            .map(|v| (v.to_string(), "AVAILABLE".to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(states("all"), avail(&["1", "2", "3"]));
    assert_eq!(states("some"), avail(&["1", "3"]));
    assert_eq!(states("latest"), avail(&["3"]));
    assert_eq!(model(&list, "all")["default_version"], "3");
    let body = json!({"instances": [[1, 2, 3, 4, 5, 6]]});
    assert_eq!(
        s.post("/v1/models/all/versions/2:predict", &body).await.0,
        200
    );
    assert_eq!(
        s.post("/v1/models/some/versions/2:predict", &body).await.0,
        404
    );
    assert_eq!(
        s.post("/v1/models/latest/versions/1:predict", &body)
            .await
            .0,
        404
    );
    assert_eq!(
        s.post("/v1/models/latest/versions/9:predict", &body)
            .await
            .0,
        404
    );
}
