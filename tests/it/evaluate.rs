//! `:evaluate` over a real socket (an uploaded dataset, or the data in the body) and
//! `kiln evaluate` offline: the metrics against what `:classify` / the model's formula say.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::training::{iris_csv, upload};
use crate::util::{fixture, regression_spec, tabular_spec, write_version, Server};

fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// The accuracy and confusion matrix of the shipped iris model on iris.csv, from its
/// `:classify` answers (labels in the model's order).
async fn iris_by_classify(s: &Server) -> (f64, Vec<Vec<u64>>, usize) {
    let text = String::from_utf8(iris_csv()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (mut examples, mut actual) = (Vec::new(), Vec::new());
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let mut ex = serde_json::Map::new();
        for (h, c) in header.iter().zip(&cells) {
            if *h != "species" {
                ex.insert((*h).to_owned(), json!(c.parse::<f64>().unwrap()));
            }
        }
        examples.push(Value::Object(ex));
        actual.push(cells[header.iter().position(|h| *h == "species").unwrap()].to_owned());
    }
    let (code, r) = s
        .post("/v1/models/iris:classify", &json!({ "examples": examples }))
        .await;
    assert_eq!(code, 200, "{r}");
    let labels = ["setosa", "versicolor", "virginica"];
    let mut matrix = vec![vec![0u64; 3]; 3];
    let mut right = 0;
    for (res, want) in r["results"].as_array().unwrap().iter().zip(&actual) {
        let got = res[0][0].as_str().unwrap();
        let (a, p) = (
            labels.iter().position(|l| l == want).unwrap(),
            labels.iter().position(|l| *l == got).unwrap(),
        );
        matrix[a][p] += 1;
        right += usize::from(a == p);
    }
    (right as f64 / actual.len() as f64, matrix, actual.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_or_a_csv_body_is_evaluated_as_classify_would_score_it() {
    let s = Server::start(&shipped(), "").await;
    let (want_accuracy, want_matrix, n) = iris_by_classify(&s).await;
    let (code, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    assert_eq!(code, 201, "{ds}");
    let (code, r) = s
        .post("/v1/models/iris:evaluate", &json!({"dataset": ds["id"]}))
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["task"].as_str(), r["target"].as_str()),
        (Some("classification"), Some("species"))
    );
    assert_eq!(r["rows"], n);
    assert_eq!(r["rows_used"], n);
    assert_eq!(
        r["rows_dropped"],
        json!({"missing_target": 0, "unknown_label": 0, "missing_feature": 0})
    );
    let m = &r["metrics"];
    assert!(
        (m["accuracy"].as_f64().unwrap() - want_accuracy).abs() < 1e-12,
        "{r}"
    );
    assert_eq!(m["confusion_matrix"], json!(want_matrix));
    assert!(want_accuracy > 0.9);
    assert_eq!(r["loss_name"], "log_loss");
    assert!(r["loss"].as_f64().unwrap() > 0.0);
    let per_class = r["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 3);
    assert_eq!(per_class[0]["label"], "setosa");
    let support: u64 = per_class
        .iter()
        .map(|c| c["support"].as_u64().unwrap())
        .sum();
    assert_eq!(support, n as u64);
    assert!(r.get("roc_auc").is_none(), "three classes: no ROC AUC");

    // The same data in the body (CSV), to a version: the same answer.
    let body = s
        .post_raw(
            "/v1/models/iris/versions/1:evaluate",
            "text/csv",
            iris_csv(),
        )
        .await;
    assert_eq!(body.status(), 200);
    let b: Value = body.json().await.unwrap();
    assert_eq!(b["metrics"], r["metrics"]);
    assert_eq!(b["loss"], r["loss"]);

    // JSON records in the body, as a dataset upload takes them: the same answer.
    let text = String::from_utf8(iris_csv()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let records: Vec<Value> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let record: serde_json::Map<String, Value> = header
                .iter()
                .zip(l.split(','))
                .map(|(h, c)| {
                    let v = c.parse::<f64>().map_or_else(|_| json!(c), |x| json!(x));
                    ((*h).to_owned(), v)
                })
                .collect();
            Value::Object(record)
        })
        .collect();
    let (code, j) = s.post("/v1/models/iris:evaluate", &json!(records)).await;
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["metrics"], r["metrics"]);

    // `kiln evaluate`, offline: the same numbers.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("evaluate")
        .arg(shipped().join("iris/1"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (cli["model"].as_str(), cli["version"].as_u64()),
        (Some("iris"), Some(1))
    );
    assert_eq!(
        cli["metrics"]["confusion_matrix"],
        r["metrics"]["confusion_matrix"]
    );
    // Batches of other sizes round the last float bits differently.
    assert!((cli["loss"].as_f64().unwrap() - r["loss"].as_f64().unwrap()).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_rows_are_counted_by_reason_and_binary_models_get_roc_auc() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "t", 1, &tabular_spec());
    let s = Server::start(models.path(), "").await;
    // b has no fill value; label must be "no" or "yes".
    let csv = "a,b,color,label\n\
               1.0,2.0,red,yes\n\
               ,0.5,green,no\n\
               3.0,,blue,no\n\
               2.0,1.0,red,\n\
               2.5,1.5,red,maybe\n\
               0.5,-1.0,purple,yes\n\
               1.5,0.0,blue,no\n";
    let (code, ds, _) = upload(&s, "text/csv", csv.as_bytes().to_vec()).await;
    assert_eq!(code, 201, "{ds}");
    let (code, r) = s
        .post(
            "/v1/models/t:evaluate",
            &json!({"dataset": ds["id"], "target": "label"}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["rows"].as_u64(), r["rows_used"].as_u64()),
        (Some(7), Some(4))
    );
    assert_eq!(
        r["rows_dropped"],
        json!({"missing_target": 1, "unknown_label": 1, "missing_feature": 1})
    );
    assert_eq!(r["unknown_categories"], 1, "purple");
    let auc = r["roc_auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc), "{r}");
    let matrix = r["metrics"]["confusion_matrix"].as_array().unwrap();
    let total: u64 = matrix
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);

    // Errors, in kiln's shape.
    let cases = [
        (
            json!({"dataset": "ds_0123456789abcdef", "target": "label"}),
            404,
            "dataset_not_found",
        ),
        (json!({"dataset": ds["id"]}), 400, "invalid_input"),
        (
            json!({"dataset": ds["id"], "target": "nope"}),
            400,
            "invalid_input",
        ),
        (
            json!({"dataset": ds["id"], "targte": "label"}),
            400,
            "invalid_input",
        ),
        (json!({"data": []}), 400, "invalid_input"),
    ];
    for (body, status, code) in cases {
        let (got, e) = s.post("/v1/models/t:evaluate", &body).await;
        assert_eq!(
            (got, e["code"].as_str()),
            (status, Some(code)),
            "{body} → {e}"
        );
    }
    let (_, e) = s
        .post("/v1/models/t:evaluate", &json!({"dataset": ds["id"]}))
        .await;
    assert!(e["error"].as_str().unwrap().contains("\"target\""), "{e}");
    let (_, e) = s
        .post(
            "/v1/models/t:evaluate",
            &json!({"dataset": ds["id"], "target": "nope"}),
        )
        .await;
    assert!(e["error"].as_str().unwrap().contains("'nope'"), "{e}");
    // CSV stays refused by the other verbs: their behaviour does not change.
    let r = s
        .post_raw("/v1/models/t:predict", "text/csv", "a,b\n1,2\n")
        .await;
    assert_eq!(r.status(), 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_is_scored_in_original_units() {
    // y = 10 · (0.5·x1 − 2·x2 + 0.25) + 100; the actual values are off by 1, −1, 2, −2.
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
    let f = |x1: f64, x2: f64| 10.0 * (0.5 * x1 - 2.0 * x2 + 0.25) + 100.0;
    let rows = [
        (1.0, 2.0, 1.0),
        (0.0, -1.0, -1.0),
        (4.0, 0.5, 2.0),
        (-2.0, 3.0, -2.0),
    ];
    let mut csv = String::from("x1,x2,y\n");
    for (x1, x2, e) in rows {
        csv.push_str(&format!("{x1},{x2},{}\n", f(x1, x2) + e));
    }
    let (_, ds, _) = upload(&s, "text/csv", csv.into_bytes()).await;
    let (code, r) = s
        .post(
            "/v1/models/lin:evaluate",
            &json!({"dataset": ds["id"], "target": "y"}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let m = &r["metrics"];
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-4;
    assert!(close(&m["mae"], 1.5), "{r}");
    assert!(close(&m["rmse"], 2.5f64.sqrt()), "{r}");
    assert_eq!(r["loss_name"], "mse");
    assert!(close(&r["loss"], 2.5), "{r}");
    // Residuals are predicted − actual: −1, 1, −2, 2.
    let res = &r["residuals"];
    assert!(
        close(&res["mean"], 0.0) && close(&res["min"], -2.0) && close(&res["max"], 2.0),
        "{r}"
    );
    assert!(
        close(&res["median"], 0.0) && close(&res["p25"], -1.25),
        "{r}"
    );
    assert!(m["r2"].as_f64().unwrap() < 1.0);
    assert!(r.get("per_class").is_none());
}
