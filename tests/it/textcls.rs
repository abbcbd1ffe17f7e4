//! Text classifiers on the real all-MiniLM-L6-v2: a classification head fine-tuned by a
//! training job (`base_model`) on a labelled text set built from the VADER sentiment
//! lexicon (PyPI vaderSentiment 3.3.2, scripts/setup/35-vader.sh), compared with a
//! logistic regression on the same embeddings; served through TEI's /predict, TF Serving's
//! :predict and :classify, and V2. A pair classifier from the same job path reranks
//! (/rerank); a Hugging Face BertForSequenceClassification directory imports and serves.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::text::{import, minilm, PATIENT};
use crate::training::{follow, upload};
use crate::util::*;

/// A word and whether it is positive.
type Word = (String, bool);

/// The VADER lexicon, or `None` (skipped) under plain `cargo test`.
fn vader() -> Option<String> {
    external(
        "KILN_TEST_VADER",
        "the VADER sentiment lexicon (PyPI vaderSentiment 3.3.2)",
    )
}

/// The lexicon's plain words (3+ lowercase letters) rated clearly positive or negative
/// (mean rating at least 1.5 away from neutral), sorted: (word, positive).
fn lexicon_words(path: &str) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut words: Vec<(String, bool)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split('\t');
            let word = parts.next()?;
            let mean: f64 = parts.next()?.parse().ok()?;
            let plain = word.len() >= 3 && word.bytes().all(|b| b.is_ascii_lowercase());
            (plain && mean.abs() >= 1.5).then(|| (word.to_owned(), mean > 0.0))
        })
        .collect();
    words.sort();
    words
}

/// Every 8th word (from `offset`): the training set (offset 0) and a disjoint test set
/// (offset 4), about 500 words each.
fn every_eighth(words: &[(String, bool)], offset: usize) -> Vec<(String, bool)> {
    words.iter().skip(offset).step_by(8).cloned().collect()
}

fn label(positive: bool) -> &'static str {
    if positive {
        "positive"
    } else {
        "negative"
    }
}

async fn submit(s: &Server, spec: &Value) -> (u16, Value) {
    s.post("/v1/training-jobs", spec).await
}

/// Runs a job to its end; the finished job.
async fn train(s: &Server, spec: &Value) -> Value {
    let (code, job) = submit(s, spec).await;
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let events = follow(s, &id).await;
    let (_, end) = events.last().unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    assert!(events.iter().any(|(k, _)| k == "epoch"));
    let (_, job) = s.get(&format!("/v1/training-jobs/{id}")).await;
    job
}

/// Embeddings of `texts` from the served MiniLM, 32 at a time.
async fn embeddings(s: &Server, texts: &[String]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for chunk in texts.chunks(32) {
        let (code, body) = s
            .post("/models/minilm/embed", &json!({"inputs": chunk}))
            .await;
        assert_eq!(code, 200, "{body}");
        for v in body.as_array().unwrap() {
            out.push(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
            );
        }
    }
    out
}

/// A plain logistic regression (full-batch gradient descent on the standardized inputs,
/// L2 1e-4, 500 steps), written here so the comparison does not share kiln's trainer.
fn logistic_regression(x: &[Vec<f64>], y: &[bool]) -> impl Fn(&[f64]) -> bool {
    let d = x[0].len();
    let n = x.len() as f64;
    let mean: Vec<f64> = (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let sd: Vec<f64> = (0..d)
        .map(|j| {
            let v = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
            v.sqrt().max(1e-9)
        })
        .collect();
    let z = move |r: &[f64]| -> Vec<f64> { (0..d).map(|j| (r[j] - mean[j]) / sd[j]).collect() };
    let xs: Vec<Vec<f64>> = x.iter().map(|r| z(r)).collect();
    let z = z.clone();
    let (mut w, mut b) = (vec![0.0; d], 0.0);
    for _ in 0..500 {
        let mut gw = vec![0.0; d];
        let mut gb = 0.0;
        for (r, &t) in xs.iter().zip(y) {
            let s: f64 = b + r.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
            let p = 1.0 / (1.0 + (-s).exp());
            let e = p - f64::from(u8::from(t));
            gb += e;
            for j in 0..d {
                gw[j] += e * r[j];
            }
        }
        for j in 0..d {
            w[j] -= 0.5 * (gw[j] / n + 1e-4 * w[j]);
        }
        b -= 0.5 * gb / n;
    }
    move |r: &[f64]| {
        let r = z(r);
        b + r.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>() > 0.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fine_tunes_a_text_classifier_on_minilm() {
    let (Some(dir), Some(lexicon)) = (minilm(), vader()) else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    import(models.path(), &dir, "minilm").await;
    let s = Server::start(models.path(), PATIENT).await;
    let words = lexicon_words(&lexicon);
    let (train_set, test_set) = (every_eighth(&words, 0), every_eighth(&words, 4));
    let mut csv = String::from("text,label\n");
    for (w, p) in &train_set {
        csv.push_str(&format!("{w},{}\n", label(*p)));
    }
    let (code, ds, _) = upload(&s, "text/csv", csv.into_bytes()).await;
    assert_eq!(code, 201, "{ds}");
    let ds = ds["id"].as_str().unwrap().to_owned();

    // Refused before queuing: unfreezing layers, a numeric feature, an unknown base.
    let base = json!({"model": "sentiment", "dataset": ds, "target": "label",
                      "features": ["text"], "base_model": "minilm"});
    let mut spec = base.clone();
    spec["fine_tune"] = json!({"layers": 2});
    let (code, body) = submit(&s, &spec).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("fine_tune.layers 2"),
        "{body}"
    );
    let mut spec = base.clone();
    spec["base_model"] = json!("nope");
    let (code, body) = submit(&s, &spec).await;
    assert_eq!(code, 400, "{body}");
    let mut spec = base.clone();
    spec["features"] = json!(["text", "label"]);
    let (code, body) = submit(&s, &spec).await;
    assert_eq!(code, 400, "{body}");

    // The job: cleaning, split, metrics, events as every job; a transformer version.
    let job = train(&s, &base).await;
    let val_accuracy = job["metrics"]["accuracy"].as_f64().unwrap();
    assert!(
        job["spec"]["defaults"]["base_model"].is_string() || job["spec"]["base_model"] == "minilm",
        "{job}"
    );
    assert_eq!(job["version"], 1);

    // Served: TEI's /predict, one text → its classes by score.
    let (code, body) = s
        .post("/models/sentiment/predict", &json!({"inputs": "wonderful"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let classes = body.as_array().unwrap();
    assert_eq!(classes.len(), 2);
    assert_eq!(classes[0]["label"], "positive", "{body}");
    let (a, b) = (
        classes[0]["score"].as_f64().unwrap(),
        classes[1]["score"].as_f64().unwrap(),
    );
    assert!(a >= b && (a + b - 1.0).abs() < 1e-4, "{body}");

    // The held-out words, through /predict in batches: the fine-tuned accuracy.
    let mut right = 0;
    for chunk in test_set.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|(w, _)| w.as_str()).collect();
        let (code, body) = s
            .post("/models/sentiment/predict", &json!({"inputs": texts}))
            .await;
        assert_eq!(code, 200, "{body}");
        for ((_, p), classes) in chunk.iter().zip(body.as_array().unwrap()) {
            right += usize::from(classes[0]["label"] == label(*p));
        }
    }
    let kiln_accuracy = right as f64 / test_set.len() as f64;

    // A logistic regression on the same embeddings (MiniLM's, through /embed).
    let train_words: Vec<String> = train_set.iter().map(|(w, _)| w.clone()).collect();
    let test_words: Vec<String> = test_set.iter().map(|(w, _)| w.clone()).collect();
    let x_train = embeddings(&s, &train_words).await;
    let y_train: Vec<bool> = train_set.iter().map(|(_, p)| *p).collect();
    let lr = logistic_regression(&x_train, &y_train);
    let x_test = embeddings(&s, &test_words).await;
    let lr_right = x_test
        .iter()
        .zip(&test_set)
        .filter(|(x, (_, p))| lr(x) == *p)
        .count();
    let lr_accuracy = lr_right as f64 / test_set.len() as f64;
    eprintln!(
        "VADER words: {} train, {} test; kiln head: validation accuracy {val_accuracy:.3}, test accuracy {kiln_accuracy:.3}; logistic regression: test accuracy {lr_accuracy:.3}",
        train_set.len(),
        test_set.len()
    );
    assert!(
        kiln_accuracy >= 0.8,
        "kiln {kiln_accuracy}, logistic regression {lr_accuracy}"
    );
    assert!(
        kiln_accuracy >= lr_accuracy - 0.05,
        "kiln {kiln_accuracy}, logistic regression {lr_accuracy}"
    );

    // raw_scores: the head's outputs as they are; batches answer a list per input.
    let (code, raw) = s
        .post(
            "/models/sentiment/predict",
            &json!({"inputs": ["awful", "lovely", "ugly"], "raw_scores": true}),
        )
        .await;
    assert_eq!(code, 200, "{raw}");
    assert_eq!(raw.as_array().unwrap().len(), 3);
    // The only text classifier is not the only text model: unscoped routes ask for a name.
    let (code, body) = s.post("/predict", &json!({"inputs": "nice"})).await;
    assert_eq!(code, 400, "{body}");

    // TF Serving: :classify (examples) and :predict (instances), and V2.
    let (code, body) = s
        .post(
            "/v1/models/sentiment:classify",
            &json!({"examples": [{"text": "delightful"}, {"text": "horrible"}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0][0][0], "positive", "{body}");
    assert_eq!(body["results"][1][0][0], "negative", "{body}");
    let (code, body) = s
        .post(
            "/v1/models/sentiment:predict",
            &json!({"instances": ["delightful"]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["predictions"][0].as_array().unwrap().len(), 2);
    let (code, body) = s
        .post(
            "/v2/models/sentiment/infer",
            &json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["delightful", "horrible"]}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let label_out = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label_out["data"], json!(["positive", "negative"]), "{body}");
    // Metadata says what it takes and returns.
    let (code, meta) = s.get("/v2/models/sentiment").await;
    assert_eq!(code, 200);
    assert_eq!(meta["inputs"][0]["name"], "text");
    assert_eq!(meta["outputs"][0]["name"], "probabilities");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 2]));
    let (code, info) = s.get("/models/sentiment/info").await;
    assert_eq!(code, 200);
    assert_eq!(
        info["model_type"]["classifier"]["id2label"]["1"], "positive",
        "{info}"
    );
    let (code, meta) = s.get("/v1/models/sentiment/metadata").await;
    assert_eq!(code, 200);
    assert_eq!(meta["metadata"]["labels"], json!(["negative", "positive"]));
    assert_eq!(meta["metadata"]["transformer"]["head"]["type"], "kiln");
    // Embedding routes refuse a classifier, /predict an embedding model.
    let (code, _) = s
        .post("/models/sentiment/embed", &json!({"inputs": "x"}))
        .await;
    assert_eq!(code, 400);
    let (code, _) = s
        .post("/models/minilm/predict", &json!({"inputs": "x"}))
        .await;
    assert_eq!(code, 400);
    // Errors as everywhere: empty 400, too many 413, too long 413 (truncate cuts).
    let (code, body) = s
        .post("/models/sentiment/predict", &json!({"inputs": []}))
        .await;
    assert_eq!(code, 400, "{body}");
    let many: Vec<String> = (0..33).map(|i| format!("word {i}")).collect();
    let (code, body) = s
        .post("/models/sentiment/predict", &json!({"inputs": many}))
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (413, Some("too_many_rows")),
        "{body}"
    );
    let long = "good ".repeat(300);
    let (code, body) = s
        .post(
            "/models/sentiment/predict",
            &json!({"inputs": ["fine", "okay", long]}),
        )
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (413, Some("input_too_long")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("input 2 is 302 tokens"),
        "{body}"
    );
    let (code, body) = s
        .post(
            "/models/sentiment/predict",
            &json!({"inputs": long, "truncate": true}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // One text per input for a head trained on one text column.
    let (code, body) = s
        .post(
            "/models/sentiment/predict",
            &json!({"inputs": ["good", "bad"]}),
        )
        .await;
    assert_eq!(code, 400, "a pair: {body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_classifier_from_a_job_reranks() {
    let (Some(dir), Some(lexicon)) = (minilm(), vader()) else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    import(models.path(), &dir, "minilm").await;
    let s = Server::start(models.path(), PATIENT).await;
    let words = lexicon_words(&lexicon);
    let (train_set, test_set) = (every_eighth(&words, 0), every_eighth(&words, 4));
    // Query "something good" matches positive words, "something bad" negative ones.
    let (good, bad) = ("something good", "something bad");
    let mut csv = String::from("query,text,relevant\n");
    for (w, p) in &train_set {
        csv.push_str(&format!("{good},{w},{}\n", if *p { "yes" } else { "no" }));
        csv.push_str(&format!("{bad},{w},{}\n", if *p { "no" } else { "yes" }));
    }
    let (code, ds, _) = upload(&s, "text/csv", csv.into_bytes()).await;
    assert_eq!(code, 201, "{ds}");
    let job = train(
        &s,
        &json!({"model": "reranker", "dataset": ds["id"], "target": "relevant",
                "features": ["query", "text"], "base_model": "minilm"}),
    )
    .await;
    eprintln!(
        "pair classifier: validation accuracy {}",
        job["metrics"]["accuracy"]
    );

    // /rerank: a positive and a negative held-out word against each query.
    let mut right = 0;
    let pairs: Vec<(&Word, &Word)> = test_set
        .iter()
        .filter(|(_, p)| *p)
        .zip(test_set.iter().filter(|(_, p)| !*p))
        .take(40)
        .collect();
    for (pos, neg) in &pairs {
        let (code, body) = s
            .post(
                "/models/reranker/rerank",
                &json!({"query": good, "texts": [neg.0, pos.0], "return_text": true}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let ranks = body.as_array().unwrap();
        assert_eq!(ranks.len(), 2);
        assert!(ranks[0]["score"].as_f64() >= ranks[1]["score"].as_f64());
        assert_eq!(
            ranks[0]["text"],
            json!(if ranks[0]["index"] == 0 {
                &neg.0
            } else {
                &pos.0
            })
        );
        right += usize::from(ranks[0]["index"] == 1);
    }
    let share = right as f64 / pairs.len() as f64;
    eprintln!(
        "rerank: the positive word first for 'something good' in {right} of {}",
        pairs.len()
    );
    assert!(share >= 0.75, "{share}");
    // raw_scores: logits (not in [0, 1] in general); without return_text no text.
    let (code, body) = s
        .post(
            "/rerank",
            &json!({"query": good, "texts": ["joyful"], "raw_scores": true}),
        )
        .await;
    assert_eq!(
        code, 400,
        "two text models: the unscoped route asks for a name: {body}"
    );
    let (code, body) = s
        .post(
            "/models/reranker/rerank",
            &json!({"query": good, "texts": ["joyful"], "raw_scores": true}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body[0].get("text").is_none());
    // /predict takes pairs, and refuses single texts for a pair model.
    let (code, body) = s
        .post(
            "/models/reranker/predict",
            &json!({"inputs": [[good, "joyful"], [bad, "joyful"]]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (code, _) = s
        .post("/models/reranker/predict", &json!({"inputs": "joyful"}))
        .await;
    assert_eq!(code, 400);
    // V2 with text and text_pair; :classify with text_pair.
    let (code, body) = s
        .post(
            "/v2/models/reranker/infer",
            &json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [good]},
                               {"name": "text_pair", "datatype": "BYTES", "shape": [1], "data": ["joyful"]}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = s
        .post(
            "/v1/models/reranker:classify",
            &json!({"context": {"text": good}, "examples": [{"text_pair": "joyful"}, {"text_pair": "dreadful"}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // An embedding model is no cross-encoder.
    let (code, _) = s
        .post(
            "/models/minilm/rerank",
            &json!({"query": good, "texts": ["x"]}),
        )
        .await;
    assert_eq!(code, 400);
    s.stop().await;
}

/// A Hugging Face BertForSequenceClassification directory: MiniLM's encoder and pooler with
/// a classifier layer of fixed weights (`classes` outputs) and id2label in config.json.
fn hf_classifier(minilm: &str, out: &Path, classes: usize) {
    std::fs::create_dir_all(out).unwrap();
    let src = Path::new(minilm);
    std::fs::copy(src.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config["architectures"] = json!(["BertForSequenceClassification"]);
    config["id2label"] = if classes == 1 {
        json!({"0": "LABEL_0"})
    } else {
        json!({"0": "negative", "1": "positive"})
    };
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &dev).unwrap();
    let w: Vec<f32> = (0..classes * 384)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    tensors.insert(
        "classifier.weight".into(),
        candle_core::Tensor::from_vec(w, (classes, 384), &dev).unwrap(),
    );
    tensors.insert(
        "classifier.bias".into(),
        candle_core::Tensor::from_vec(vec![0.1f32; classes], classes, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hugging_face_sequence_classifier_imports_and_serves() {
    let Some(dir) = minilm() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cls_dir, ce_dir) = (tmp.path().join("cls"), tmp.path().join("ce"));
    hf_classifier(&dir, &cls_dir, 2);
    hf_classifier(&dir, &ce_dir, 1);
    let imported = kiln::text::import::from_hf_dir(&cls_dir, &Default::default()).expect("imports");
    assert_eq!(imported.spec.labels, ["negative", "positive"]);
    assert_eq!(
        serde_json::to_value(&imported.spec.head).unwrap(),
        json!({"type": "bert_pooler"})
    );
    let models = tempfile::tempdir().unwrap();
    let store = kiln::store::LocalDir::new(models.path());
    for (name, d) in [("cls", &cls_dir), ("ce", &ce_dir)] {
        let imported = kiln::text::import::from_hf_dir(d, &Default::default()).unwrap();
        kiln::store::validate_and_publish(
            &store,
            name,
            kiln::store::ModelFiles::transformer(imported),
        )
        .await
        .expect("validates and publishes");
    }
    let s = Server::start(models.path(), PATIENT).await;
    // Single, pair and batch inputs; probabilities that sum to 1, highest first.
    let (code, one) = s
        .post("/models/cls/predict", &json!({"inputs": "a fine day"}))
        .await;
    assert_eq!(code, 200, "{one}");
    let sum: f64 = one
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4, "{one}");
    let (code, pair) = s
        .post(
            "/models/cls/predict",
            &json!({"inputs": ["a fine day", "it rains"]}),
        )
        .await;
    assert_eq!(code, 200, "{pair}");
    assert_eq!(pair.as_array().unwrap().len(), 2, "one pair: {pair}");
    assert!(pair[0]["score"].is_number(), "{pair}");
    let (code, batch) = s
        .post(
            "/models/cls/predict",
            &json!({"inputs": [["a fine day", "it rains"], ["a fine day", "it rains"]]}),
        )
        .await;
    assert_eq!(code, 200, "{batch}");
    assert_eq!(
        batch[0], pair,
        "a pair answers the same alone and in a batch"
    );
    let (code, batch) = s
        .post(
            "/models/cls/predict",
            &json!({"inputs": ["a fine day", "it rains", "x"]}),
        )
        .await;
    assert_eq!(code, 200, "{batch}");
    assert_eq!(batch.as_array().unwrap().len(), 3);
    assert_eq!(
        batch[0], one,
        "a text answers the same alone and in a batch"
    );
    let (_, raw) = s
        .post(
            "/models/cls/predict",
            &json!({"inputs": "a fine day", "raw_scores": true}),
        )
        .await;
    assert_ne!(raw, one);
    // The one-output classifier is a cross-encoder: /rerank, and /info says reranker.
    let (code, ranks) = s
        .post(
            "/models/ce/rerank",
            &json!({"query": "weather", "texts": ["sunny", "a fine day", "taxes"]}),
        )
        .await;
    assert_eq!(code, 200, "{ranks}");
    let ranks = ranks.as_array().unwrap();
    assert_eq!(ranks.len(), 3);
    assert!(ranks
        .windows(2)
        .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    assert!(ranks
        .iter()
        .all(|r| (0.0..=1.0).contains(&r["score"].as_f64().unwrap())));
    let (_, info) = s.get("/models/ce/info").await;
    assert!(info["model_type"]["reranker"].is_object(), "{info}");
    let (_, info) = s.get("/models/cls/info").await;
    assert_eq!(
        info["model_type"]["classifier"]["label2id"]["positive"], 1,
        "{info}"
    );
    // The two-class classifier over pairs reranks too.
    let (code, _) = s
        .post(
            "/models/cls/rerank",
            &json!({"query": "weather", "texts": ["sunny"]}),
        )
        .await;
    assert_eq!(code, 200);
    let _ = Duration::ZERO;
    s.stop().await;
}
