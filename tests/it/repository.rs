//! Model management: upload → infer → delete, load/unload transitions, and model names
//! refused before anything touches the file system.

use serde_json::{json, Value};

use crate::util::*;

fn form(spec: &Value, weights: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(
            "model.json",
            reqwest::multipart::Part::bytes(serde_json::to_vec(spec).unwrap())
                .file_name("model.json"),
        )
        .part(
            "model.safetensors",
            reqwest::multipart::Part::bytes(weights).file_name("model.safetensors"),
        )
}

fn weights_bytes(spec: &Value) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&weights_for(spec), &path).unwrap();
    std::fs::read(path).unwrap()
}

async fn upload(s: &Server, name: &str, f: reqwest::multipart::Form) -> (u16, Value) {
    let r = s
        .client
        .post(s.url(&format!("/v1/models/{name}/versions")))
        .multipart(f)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_infer_delete() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "poll_interval_ms = 50").await;
    let spec = mlp_spec(6);
    let (code, r) = upload(&s, "up", form(&spec, weights_bytes(&spec))).await;
    assert_eq!(code, 201, "{r}");
    assert_eq!(
        (r["version"].as_str(), r["state"].as_str()),
        (Some("1"), Some("AVAILABLE"))
    );
    let body = json!({"instances": [[1, 2, 3, 4, 5, 6]]});
    assert_eq!(s.post("/v1/models/up:predict", &body).await.0, 200);
    let (code, r) = upload(&s, "up", form(&spec, weights_bytes(&spec))).await;
    assert_eq!((code, r["version"].as_str()), (201, Some("2")));
    let (_, st) = s.get("/v1/models").await;
    assert_eq!(st["models"][0]["default_version"], "2");

    // A broken upload is refused with its reason and leaves nothing behind.
    let mut w = weights_for(&spec);
    w.remove("1.bias");
    let dir = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&w, dir.path().join("w")).unwrap();
    let (code, e) = upload(
        &s,
        "up",
        form(&spec, std::fs::read(dir.path().join("w")).unwrap()),
    )
    .await;
    assert_eq!(
        (code, e["code"].as_str()),
        (400, Some("invalid_model")),
        "{e}"
    );
    assert!(e["error"].as_str().unwrap().contains("1.bias"), "{e}");
    let (code, e) = upload(&s, "up", form(&json!({"format_version": 1}), vec![1, 2, 3])).await;
    assert_eq!(
        (code, e["code"].as_str()),
        (400, Some("invalid_model")),
        "{e}"
    );
    let only_spec = reqwest::multipart::Form::new().part(
        "model.json",
        reqwest::multipart::Part::bytes(b"{}".to_vec()).file_name("model.json"),
    );
    assert_eq!(upload(&s, "up", only_spec).await.0, 400);
    // Not multipart, or multipart without its boundary: kiln's JSON error, not axum's text.
    for content_type in ["multipart/form-data", "application/json"] {
        let r = s
            .post_raw("/v1/models/up/versions", content_type, "{}")
            .await;
        assert_eq!(r.status(), 400, "{content_type}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_input", "{e}");
        assert!(
            e["error"].as_str().unwrap().contains("multipart/form-data"),
            "{e}"
        );
    }
    assert_eq!(entries(&models.path().join("up")), ["1", "2"]);

    // Delete a version: the default falls back to the previous one.
    let r = s
        .client
        .delete(s.url("/v1/models/up/versions/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(entries(&models.path().join("up")), ["1"]);
    assert_eq!(
        s.post("/v1/models/up/versions/2:predict", &body).await.0,
        404
    );
    assert_eq!(s.post("/v1/models/up:predict", &body).await.0, 200);
    let r = s
        .client
        .delete(s.url("/v1/models/up/versions/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Delete the model.
    let r = s
        .client
        .delete(s.url("/v1/models/up"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!models.path().join("up").exists());
    assert!(
        entries(models.path()).is_empty(),
        "{:?}",
        entries(models.path())
    );
    let (code, e) = s.post("/v1/models/up:predict", &body).await;
    assert_eq!((code, e["code"].as_str()), (404, Some("model_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_unload_transitions() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "m", 1, &mlp_spec(6));
    fixture(
        models.path(),
        "broken",
        1,
        &json!({"format_version": 1, "task": "regression", "input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}]}),
    );
    std::fs::remove_file(models.path().join("broken/1/model.safetensors")).unwrap();
    let s = Server::start(models.path(), "poll_interval_ms = 30").await;
    let (code, idx) = s
        .client
        .post(s.url("/v2/repository/index"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(code, 200);
    let idx: Value = idx.json().await.unwrap();
    assert_eq!(
        idx[0],
        json!({"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": idx[0]["reason"]})
    );
    assert!(idx[0]["reason"]
        .as_str()
        .unwrap()
        .contains("model.safetensors"));
    assert_eq!(
        idx[1],
        json!({"name": "m", "version": "1", "state": "READY", "reason": ""})
    );

    let body = json!({"instances": [[1, 2, 3, 4, 5, 6]]});
    let r = s
        .client
        .post(s.url("/v2/repository/models/m/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, e) = s.post("/v1/models/m:predict", &body).await;
    assert_eq!(code, 503, "{e}");
    assert_eq!(s.get("/v2/models/m/ready").await.0, 503);
    // The watcher does not load it back on its own.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(s.post("/v1/models/m:predict", &body).await.0, 503);
    let (_, st) = s.get("/v1/models/m").await;
    assert_eq!(st["model_version_status"][0]["state"], "END");
    let r = s
        .client
        .post(s.url("/v2/repository/models/m/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.post("/v1/models/m:predict", &body).await.0, 200);
    assert_eq!(s.get("/v2/models/m/ready").await.0, 200);
    // Loading a model that cannot load says why; unknown models are 404.
    let r = s
        .client
        .post(s.url("/v2/repository/models/broken/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_model");
    let r = s
        .client
        .post(s.url("/v2/repository/models/ghost/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_model_names_are_refused_everywhere_and_create_nothing() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let spec = mlp_spec(6);
    let long = "x".repeat(65);
    // ("../" itself is resolved away by every HTTP client before it is sent.)
    for name in [
        "a..b",
        ".hidden",
        "-x",
        "a%2Fb",
        "a%2F..%2Fb",
        "a%20b",
        "%C3%A9",
        long.as_str(),
    ] {
        let (code, e) = upload(&s, name, form(&spec, weights_bytes(&spec))).await;
        assert_eq!(
            (code, e["code"].as_str()),
            (400, Some("invalid_model_name")),
            "{name}: {e}"
        );
        for (method, path) in [
            ("GET", format!("/v1/models/{name}")),
            ("GET", format!("/v1/models/{name}/metadata")),
            ("POST", format!("/v1/models/{name}:predict")),
            ("DELETE", format!("/v1/models/{name}")),
            ("DELETE", format!("/v1/models/{name}/versions/1")),
            ("GET", format!("/v2/models/{name}")),
            ("POST", format!("/v2/models/{name}/infer")),
            ("POST", format!("/v2/repository/models/{name}/load")),
            ("POST", format!("/v2/repository/models/{name}/unload")),
        ] {
            let req = s.client.request(method.parse().unwrap(), s.url(&path));
            let req = if method == "POST" {
                req.json(&json!({"instances": [[1]]}))
            } else {
                req
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400, "{method} {path}");
            assert_eq!(
                r.json::<Value>().await.unwrap()["code"],
                "invalid_model_name",
                "{method} {path}"
            );
        }
    }
    assert!(
        entries(models.path()).is_empty(),
        "{:?}",
        entries(models.path())
    );
    let (code, _) = s
        .post(
            "/v1/training-jobs",
            &json!({"model": "..", "dataset": "ds_0000000000000000", "target": "y"}),
        )
        .await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_loads_its_own_version_at_once_under_the_policy() {
    let models = tempfile::tempdir().unwrap();
    // No poll during the test: whatever serves was loaded by the upload itself.
    let s = Server::start(
        models.path(),
        "poll_interval_ms = 600000\n[models.pinned]\nversion_policy = [1]",
    )
    .await;
    let spec = mlp_spec(6);
    // Dropped in by hand after startup: only a scan would find it.
    fixture(models.path(), "by-hand", 1, &spec);
    let body = json!({"instances": [[1, 2, 3, 4, 5, 6]]});

    let (code, r) = upload(&s, "up", form(&spec, weights_bytes(&spec))).await;
    assert_eq!((code, r["state"].as_str()), (201, Some("AVAILABLE")), "{r}");
    assert_eq!(s.post("/v1/models/up:predict", &body).await.0, 200);
    let (code, r) = upload(&s, "up", form(&spec, weights_bytes(&spec))).await;
    assert_eq!((code, r["state"].as_str()), (201, Some("AVAILABLE")), "{r}");
    let (_, st) = s.get("/v1/models/up").await;
    let states: Vec<&str> = st["model_version_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{st}");
    assert!(
        states.contains(&"END"),
        "version 1 is retired under latest: {st}"
    );
    // The uploads loaded their own versions, not the rest of the directory.
    let (code, e) = s.post("/v1/models/by-hand:predict", &body).await;
    assert_eq!((code, e["code"].as_str()), (404, Some("model_not_found")));

    // A version the policy does not serve is stored but not loaded.
    for (version, state) in [("1", "AVAILABLE"), ("2", "END")] {
        let (code, r) = upload(&s, "pinned", form(&spec, weights_bytes(&spec))).await;
        assert_eq!(
            (code, r["version"].as_str(), r["state"].as_str()),
            (201, Some(version), Some(state)),
            "{r}"
        );
    }
    assert_eq!(entries(&models.path().join("pinned")), ["1", "2"]);
    let (_, list) = s.get("/v1/models").await;
    let pinned = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pinned")
        .unwrap();
    assert_eq!(pinned["default_version"], "1", "{list}");
}
