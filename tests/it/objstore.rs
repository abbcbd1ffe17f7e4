//! Models in object storage catalogued in PostgreSQL (`--object-store` with a `postgres://`
//! database), on a real S3-compatible server (tests/it/s3.rs) and a real PostgreSQL
//! (tests/it/pg.rs): the store itself, and replicas (the real binary, spawned) sharing it.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln::remote::{pg as catalog, Objects};
use kiln::store::{
    read_version_dir, validate_and_publish, ModelStore, ObjectStoreModels, StoreError,
};
use serde_json::{json, Value};

use crate::pg::Db;
use crate::s3::{Bucket, SECRET};
use crate::util::*;

/// PostgreSQL and S3, or `None` (skip) when either is missing under plain `cargo test`.
async fn engines() -> Option<(Db, Bucket)> {
    tokio::task::spawn_blocking(|| Some((Db::new()?, Bucket::new()?)))
        .await
        .unwrap()
}

fn objects(bucket: &Bucket, prefix: &str) -> Objects {
    let options = bucket.options();
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Objects::open_with(&bucket.url(prefix), &options).unwrap()
}

async fn keys(bucket: &Bucket, prefix: &str) -> Vec<String> {
    let (b, p) = (bucket.clone(), prefix.to_owned());
    tokio::task::spawn_blocking(move || b.keys(&p))
        .await
        .unwrap()
}

/// Publish on one replica's store, read on another's (empty cache: a download, checked
/// against its hash), notifications, a damaged cache, deletes removing the objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_published_to_s3_and_read_by_every_replica() {
    let Some((db, bucket)) = engines().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pool_a = catalog::connect(&db.url).await.unwrap();
    let pool_b = catalog::connect(&db.url).await.unwrap();
    let a = ObjectStoreModels::new(
        objects(&bucket, "fleet"),
        pool_a,
        tmp.path().join("cache-a"),
    );
    let mut notified = catalog::listen(&db.url, catalog::MODELS_CHANNEL).unwrap();
    let b = ObjectStoreModels::new(
        objects(&bucket, "fleet"),
        pool_b,
        tmp.path().join("cache-b"),
    )
    .with_changes(notified.clone());
    // The counter moves once LISTEN is in place; from then on, only notifications move it.
    tokio::time::timeout(Duration::from_secs(10), notified.changed())
        .await
        .expect("not listening within 10 s")
        .unwrap();
    notified.borrow_and_update();
    let spec = tabular_spec();
    let v1_dir = fixture(&tmp.path().join("src"), "iris", 1, &spec);
    let v1 = read_version_dir(&v1_dir).unwrap();
    let published = validate_and_publish(&a, "iris", v1.clone()).await.unwrap();
    assert_eq!(published.version, 1);
    tokio::time::timeout(Duration::from_secs(10), notified.changed())
        .await
        .expect("no notification within 10 s")
        .unwrap();
    assert!(b.changes().is_some());

    let catalog = b.scan().await.unwrap();
    assert_eq!(catalog.keys().collect::<Vec<_>>(), ["iris"]);
    assert_eq!(catalog["iris"].keys().copied().collect::<Vec<_>>(), [1]);
    let stored = b.read("iris", 1).await.unwrap();
    assert_eq!(stored.files.spec, v1.spec);
    assert_eq!(stored.files.weights, v1.weights);
    assert!(stored.location.starts_with(tmp.path().join("cache-b")));
    assert_eq!(stored.revision, catalog["iris"][&1]);
    let objects_v1 = keys(&bucket, "fleet/models/iris/").await;
    assert_eq!(objects_v1.len(), 2, "{objects_v1:?}");
    assert!(objects_v1.iter().any(|k| k.ends_with("/model.safetensors")));

    // A damaged cached copy is noticed and downloaded again.
    let cached = stored.location.join("model.safetensors");
    std::fs::write(&cached, b"garbage").unwrap();
    let again = b.read("iris", 1).await.unwrap();
    assert_eq!(again.files.weights, v1.weights);
    assert_eq!(std::fs::read(&cached).unwrap(), v1.weights.to_vec());

    // Version 2 (other weights): numbers come from the catalog, whichever replica publishes.
    let v2 = read_version_dir(&fixture(&tmp.path().join("src"), "iris", 2, &spec)).unwrap();
    assert_eq!(
        validate_and_publish(&b, "iris", v2).await.unwrap().version,
        2
    );
    assert_eq!(keys(&bucket, "fleet/models/iris/").await.len(), 4);
    assert_eq!(
        a.versions("iris")
            .await
            .unwrap()
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [1, 2]
    );

    // Deleting through either replica removes the row and the objects.
    b.delete_version("iris", 1).await.unwrap();
    assert!(matches!(
        a.read("iris", 1).await,
        Err(StoreError::VersionNotFound { .. })
    ));
    let left = keys(&bucket, "fleet/models/iris/").await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(objects_v1.iter().all(|k| !left.contains(k)));
    // The other replica's cached copy goes at its next scan.
    a.read("iris", 2).await.unwrap();
    b.scan().await.unwrap();
    assert!(
        !stored.location.exists(),
        "the deleted version's cache stays"
    );
    assert!(matches!(
        a.delete_version("iris", 1).await,
        Err(StoreError::VersionNotFound { .. })
    ));
    a.delete_model("iris").await.unwrap();
    assert!(b.scan().await.unwrap().is_empty());
    assert!(b.versions("iris").await.unwrap().is_none());
    assert!(keys(&bucket, "fleet/models/").await.is_empty());
    assert!(matches!(
        a.delete_model("iris").await,
        Err(StoreError::ModelNotFound(_))
    ));
    assert!(matches!(
        a.read("../etc", 1).await,
        Err(StoreError::InvalidName(_))
    ));
}

/// An object store that cannot be reached: the publish fails with the reason after its
/// bounded retries, and no version appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_fails_the_publish_and_lists_nothing() {
    let Some((db, bucket)) = engines().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = bucket.options();
    for (k, v) in options.iter_mut() {
        if *k == "aws_endpoint" {
            *v = format!("http://127.0.0.1:{dead_port}");
        }
    }
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let objects = Objects::open_with(&bucket.url("dead"), &options).unwrap();
    assert!(objects.check().await.is_err());
    let store = ObjectStoreModels::new(
        objects,
        catalog::connect(&db.url).await.unwrap(),
        tmp.path(),
    );
    let files = read_version_dir(&fixture(tmp.path(), "m", 1, &tabular_spec())).unwrap();
    let started = Instant::now();
    let e = validate_and_publish(&store, "m", files).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("models/m/"), "{e}");
    assert!(!e.to_string().contains(SECRET), "{e}");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(store.scan().await.unwrap().is_empty());
}

fn form(spec: &Value, dir: &Path) -> reqwest::multipart::Form {
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
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

/// Spawns `kiln serve` on the shared database and bucket, with empty directories of its
/// own; the model watcher polls only once a minute, so what arrives sooner came by NOTIFY.
pub(crate) fn spawn_replica(
    db: &Db,
    bucket: &Bucket,
    replica: &str,
    dirs: &Path,
) -> (
    crate::process::Server,
    String,
    std::sync::mpsc::Receiver<Value>,
) {
    spawn_replica_with(db, bucket, replica, dirs, &[])
}

/// [`spawn_replica`] with more variables.
pub(crate) fn spawn_replica_with(
    db: &Db,
    bucket: &Bucket,
    replica: &str,
    dirs: &Path,
    extra: &[(&'static str, &str)],
) -> (
    crate::process::Server,
    String,
    std::sync::mpsc::Receiver<Value>,
) {
    let models = dirs.join(replica).join("models");
    let data = dirs.join(replica).join("data");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let mut env = bucket.env();
    env.push(("KILN_DATABASE_URL", db.url.clone()));
    env.push(("KILN_OBJECT_STORE", bucket.url("fleet")));
    env.push(("KILN_REPLICA_ID", replica.to_owned()));
    env.push(("KILN_POLL_INTERVAL_MS", "60000".to_owned()));
    env.push(("KILN_JOB_LEASE_MS", "1500".to_owned()));
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A drain delay as behind a load balancer: a request sent just before the replica left
    // the rotation is still answered.
    crate::process::spawn_server_logged(&models, &data, &["--drain-delay", "1"], &env)
}

/// Waits until the version is AVAILABLE on the replica at `base` (10 s at most).
pub(crate) async fn wait_available(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    version: u64,
) {
    let url = format!("{base}/v1/models/{model}/versions/{version}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = match client.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if body.contains("AVAILABLE") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {body}, not AVAILABLE after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET url` answers `want` (10 s at most).
pub(crate) async fn wait_status(client: &reqwest::Client, url: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get(url).send().await.map(|r| r.status().as_u16());
        if status.as_ref().ok() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {status:?}, not {want}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three replicas with empty disks: an upload through one is served by all within seconds;
/// a replica started later serves it from the store; a delete through another stops it
/// everywhere and removes its objects. No log line shows the S3 secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_every_version_from_object_storage() {
    let Some((db, bucket)) = engines().await else {
        return;
    };
    use crate::process::{signal, wait_ready};
    let dirs = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut r1, base1, logs1) = spawn_replica(&db, &bucket, "r1", dirs.path());
    let (mut r2, base2, logs2) = spawn_replica(&db, &bucket, "r2", dirs.path());
    wait_ready(&client, &base1).await;
    wait_ready(&client, &base2).await;

    let spec = tabular_spec();
    let src = fixture(dirs.path(), "src", 1, &spec);
    let r = client
        .post(format!("{base1}/v1/models/iris/versions"))
        .multipart(form(&spec, &src))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!(status == 200 || status == 201, "{status} {body}");
    assert_eq!(body["version"], "1", "{body}");
    let predict = json!({"instances": [{"a": 1.0, "b": 2.0, "color": "red"}]});
    for base in [&base1, &base2] {
        wait_available(&client, base, "iris", 1).await;
        let r = client
            .post(format!("{base}/v1/models/iris:predict"))
            .json(&predict)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base}");
    }
    // A replica starting with an empty disk serves what the store holds.
    let (mut r3, base3, logs3) = spawn_replica(&db, &bucket, "r3", dirs.path());
    wait_ready(&client, &base3).await;
    wait_available(&client, &base3, "iris", 1).await;
    assert_eq!(keys(&bucket, "fleet/models/iris/").await.len(), 2);

    let r = client
        .delete(format!("{base3}/v1/models/iris/versions/1"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for base in [&base1, &base2, &base3] {
        wait_status(&client, &format!("{base}/v1/models/iris/versions/1"), 404).await;
    }
    assert!(keys(&bucket, "fleet/models/iris/").await.is_empty());

    for r in [&r1, &r2, &r3] {
        signal(r, "-TERM");
    }
    for (r, logs) in [(&mut r1, logs1), (&mut r2, logs2), (&mut r3, logs3)] {
        assert!(r.wait().unwrap().success());
        for line in logs.try_iter() {
            assert!(!line.to_string().contains(SECRET), "{line}");
        }
    }
}

/// Datasets in object storage: an upload through one replica is listed, shown and trained on
/// through another (which downloads it); an upload over the limit answers 413 and leaves no
/// object; a DELETE through the other replica removes the object and the dataset everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_shared_through_object_storage() {
    let Some((db, bucket)) = engines().await else {
        return;
    };
    use crate::process::{signal, wait_ready};
    let dirs = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let csv = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv"),
    )
    .unwrap();
    let limit = (csv.len() + 10).to_string();
    // r1 takes no jobs: the job runs on r2, which has no copy of the upload.
    let (mut r1, base1, _) = spawn_replica_with(
        &db,
        &bucket,
        "d1",
        dirs.path(),
        &[
            ("KILN_MAX_UPLOAD_BYTES", &limit),
            ("KILN_MAX_CONCURRENT_JOBS", "0"),
        ],
    );
    let (mut r2, base2, _) = spawn_replica(&db, &bucket, "d2", dirs.path());
    wait_ready(&client, &base1).await;
    wait_ready(&client, &base2).await;

    let r = client
        .post(format!("{base1}/v1/datasets?name=iris"))
        .header("content-type", "text/csv")
        .body(csv.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ds: Value = r.json().await.unwrap();
    let id = ds["id"].as_str().unwrap().to_owned();
    assert_eq!(
        keys(&bucket, "fleet/datasets/").await,
        [format!("fleet/datasets/{id}/data")]
    );
    let shown: Value = client
        .get(format!("{base2}/v1/datasets/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["profile"], ds["profile"]);
    let listed: Value = client
        .get(format!("{base2}/v1/datasets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["datasets"].as_array().unwrap().len(), 1, "{listed}");

    // Too large, streamed without a length (the limit applies while the bytes arrive): 413,
    // and neither a dataset nor an object (the multipart upload aborted).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(csv.clone()),
        Ok(b"5.0,3.0,1.5,0.2,setosa\n5.0,3.0,1.5,0.2,setosa\n".to_vec()),
    ];
    let r = client
        .post(format!("{base1}/v1/datasets"))
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(keys(&bucket, "fleet/datasets/").await.len(), 1);
    // A file that does not parse: 400, nothing left either.
    let r = client
        .post(format!("{base1}/v1/datasets"))
        .header("content-type", "text/csv")
        .body("a,b\n1,2\n3\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(keys(&bucket, "fleet/datasets/").await.len(), 1);

    // A job submitted through r1 runs on r2, which reads the dataset from the store.
    let spec = json!({"model": "flowers", "dataset": id, "target": "species",
                      "training": {"epochs": 2, "batch_size": 16}});
    let r = client
        .post(format!("{base1}/v1/training-jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let j = crate::process::job(&client, &base1, &job_id).await;
        if j["state"] == "succeeded" || j["state"] == "failed" {
            break j;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["replica"], "d2", "{done}");
    wait_available(&client, &base1, "flowers", 1).await;
    // Its checkpoints go with it (right after the job's end is recorded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = keys(&bucket, "fleet/checkpoints/").await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoints left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let r = client
        .delete(format!("{base2}/v1/datasets/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(keys(&bucket, "fleet/datasets/").await.is_empty());
    for base in [&base1, &base2] {
        let r = client
            .get(format!("{base}/v1/datasets/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    for r in [&r1, &r2] {
        signal(r, "-TERM");
    }
    assert!(r1.wait().unwrap().success());
    assert!(r2.wait().unwrap().success());
}

/// The object store going away under a replica: the running job fails with the reason once
/// the client's bounded retries are spent; model and dataset uploads answer 503 with
/// Retry-After; predictions of the versions in memory go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_fails_jobs_and_uploads_not_predictions() {
    let Some(db) = tokio::task::spawn_blocking(Db::new).await.unwrap() else {
        return;
    };
    let Some(bucket) = tokio::task::spawn_blocking(Bucket::private).await.unwrap() else {
        return;
    };
    use crate::process::{signal, start_endless_job, wait_epochs, wait_ready};
    let dirs = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut r1, base, _) = spawn_replica(&db, &bucket, "o1", dirs.path());
    wait_ready(&client, &base).await;
    let spec = tabular_spec();
    let src = fixture(dirs.path(), "src", 1, &spec);
    let r = client
        .post(format!("{base}/v1/models/m/versions"))
        .multipart(form(&spec, &src))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let id = start_endless_job(&client, &base, "endless").await;
    wait_epochs(&client, &base, &id, 2).await;

    bucket.server.kill();
    let deadline = Instant::now() + Duration::from_secs(120);
    let failed = loop {
        let j = crate::process::job(&client, &base, &id).await;
        if j["state"] != "running" && j["state"] != "queued" {
            break j;
        }
        assert!(Instant::now() < deadline, "the job still runs: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["error"].as_str().unwrap();
    assert!(reason.contains("checkpoint"), "{reason}");
    assert!(!reason.contains(SECRET), "{reason}");

    let r = client
        .post(format!("{base}/v1/models/m/versions"))
        .multipart(form(&spec, &src))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "storage_unavailable", "{body}");
    let r = client
        .post(format!("{base}/v1/datasets"))
        .header("content-type", "text/csv")
        .body("a,b\n1,2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let predict = json!({"instances": [{"a": 1.0, "b": 2.0, "color": "red"}]});
    let r = client
        .post(format!("{base}/v1/models/m:predict"))
        .json(&predict)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    signal(&r1, "-TERM");
    assert!(r1.wait().unwrap().success());
}

/// An object store that cannot be reached at startup: kiln exits with an error naming the
/// store and the reason, and no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_is_a_startup_error() {
    let Some((db, bucket)) = engines().await else {
        return;
    };
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dirs = tempfile::tempdir().unwrap();
    let mut env = bucket.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = format!("http://127.0.0.1:{dead_port}");
        }
    }
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .arg("--models")
            .arg(dirs.path().join("models"))
            .arg("--data")
            .arg(dirs.path().join("data"))
            .env_remove("KILN_CONFIG")
            .envs(env)
            .env("KILN_DATABASE_URL", &db.url)
            .env("KILN_OBJECT_STORE", bucket.url("fleet"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening the object store s3://kiln-test-"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(!stderr.contains(crate::pg::PASSWORD), "{stderr}");
}
