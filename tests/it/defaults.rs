//! Training that is good by default (issue 15), over HTTP: the minimal spec's resolved
//! defaults, early stopping that serves the best epoch, the output layer added to a list of
//! hidden layers, the search and the refit.

use serde_json::{json, Value};

use crate::training::{follow, iris_csv, upload};
use crate::util::*;

/// Splits examples/data/iris.csv into two CSV files (alternate rows) and returns them with
/// the second one's rows parsed: (train, validation, [(features, species)]).
fn halves() -> (String, String, Vec<(Value, String)>) {
    let text = String::from_utf8(iris_csv()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    let names: Vec<&str> = header.split(',').collect();
    let (mut a, mut b) = (header.clone() + "\n", header.clone() + "\n");
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if i % 2 == 0 {
            a.push_str(line);
            a.push('\n');
        } else {
            b.push_str(line);
            b.push('\n');
            let cells: Vec<&str> = line.split(',').collect();
            let mut features = serde_json::Map::new();
            for (n, c) in names.iter().zip(&cells) {
                if *n != "species" {
                    features.insert((*n).to_owned(), json!(c.parse::<f64>().unwrap()));
                }
            }
            let species = cells[names.iter().position(|n| *n == "species").unwrap()];
            rows.push((Value::Object(features), species.to_owned()));
        }
    }
    (a, b, rows)
}

async fn run_job(s: &Server, spec: &Value) -> (Value, Vec<Value>) {
    let (code, job) = s.post("/v1/training-jobs", spec).await;
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let events = follow(s, &id).await;
    let (_, end) = events.last().unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    let (_, job) = s.get(&format!("/v1/training-jobs/{id}")).await;
    let epochs = events
        .into_iter()
        .filter(|(k, _)| k == "epoch")
        .map(|(_, v)| v)
        .collect();
    (job, epochs)
}

/// The minimal spec: every chosen value is in the resolved spec (with the reason), and the
/// served version is the epoch the model's training block names (the latest within noise of
/// the best: on 60 validation rows, often the last) — its accuracy on the validation rows,
/// measured through the serving API, is the one that epoch reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_spec_shows_its_defaults_and_serves_the_best_epoch() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (train, val, val_rows) = halves();
    let (_, a, _) = upload(&s, "text/csv", train).await;
    let (_, b, _) = upload(&s, "text/csv", val).await;
    let spec = json!({"model": "flowers", "dataset": a["id"], "target": "species",
                      "validation_dataset": b["id"]});
    let (job, history) = run_job(&s, &spec).await;
    let resolved = &job["spec"];
    let t = &resolved["training"];
    // 60 rows at batch 32: 2 steps an epoch, so the step budget gives the most epochs and
    // the most patience.
    assert_eq!(t["epochs"], 1000, "{resolved}");
    assert_eq!(
        t["early_stopping"],
        json!({"monitor": "val_accuracy", "tie_breaker": "val_loss", "patience": 100,
               "restore_best": true, "min_delta": 0.0, "prefer_later": true}),
        "{resolved}"
    );
    // A separate validation dataset: nothing to refit on.
    assert_eq!(t["refit"], false);
    let units: Vec<&Value> = resolved["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["units"])
        .collect();
    assert_eq!(units, [&json!(64), &json!(32), &json!(3)], "{resolved}");
    for key in ["layers", "training.epochs", "training.early_stopping"] {
        assert!(
            resolved["defaults"][key].is_string(),
            "{key} in {}",
            resolved["defaults"]
        );
    }

    let (_, md) = s.get("/v1/models/flowers/metadata").await;
    let info = &md["metadata"]["training"];
    let best = info["best_epoch"].as_u64().unwrap() as usize;
    let epochs_run = info["epochs_run"].as_u64().unwrap() as usize;
    assert_eq!(history.len(), epochs_run);
    assert!(best <= epochs_run, "best {best} of {epochs_run}");
    let at_best = &history[best - 1];
    assert_eq!(at_best["epoch"], best);
    let val_accuracy = at_best["metrics"]["val_accuracy"].as_f64().unwrap();
    assert_eq!(job["metrics"]["accuracy"].as_f64(), Some(val_accuracy));
    assert_eq!(job["metrics"]["loss"], at_best["val_loss"]);
    // The served model, scored on the validation rows through the API.
    let examples: Vec<&Value> = val_rows.iter().map(|(f, _)| f).collect();
    let (code, r) = s
        .post(
            "/v1/models/flowers:classify",
            &json!({ "examples": examples }),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let right = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&val_rows)
        .filter(|(res, (_, species))| res[0][0] == species.as_str())
        .count();
    assert_eq!(right as f64 / val_rows.len() as f64, val_accuracy);
}

/// A list of hidden layers gets the output layer the task needs (and says so); a wrong
/// explicit output layer is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_layers_get_an_output_layer_and_a_wrong_one_is_refused() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let hidden = json!([{"type": "dense", "units": 64, "activation": "relu"},
                        {"type": "dense", "units": 32, "activation": "relu"}]);
    let spec = json!({"model": "hidden", "dataset": ds["id"], "target": "species",
                      "layers": hidden, "training": {"epochs": 3}});
    let (job, _) = run_job(&s, &spec).await;
    let layers = job["spec"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[2]["units"], 3);
    assert_eq!(layers[2]["activation"], "softmax");
    let why = job["spec"]["defaults"]["layers.output"].as_str().unwrap();
    assert!(why.contains("dense 3 softmax"), "{why}");
    // Regression: one linear unit.
    let (code, job) = s
        .post(
            "/v1/training-jobs",
            &json!({"model": "reg", "dataset": ds["id"], "target": "petal_width",
                    "features": ["sepal_length", "sepal_width"], "layers": hidden,
                    "training": {"epochs": 1}}),
        )
        .await;
    assert_eq!(code, 202, "{job}");
    let last = &job["spec"]["layers"][2];
    assert_eq!(
        (last["units"].as_u64(), last.get("activation")),
        (Some(1), None)
    );
    // Output layers of the wrong width: refused, naming the widths.
    for (out, fragment) in [
        (
            json!({"type": "dense", "units": 4, "activation": "softmax"}),
            "3 labels but the last layer has 4 units",
        ),
        (json!({"type": "dense", "units": 32}), "has 32 units"),
    ] {
        let spec = json!({"model": "m", "dataset": ds["id"], "target": "species",
                          "layers": [{"type": "dense", "units": 8, "activation": "relu"}, out]});
        assert_refused(&s, &spec, fragment).await;
    }
}

/// A search runs every planned trial on the same split — each trial a child job with its
/// own epoch history — reports each (with its score) in the job, and publishes the best one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_reports_every_trial_and_publishes_the_best() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "searched", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 15, "validation_split": 0.3, "refit": false},
                      "search": {"width": [4, 32], "learning_rate": [0.001, 0.05]}});
    let (job, history) = run_job(&s, &spec).await;
    let planned = job["spec"]["trials"].as_array().unwrap();
    assert_eq!(planned.len(), 4, "{}", job["spec"]);
    let search = &job["metrics"]["search"];
    let trials = search["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4, "{search}");
    assert_eq!(search["monitor"], "val_accuracy");
    // Without a refit the search job trains nothing itself.
    assert!(history.is_empty(), "{history:?}");
    // Every trial ran, and its epochs are in its own job's history under its number.
    for (i, t) in trials.iter().enumerate() {
        assert_eq!(t["trial"], i + 1);
        assert_eq!(t["width"], planned[i]["width"]);
        assert!(t["score"].is_number(), "{t}");
        let n = t["epochs_run"].as_u64().unwrap() as usize;
        let (_, child) = s
            .get(&format!("/v1/training-jobs/{}", t["job"].as_str().unwrap()))
            .await;
        let mine = child["history"].as_array().unwrap();
        assert_eq!(mine.len(), n, "trial {}", i + 1);
        for (k, e) in mine.iter().enumerate() {
            assert_eq!(e["trial"], i + 1);
            assert_eq!(e["epoch"], k + 1);
            assert_eq!(e["stage_epoch"], k + 1);
            assert_eq!(e["stage"], "trial");
        }
    }
    // The best by validation accuracy, lower validation loss breaking ties, is published.
    let key = |t: &Value| {
        (
            t["score"].as_f64().unwrap(),
            -t["metrics"]["loss"].as_f64().unwrap(),
        )
    };
    let best = trials
        .iter()
        .max_by(|a, b| key(a).partial_cmp(&key(b)).unwrap())
        .unwrap();
    assert_eq!(search["best_trial"], best["trial"]);
    assert_eq!(job["metrics"]["accuracy"], best["metrics"]["accuracy"]);
    let (_, md) = s.get("/v1/models/searched/metadata").await;
    let first = &md["metadata"]["kiln"]["layers"][0];
    assert_eq!(first["units"], best["width"], "{md}");
    // Bad candidates are refused before queuing.
    for (search, fragment) in [
        (json!({"width": [0]}), "search.width"),
        (json!({"dropout": [1.5]}), "search.dropout"),
        (json!({"trials": 0}), "search.trials"),
        (json!({"depth": [2], "colour": 1}), "colour"),
    ] {
        let spec =
            json!({"model": "m", "dataset": ds["id"], "target": "species", "search": search});
        assert_refused(&s, &spec, fragment).await;
    }
}

/// `refit`: the epoch count is chosen on the validation rows, then a fresh network trains on
/// every row for that many epochs and is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refit_trains_on_every_row_for_the_chosen_epochs() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "refitted", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 60, "refit": true,
                                   "optimizer": {"type": "adam", "learning_rate": 0.05},
                                   "early_stopping": {"monitor": "val_loss", "patience": 5}}});
    let (job, history) = run_job(&s, &spec).await;
    let refit = &job["metrics"]["refit"];
    let chosen: Vec<&Value> = history.iter().filter(|e| e["stage"] == "train").collect();
    let refitted: Vec<&Value> = history.iter().filter(|e| e["stage"] == "refit").collect();
    assert_eq!(chosen.len() + refitted.len(), history.len());
    let (_, md) = s.get("/v1/models/refitted/metadata").await;
    let info = &md["metadata"]["training"];
    assert_eq!(info["evaluated_on"], "validation_before_refit");
    // The chosen count is the selection run's best epoch (the lowest validation loss).
    let best = chosen
        .iter()
        .min_by(|a, b| {
            a["val_loss"]
                .as_f64()
                .unwrap()
                .partial_cmp(&b["val_loss"].as_f64().unwrap())
                .unwrap()
        })
        .unwrap();
    assert_eq!(refit["epochs"], best["stage_epoch"], "{refit}");
    assert_eq!(refitted.len() as u64, refit["epochs"].as_u64().unwrap());
    // Every row: 120 minus one duplicate.
    assert_eq!(refit["rows"], 119);
    assert!(refitted.iter().all(|e| e.get("val_loss").is_none()));
    assert_eq!(info["metrics"]["refit"], *refit);
    // Refit needs validation rows to choose with.
    let spec = json!({"model": "m", "dataset": ds["id"], "target": "species",
                      "training": {"refit": true, "validation_split": 0}});
    let (code, e) = s.post("/v1/training-jobs", &spec).await;
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("refit"), "{e}");
}

/// `spec` is refused before queuing: 400 `invalid_spec`, the message naming `fragment`.
async fn assert_refused(s: &Server, spec: &Value, fragment: &str) {
    let (code, e) = s.post("/v1/training-jobs", spec).await;
    assert_eq!(
        (code, e["code"].as_str()),
        (400, Some("invalid_spec")),
        "{e}"
    );
    assert!(e["error"].as_str().unwrap().contains(fragment), "{e}");
}
