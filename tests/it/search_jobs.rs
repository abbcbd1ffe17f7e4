//! A search's trials as child jobs (issue 15): each trial is a job record of its own,
//! claimed by the scheduler like any job; the search job waits for them without holding a
//! job slot, then publishes the winner. Cancel reaches the children; on PostgreSQL two
//! replicas both run trials of one search.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pg::Db;
use crate::training::{follow, iris_csv, upload};
use crate::util::*;

async fn job(s: &Server, id: &str) -> Value {
    s.get(&format!("/v1/training-jobs/{id}")).await.1
}

/// Polls the job until `done` holds (or fails after `secs`).
async fn wait_for(s: &Server, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let j = job(s, id).await;
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "timed out waiting on {id}: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(s: &Server, spec: &Value) -> String {
    let (status, body) = s.post("/v1/training-jobs", spec).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Checks a finished search: one child job per planned trial, each listed under the parent,
/// succeeded, with its own history; the parent reports every trial (child id, candidate
/// values, state, score) and names the best, which it published.
async fn check_search(s: &Server, id: &str, parent: &Value) {
    let planned = parent["spec"]["trials"].as_array().unwrap();
    let trials = parent["trials"].as_array().unwrap();
    assert_eq!(trials.len(), planned.len(), "{parent}");
    let (status, listed) = s.get(&format!("/v1/training-jobs?parent={id}")).await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed["jobs"].as_array().unwrap();
    assert_eq!(listed.len(), planned.len());
    let report = &parent["metrics"]["search"];
    let reported = report["trials"].as_array().unwrap();
    assert_eq!(reported.len(), planned.len(), "{report}");
    for (i, t) in trials.iter().enumerate() {
        assert_eq!(t["trial"], i + 1);
        assert_eq!(t["width"], planned[i]["width"]);
        assert_eq!(t["state"], "succeeded", "{t}");
        let child_id = t["job"].as_str().unwrap();
        assert!(listed.iter().any(|j| j["id"] == child_id));
        let child = job(s, child_id).await;
        assert_eq!(child["parent"], id, "{child}");
        assert_eq!(child["trial"], i + 1);
        assert_eq!(child["state"], "succeeded");
        assert_eq!(child["version"], Value::Null, "a trial publishes nothing");
        // Its epochs are its own, each naming the trial.
        let history = child["history"].as_array().unwrap();
        let r = &reported[i];
        assert_eq!(r["job"], child_id, "{r}");
        assert_eq!(r["state"], "succeeded");
        assert!(r["score"].is_number(), "{r}");
        assert_eq!(r["width"], planned[i]["width"]);
        assert_eq!(history.len() as u64, r["epochs_run"].as_u64().unwrap());
        for (k, e) in history.iter().enumerate() {
            assert_eq!(e["epoch"], k + 1);
            assert_eq!((&e["trial"], &e["stage"]), (&json!(i + 1), &json!("trial")));
        }
    }
    // The best by validation accuracy, lower validation loss breaking ties, is published.
    let key = |t: &Value| {
        (
            t["score"].as_f64().unwrap(),
            -t["metrics"]["loss"].as_f64().unwrap(),
        )
    };
    let best = reported
        .iter()
        .max_by(|a, b| key(a).partial_cmp(&key(b)).unwrap())
        .unwrap();
    assert_eq!(report["best_trial"], best["trial"], "{report}");
    assert_eq!(parent["metrics"]["accuracy"], best["metrics"]["accuracy"]);
    assert!(parent["version"].is_u64(), "{parent}");
    // The top-level list shows the search and none of its trials.
    let (_, top) = s.get("/v1/training-jobs").await;
    let top = top["jobs"].as_array().unwrap();
    assert!(top.iter().any(|j| j["id"] == id));
    assert!(top.iter().all(|j| j["parent"].is_null()), "{top:?}");
    let (_, all) = s.get("/v1/training-jobs?parent=any").await;
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        top.len() + planned.len()
    );
}

/// One job slot (`max_concurrent_jobs = 1`): the search job queues its trials and waits
/// without its slot, so the trials run in it one after another; then the search refits the
/// winner (its epochs are the search job's own history) and publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_runs_its_trials_as_child_jobs_in_one_slot() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "max_concurrent_jobs = 1\n").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "searched", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 12, "validation_split": 0.3, "refit": true},
                      "search": {"width": [4, 16, 32]}});
    let id = submit(&s, &spec).await;
    let events = follow(&s, &id).await;
    let (kind, end) = events.last().unwrap();
    assert_eq!(
        (kind.as_str(), &end["state"]),
        ("end", &json!("succeeded")),
        "{events:?}"
    );
    let parent = job(&s, &id).await;
    check_search(&s, &id, &parent).await;
    // The search job's own epochs are the refit's.
    let history = parent["history"].as_array().unwrap();
    assert!(!history.is_empty());
    assert!(history.iter().all(|e| e["stage"] == "refit"), "{history:?}");
    assert_eq!(
        parent["metrics"]["refit"]["epochs"].as_u64().unwrap(),
        history.len() as u64
    );
    // Finished trials leave no checkpoint behind.
    let left: Vec<_> = std::fs::read_dir(s.data.path().join("checkpoints"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    s.stop().await;
}

/// Two slots, no refit: trials run side by side, and the published weights are the winning
/// trial's own (read from its job's checkpoint), so the served network is its shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_without_refit_publishes_the_winning_trials_weights() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "max_concurrent_jobs = 2\n").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "picked", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 10, "validation_split": 0.3, "refit": false},
                      "search": {"width": [4, 32], "learning_rate": [0.001, 0.05]}});
    let id = submit(&s, &spec).await;
    let parent = wait_for(&s, &id, 120, |j| j["state"] == "succeeded").await;
    check_search(&s, &id, &parent).await;
    assert!(parent["history"].as_array().unwrap().is_empty());
    let best = parent["metrics"]["search"]["best_trial"].as_u64().unwrap() as usize;
    let width = &parent["trials"][best - 1]["width"];
    let (_, md) = s.get("/v1/models/picked/metadata").await;
    assert_eq!(&md["metadata"]["kiln"]["layers"][0]["units"], width, "{md}");
    s.stop().await;
}

/// Cancelling a search job cancels its trials: the queued ones at once, the running one at
/// its next step; a bad `parent` filter is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_search_cancels_its_trials() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "max_concurrent_jobs = 1\n").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "endless", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 100000, "batch_size": 1, "early_stopping": null},
                      "search": {"width": [8, 16, 32]}});
    let id = submit(&s, &spec).await;
    let parent = wait_for(&s, &id, 60, |j| {
        j["state"] == "waiting" && j["trials"][0]["epoch"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(parent["trials"][1]["state"], "queued", "{parent}");
    let (status, body) = s
        .post(&format!("/v1/training-jobs/{id}:cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    let parent = wait_for(&s, &id, 30, |j| {
        j["trials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "cancelled")
    })
    .await;
    assert_eq!(parent["state"], "cancelled");
    let (status, body) = s.get("/v1/training-jobs?parent=nope").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("parent"), "{body}");
    s.stop().await;
}

/// Two replicas on one PostgreSQL both run trials of one search (each child job names the
/// replica that ran it), and the search publishes once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_trials_of_one_search() {
    let Some(db) = tokio::task::spawn_blocking(Db::new).await.unwrap() else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let toml = |replica: &str| {
        format!(
            "database = \"{}\"\nreplica_id = \"{replica}\"\njob_lease_ms = 3000\n\
             max_concurrent_jobs = 1\n",
            db.url
        )
    };
    let one = Server::start(models.path(), &toml("one")).await;
    let two = Server::start(models.path(), &toml("two")).await;
    let (status, ds, _) = upload(&one, "text/csv", iris_csv()).await;
    assert_eq!(status, 201, "{ds}");
    let dataset = ds["id"].as_str().unwrap().to_owned();
    // Datasets live in each replica's data directory for now: copy it to two.
    let from = one.data.path().join("datasets").join(&dataset);
    let to = two.data.path().join("datasets").join(&dataset);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    // Trials that only the search's time budget ends: the first one claimed holds its
    // replica's only slot until then, so the other trial runs on the other replica. The
    // refit (the default on a small table) runs wherever the search job is claimed: it needs
    // no trial's weights, so the replicas need not share their data directories.
    let spec = json!({"model": "spread", "dataset": dataset, "target": "species",
                      "training": {"epochs": 100000, "batch_size": 32, "early_stopping": null},
                      "search": {"width": [8, 16], "time_budget_seconds": 6}});
    let id = submit(&one, &spec).await;
    let parent = wait_for(&two, &id, 120, |j| {
        !["queued", "running", "waiting"].contains(&j["state"].as_str().unwrap())
    })
    .await;
    assert_eq!(parent["state"], "succeeded", "{parent}");
    let trials = parent["trials"].as_array().unwrap();
    let mut replicas: Vec<&str> = trials
        .iter()
        .map(|t| t["replica"].as_str().unwrap())
        .collect();
    replicas.sort();
    assert_eq!(replicas, ["one", "two"], "{parent}");
    for t in &parent["metrics"]["search"]["trials"].as_array().unwrap()[..] {
        assert_eq!(t["outcome"], "time_budget", "{t}");
        assert!(t["score"].is_number(), "{t}");
    }
    assert!(parent["version"].is_u64(), "{parent}");
    one.stop().await;
    two.stop().await;
}

/// `kill -9` in the middle of a search's first trial: after a restart the trial resumes from
/// its checkpoint (its history continuous, no epoch twice), the search job, still waiting,
/// gets no second set of trials, and the search ends as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_killed_mid_trial_resumes_after_restart_without_running_twice() {
    use crate::process::{job as get, signal, spawn_server_logged, wait_ready};
    let models = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut child, base, _) = spawn_server_logged(models.path(), data.path(), &[], &[]);
    wait_ready(&client, &base).await;
    let ds: Value = client
        .post(format!("{base}/v1/datasets"))
        .header("content-type", "text/csv")
        .body(iris_csv())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spec = json!({"model": "survivor", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 150, "batch_size": 4, "early_stopping": null},
                      "search": {"width": [8, 16]}});
    let submitted: Value = client
        .post(format!("{base}/v1/training-jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = get(&client, &base, &id).await;
        if j["trials"][0]["epoch"].as_u64().unwrap_or(0) >= 3 {
            assert_eq!(j["state"], "waiting", "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "the first trial never ran: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "-KILL");
    child.wait().unwrap();

    let (mut child, base, _) = spawn_server_logged(models.path(), data.path(), &[], &[]);
    wait_ready(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let parent = loop {
        let j = get(&client, &base, &id).await;
        if j["state"] != "waiting" && j["state"] != "running" && j["state"] != "queued" {
            break j;
        }
        assert!(Instant::now() < deadline, "the search did not end: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(parent["state"], "succeeded", "{parent}");
    let listed: Value = client
        .get(format!("{base}/v1/training-jobs?parent={id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2, "{listed}");
    for t in parent["trials"].as_array().unwrap() {
        assert_eq!(t["state"], "succeeded", "{t}");
        let c = get(&client, &base, t["job"].as_str().unwrap()).await;
        let epochs: Vec<u64> = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["epoch"].as_u64().unwrap())
            .collect();
        assert_eq!(epochs, (1..=150).collect::<Vec<_>>(), "{c}");
    }
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

/// A trial job that does not finish (here: cancelled on its own) is reported with its state
/// and the search goes on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_that_does_not_finish_is_reported_and_the_search_goes_on() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "max_concurrent_jobs = 1\n").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "survived", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 100000, "batch_size": 16, "early_stopping": null,
                                   "refit": false},
                      "search": {"width": [8, 16], "time_budget_seconds": 8}});
    let id = submit(&s, &spec).await;
    let parent = wait_for(&s, &id, 60, |j| j["trials"][0]["state"] == "running").await;
    let first = parent["trials"][0]["job"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post(&format!("/v1/training-jobs/{first}:cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let parent = wait_for(&s, &id, 60, |j| {
        !["queued", "running", "waiting"].contains(&j["state"].as_str().unwrap())
    })
    .await;
    assert_eq!(parent["state"], "succeeded", "{parent}");
    let report = &parent["metrics"]["search"];
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(
        (
            &trials[0]["outcome"],
            &trials[0]["state"],
            &trials[0]["job"]
        ),
        (&json!("cancelled"), &json!("cancelled"), &json!(first)),
        "{report}"
    );
    assert_eq!(trials[1]["outcome"], "time_budget", "{report}");
    assert_eq!(report["best_trial"], 2);
    s.stop().await;
}

/// The time budget bounds a search of trial jobs: the trial running when it runs out stops
/// and competes; trials not started by then are skipped (their jobs `cancelled`, reported
/// `skipped`), and the search publishes the stopped trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_not_started_within_the_time_budget_are_skipped() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "max_concurrent_jobs = 1\n").await;
    let (_, ds, _) = upload(&s, "text/csv", iris_csv()).await;
    let spec = json!({"model": "hurried", "dataset": ds["id"], "target": "species",
                      "training": {"epochs": 100000, "batch_size": 16, "early_stopping": null,
                                   "refit": false},
                      "search": {"width": [8, 16, 32], "time_budget_seconds": 1}});
    let id = submit(&s, &spec).await;
    let parent = wait_for(&s, &id, 60, |j| {
        !["queued", "running", "waiting"].contains(&j["state"].as_str().unwrap())
    })
    .await;
    assert_eq!(parent["state"], "succeeded", "{parent}");
    let report = &parent["metrics"]["search"];
    let outcomes: Vec<&str> = report["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["time_budget", "skipped", "skipped"], "{report}");
    assert_eq!(report["best_trial"], 1);
    let states: Vec<&str> = parent["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "cancelled", "cancelled"], "{parent}");
    s.stop().await;
}
