//! `:explain` over a real socket: attributions by column, their completeness, the linear
//! case exactly, targets, baselines, and the errors.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::util::{fixture, regression_spec, tabular_spec, write_version, Server};

/// Σ attributions − (prediction − baseline_prediction), recomputed from the answer.
fn check_completeness(e: &Value, tolerance: f64) {
    let values: Vec<f64> = match &e["attributions"] {
        Value::Object(m) => m.values().map(|v| v.as_f64().unwrap()).collect(),
        Value::Array(a) => flatten(a),
        other @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)) => {
            panic!("attributions {other}")
        }
    };
    let sum: f64 = values.iter().sum();
    let mass: f64 = values.iter().map(|v| v.abs()).sum();
    let change = e["prediction"].as_f64().unwrap() - e["baseline_prediction"].as_f64().unwrap();
    let residual = sum - change;
    assert!(
        (residual - e["completeness_residual"].as_f64().unwrap()).abs() < 1e-5,
        "{e}"
    );
    assert!(
        residual.abs() <= tolerance * change.abs().max(mass),
        "residual {residual} of {}: {e}",
        change.abs().max(mass)
    );
}

fn flatten(a: &[Value]) -> Vec<f64> {
    a.iter()
        .flat_map(|v| match v {
            Value::Array(inner) => flatten(inner),
            v @ (Value::Null
            | Value::Bool(_)
            | Value::Number(_)
            | Value::String(_)
            | Value::Object(_)) => vec![v.as_f64().unwrap()],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabular_explanations_name_every_raw_column_and_add_up() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "t", 1, &tabular_spec());
    let s = Server::start(models.path(), "").await;
    let body = json!({"instances": [
        {"a": 3.0, "b": -1.5, "color": "blue"},
        {"a": null, "b": 0.5, "color": "red"},
        [0.5, 2.0, "green"]
    ]});
    let (code, r) = s.post("/v1/models/t:explain", &body).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["method"], "integrated_gradients");
    assert_eq!(
        r["baseline"], "zero",
        "a model trained elsewhere stores no mean"
    );
    let explanations = r["explanations"].as_array().unwrap();
    assert_eq!(explanations.len(), 3);
    // The predicted class by default, with its score as f(x).
    let (_, p) = s
        .post(
            "/v1/models/t:classify",
            &json!({"examples": [{"a": 3.0, "b": -1.5, "color": "blue"}]}),
        )
        .await;
    assert_eq!(explanations[0]["target"], p["results"][0][0][0]);
    let score = p["results"][0][0][1].as_f64().unwrap();
    assert!((explanations[0]["prediction"].as_f64().unwrap() - score).abs() < 1e-6);
    for e in explanations {
        // One attribution per raw column, in the signature's order: the one-hot group of
        // `color` summed back to its column.
        let keys: Vec<&str> = e["attributions"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["a", "b", "color"], "{e}");
        assert!(e["steps"].as_u64().unwrap() >= 50);
        check_completeness(e, 1e-3);
    }
    // The raw JSON keeps the signature's column order (not sorted).
    let raw = s
        .post_raw(
            "/v1/models/t/versions/1:explain",
            "application/json",
            body.to_string(),
        )
        .await;
    assert_eq!(raw.status(), 200);
    assert!(raw.headers().contains_key("x-inference-time"));
    let text = raw.text().await.unwrap();
    let (a, b) = (text.find("\"a\":").unwrap(), text.find("\"b\":").unwrap());
    assert!(a < b && b < text.find("\"color\":").unwrap(), "{text}");

    // An explicit target and baseline, fixed steps (many: the fixture's weights are random,
    // and a ReLU network's kinks can leave 1% at 200 points).
    let (code, r) = s
        .post(
            "/v1/models/t:explain",
            &json!({"instances": [{"a": 3.0, "b": -1.5, "color": "blue"}], "target": "no",
                    "baseline": {"a": 1.0, "b": 0.0, "color": "red"}, "steps": 1000}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let e = &r["explanations"][0];
    assert_eq!(
        (e["target"].as_str(), e["steps"].as_u64()),
        (Some("no"), Some(1000))
    );
    assert_eq!(r["baseline"], "request");
    check_completeness(e, 1e-2);
    // The baseline's prediction is what :predict answers for it.
    let (_, p) = s
        .post(
            "/v1/models/t:predict",
            &json!({"instances": [{"a": 1.0, "b": 0.0, "color": "red"}]}),
        )
        .await;
    let want = p["predictions"][0][0].as_f64().unwrap();
    assert!((e["baseline_prediction"].as_f64().unwrap() - want).abs() < 1e-6);
    // Explaining the baseline itself: nothing changes, nothing is attributed.
    let (_, r) = s
        .post(
            "/v1/models/t:explain",
            &json!({"instances": [{"a": 1.0, "b": 0.0, "color": "red"}],
                    "baseline": [1.0, 0.0, "red"]}),
        )
        .await;
    for v in r["explanations"][0]["attributions"]
        .as_object()
        .unwrap()
        .values()
    {
        assert_eq!(v.as_f64(), Some(0.0), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linear_regression_is_explained_exactly_in_original_units() {
    // y = 10 · (0.5·x1 − 2·x2 + 0.25) + 100 (the target transform of regression_spec).
    let models = tempfile::tempdir().unwrap();
    let tensors: HashMap<String, Tensor> = [
        (
            "out.weight",
            Tensor::new(&[[0.5f32, -2.0]], &Device::Cpu).unwrap(),
        ),
        ("out.bias", Tensor::new(&[0.25f32], &Device::Cpu).unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    write_version(models.path(), "lin", 1, &regression_spec(), &tensors);
    let s = Server::start(models.path(), "").await;
    let (code, r) = s
        .post(
            "/v1/models/lin:explain",
            &json!({"instances": [{"x1": 3.0, "x2": 1.0}, [-1.0, 2.5]],
                    "baseline": {"x1": 1.0, "x2": -1.0}}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    for (e, (x1, x2)) in r["explanations"]
        .as_array()
        .unwrap()
        .iter()
        .zip([(3.0, 1.0), (-1.0, 2.5)])
    {
        assert_eq!(e["target"], "0");
        // φ = 10 · w · (x − x'), exactly (up to f32).
        let want = [10.0 * 0.5 * (x1 - 1.0), 10.0 * -2.0 * (x2 + 1.0)];
        let got = [
            e["attributions"]["x1"].as_f64().unwrap(),
            e["attributions"]["x2"].as_f64().unwrap(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
        let y = 10.0 * (0.5 * x1 - 2.0 * x2 + 0.25) + 100.0;
        assert!((e["prediction"].as_f64().unwrap() - y).abs() < 1e-3, "{e}");
        assert_eq!(e["steps"], 50, "a linear model needs no refinement");
        check_completeness(e, 1e-5);
    }
    // Its one output may be named by index.
    let (code, r) = s
        .post(
            "/v1/models/lin:explain",
            &json!({"instances": [[1, 1]], "target": "0"}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_explain_requests_say_what_is_wrong() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "t", 1, &tabular_spec());
    let s = Server::start(models.path(), "max_explain_points = 100").await;
    let one = json!({"a": 1.0, "b": 2.0, "color": "red"});
    let cases = [
        (
            json!({"instances": [one], "target": "maybe"}),
            400,
            "invalid_input",
            "maybe",
        ),
        (
            json!({"instances": [one], "target": true}),
            400,
            "invalid_input",
            "target",
        ),
        (
            json!({"instances": [one], "steps": 0}),
            400,
            "invalid_input",
            "steps",
        ),
        (
            json!({"instances": [one], "steps": 5000}),
            400,
            "invalid_input",
            "1024",
        ),
        (
            json!({"instances": [one], "steps": "many"}),
            400,
            "invalid_input",
            "steps",
        ),
        (
            json!({"instances": [one], "steps": -3}),
            400,
            "invalid_input",
            "steps",
        ),
        (
            json!({"instances": [one], "baseline": {"a": "x"}}),
            400,
            "invalid_input",
            "baseline",
        ),
        (
            json!({"instances": [one], "explain": "why"}),
            400,
            "invalid_input",
            "explain",
        ),
        (
            json!({"instances": [{"a": "x", "b": 1, "color": "red"}]}),
            400,
            "invalid_input",
            "instances[0]",
        ),
        (json!([one]), 400, "invalid_input", "object"),
        // 3 rows × 50 steps = 150 points over the limit of 100.
        (
            json!({"instances": [one, one, one]}),
            413,
            "too_many_points",
            "150",
        ),
        (
            json!({"instances": [one], "steps": 101}),
            413,
            "too_many_points",
            "101",
        ),
    ];
    for (body, status, code, needle) in cases {
        let (got, e) = s.post("/v1/models/t:explain", &body).await;
        assert_eq!(
            (got, e["code"].as_str()),
            (status, Some(code)),
            "{body} → {e}"
        );
        assert!(
            e["error"].as_str().unwrap().contains(needle),
            "{body} → {e}"
        );
    }
    // Within the limit: 2 rows × 50 steps.
    let (code, r) = s
        .post("/v1/models/t:explain", &json!({"instances": [one, one]}))
        .await;
    assert_eq!(code, 200, "{r}");
    let r = s
        .post_raw(
            "/v1/models/t:explain",
            "application/json",
            "{\"instances\": [",
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "malformed_json");
    let (code, e) = s
        .post("/v1/models/nope:explain", &json!({"instances": [one]}))
        .await;
    assert_eq!((code, e["code"].as_str()), (404, Some("model_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_models_are_explained_iris_by_column_digits_by_pixel() {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let s = Server::start(&models, "").await;
    let (code, r) = s
        .post(
            "/v1/models/iris:explain",
            &json!({"instances": [{"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let e = &r["explanations"][0];
    assert_eq!(e["target"], "virginica");
    assert_eq!(e["attributions"].as_object().unwrap().len(), 4);
    check_completeness(e, 1e-3);
    // The conv model names its 64 pixels: one attribution each, through reshape, conv and
    // max pooling.
    let img: Vec<f64> = (0..64).map(|i| f64::from((i * 7) % 17) / 16.0).collect();
    let (code, r) = s
        .post("/v1/models/digits:explain", &json!({"instances": [img]}))
        .await;
    assert_eq!(code, 200, "{r}");
    let e = &r["explanations"][0];
    assert_eq!(e["attributions"].as_object().unwrap().len(), 64);
    check_completeness(e, 1e-2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_model_is_explained_from_its_training_mean_and_evaluated_on_its_target() {
    use crate::training::{follow, iris_csv, upload};
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({
        "model": "flowers", "dataset": ds["id"], "target": "species",
        "training": {"epochs": 5, "seed": 3, "early_stopping": null, "refit": false}
    });
    let (code, job) = s.post("/v1/training-jobs", &spec).await;
    assert_eq!(code, 202, "{job}");
    let events = follow(&s, job["id"].as_str().unwrap()).await;
    let (_, end) = events.last().unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    // The stored mean input is the default baseline: for standardized columns, zeros.
    let (_, meta) = s.get("/v1/models/flowers/metadata").await;
    let mean = &meta["metadata"]["kiln"]["preprocessing"]["input_mean"];
    assert_eq!(mean.as_array().map(Vec::len), Some(4), "{meta}");
    let instance =
        json!({"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3});
    let (code, r) = s
        .post(
            "/v1/models/flowers:explain",
            &json!({"instances": [instance]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["baseline"], "training_mean");
    check_completeness(&r["explanations"][0], 1e-3);
    // Its training block names the target: no "target" needed to evaluate it.
    let (code, r) = s
        .post("/v1/models/flowers:evaluate", &json!({"dataset": ds["id"]}))
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["target"], "species");
    assert!(r["metrics"]["accuracy"].as_f64().unwrap() > 0.5, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_explained_in_their_shape_and_tokens_one_value_each() {
    let models = tempfile::tempdir().unwrap();
    fixture(
        models.path(),
        "img",
        1,
        &json!({"format_version": 1, "task": "classification", "input": {"shape": [1, 4, 4]},
                "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same", "activation": "tanh"},
                           {"type": "avg_pool2d", "pool_size": 2},
                           {"type": "flatten"}, {"type": "dense", "units": 3}]}),
    );
    fixture(
        models.path(),
        "tok",
        1,
        &json!({"format_version": 1, "task": "classification", "input": {"shape": [6], "dtype": "int64"},
                "layers": [{"type": "embedding", "input_dim": 30, "output_dim": 4},
                           {"type": "gru", "units": 5}, {"type": "dense", "units": 2}]}),
    );
    let s = Server::start(models.path(), "").await;
    let image: Vec<Vec<Vec<f64>>> = vec![(0..4)
        .map(|i| (0..4).map(|j| f64::from(i * 4 + j) / 16.0).collect())
        .collect()];
    let (code, r) = s
        .post(
            "/v1/models/img:explain",
            &json!({"instances": [image], "steps": 100}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let e = &r["explanations"][0];
    let a = e["attributions"].as_array().unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].as_array().unwrap().len(), 4);
    assert_eq!(a[0][0].as_array().unwrap().len(), 4, "{e}");
    assert_eq!(r["baseline"], "zero");
    check_completeness(e, 1e-3);
    let (code, r) = s
        .post(
            "/v1/models/tok:explain",
            &json!({"instances": [[3, 14, 15, 9, 2, 6]]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["baseline"], "zero_embedding");
    let e = &r["explanations"][0];
    assert_eq!(e["attributions"].as_array().unwrap().len(), 6, "{e}");
    check_completeness(e, 1e-3);
    // A baseline of ids starts from their embeddings.
    let (code, r) = s
        .post(
            "/v1/models/tok:explain",
            &json!({"instances": [[3, 14, 15, 9, 2, 6]], "baseline": [0, 0, 0, 0, 0, 0]}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["baseline"], "request");
    check_completeness(&r["explanations"][0], 1e-3);
}
