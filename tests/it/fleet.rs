//! The issue's multi-process test: three `kiln serve` processes on loopback ports, each
//! with empty directories of its own, sharing one PostgreSQL and one S3 server
//! (`--database postgres://…`, `--object-store s3://…`). Jobs are tiny (iris, a few epochs)
//! to keep it fast.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::objstore::{spawn_replica, wait_available, wait_status};
use crate::pg::Db;
use crate::process::{job, signal, wait_epochs, wait_ready, Server};
use crate::s3::Bucket;

async fn engines() -> Option<(Db, Bucket)> {
    tokio::task::spawn_blocking(|| Some((Db::new()?, Bucket::new()?)))
        .await
        .unwrap()
}

const IRIS_ROW: &str =
    r#"{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}"#;

async fn predict(client: &reqwest::Client, base: &str, model: &str) -> u16 {
    let body = format!(r#"{{"instances": [{IRIS_ROW}]}}"#);
    client
        .post(format!("{base}/v1/models/{model}:predict"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn upload_iris(client: &reqwest::Client, base: &str) -> String {
    let csv = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv"),
    )
    .unwrap();
    let r = client
        .post(format!("{base}/v1/datasets"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ds: Value = r.json().await.unwrap();
    ds["id"].as_str().unwrap().to_owned()
}

async fn submit(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    dataset: &str,
    epochs: u32,
) -> String {
    let spec = json!({"model": model, "dataset": dataset, "target": "species",
                      "training": {"epochs": epochs, "batch_size": 8}});
    let r = client
        .post(format!("{base}/v1/training-jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let j: Value = r.json().await.unwrap();
    j["id"].as_str().unwrap().to_owned()
}

fn epochs_of(j: &Value) -> Vec<u64> {
    j["history"]
        .as_array()
        .map(|h| h.iter().map(|e| e["epoch"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

/// Six jobs through replica 1; the replica running the long one is killed with SIGKILL
/// mid-training; all six succeed with continuous histories (the long one resumed from its
/// checkpoint in object storage, on a replica with none on its disk); every replica serves
/// every new version; a DELETE through replica 3 stops a version on all. Then a rolling
/// restart (each replica in turn, taken out of rotation, SIGTERM, started again with an
/// empty disk) under a steady prediction load spread over the three: every answer is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_jobs_models_and_data() {
    let Some((db, bucket)) = engines().await else {
        return;
    };
    let dirs = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut replicas: Vec<(Server, String)> = Vec::new();
    for name in ["r1", "r2", "r3"] {
        let (s, base, _logs) = spawn_replica(&db, &bucket, name, dirs.path());
        replicas.push((s, base));
    }
    for (_, base) in &replicas {
        wait_ready(&client, base).await;
    }
    let base1 = replicas[0].1.clone();
    let dataset = upload_iris(&client, &base1).await;
    // The long job first, so that it is claimed at once; five short ones after it.
    let long = submit(&client, &base1, "long", &dataset, 60).await;
    let mut short = Vec::new();
    for i in 0..5 {
        short.push((
            format!("short{i}"),
            submit(&client, &base1, &format!("short{i}"), &dataset, 3).await,
        ));
    }
    let before = wait_epochs(&client, &base1, &long, 3).await;
    let victim = before["replica"].as_str().unwrap().to_owned();
    let victim_index = ["r1", "r2", "r3"]
        .iter()
        .position(|r| *r == victim)
        .unwrap();
    signal(&replicas[victim_index].0, "-KILL");
    replicas[victim_index].0.wait().unwrap();
    let alive: Vec<String> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim_index)
        .map(|(_, (_, b))| b.clone())
        .collect();

    // Every job succeeds; each new version is served by every live replica soon after.
    let deadline = Instant::now() + Duration::from_secs(240);
    for (model, id) in short
        .iter()
        .chain(std::iter::once(&("long".to_owned(), long.clone())))
    {
        let j = loop {
            let j = job(&client, &alive[0], id).await;
            match j["state"].as_str() {
                Some("succeeded") => break j,
                Some("failed" | "cancelled") => panic!("job {model} ended: {j}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "job {model} did not finish: {j}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let epochs = epochs_of(&j);
        assert_eq!(
            epochs,
            (1..=epochs.len() as u64).collect::<Vec<_>>(),
            "{model}: history has gaps or repeats"
        );
        let version = j["version"].as_u64().unwrap();
        for base in &alive {
            wait_available(&client, base, model, version).await;
            assert_eq!(
                predict(&client, base, model).await,
                200,
                "{model} on {base}"
            );
        }
    }
    let long_job = job(&client, &alive[0], &long).await;
    assert_ne!(long_job["replica"], victim.as_str(), "{long_job}");
    // Resumed from the checkpoint, not from scratch: the first epochs are the ones the
    // killed replica trained, timings and all.
    assert_eq!(long_job["history"][0], before["history"][0]);

    // A replacement for the killed replica, with an empty disk, serves every model.
    let (s, base, _) = spawn_replica(&db, &bucket, &format!("{victim}b"), dirs.path());
    wait_ready(&client, &base).await;
    replicas[victim_index] = (s, base.clone());
    for (model, _) in &short {
        assert_eq!(
            predict(&client, &base, model).await,
            200,
            "{model} on the new replica"
        );
    }
    // A DELETE through replica 3 stops the version on all.
    let base3 = replicas[2].1.clone();
    let r = client
        .delete(format!("{base3}/v1/models/short0/versions/1"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for (_, base) in &replicas {
        wait_status(&client, &format!("{base}/v1/models/short0/versions/1"), 404).await;
    }

    // Rolling restart under load: the rotation is what a load balancer would do with
    // readiness (a replica leaves it before its SIGTERM, returns once ready).
    let rotation: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(
        replicas.iter().map(|(_, b)| b.clone()).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (rotation, stop, sent, failed, client) = (
            rotation.clone(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
            client.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let base = {
                    let r = rotation.read().unwrap();
                    r[n % r.len()].clone()
                };
                n += 1;
                let status = predict(&client, &base, "short1").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{base}: {status}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for i in 0..replicas.len() {
        let old = replicas[i].1.clone();
        rotation.write().unwrap().retain(|b| *b != old);
        signal(&replicas[i].0, "-TERM");
        assert!(replicas[i].0.wait().unwrap().success());
        let (s, base, _) = spawn_replica(&db, &bucket, &format!("r{i}-restarted"), dirs.path());
        wait_ready(&client, &base).await;
        rotation.write().unwrap().push(base.clone());
        replicas[i] = (s, base);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "answers other than 200 during the restart"
    );
    for (s, _) in &replicas {
        signal(s, "-TERM");
    }
    for (s, _) in &mut replicas {
        assert!(s.wait().unwrap().success());
    }
}
