//! The `kiln` binary as operators run it: signals, `check`, startup errors, `--help`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Starts `kiln serve` on an ephemeral port; returns the child and its base URL.
fn spawn_server(models: &Path, extra: &[&str]) -> (Server, String) {
    spawn_server_with_data(models, models, extra)
}

fn spawn_server_with_data(models: &Path, data: &Path, extra: &[&str]) -> (Server, String) {
    let (child, base, _logs) = spawn_server_logged(models, data, extra, &[]);
    (child, base)
}

/// [`spawn_server_with_data`] with `env` set, also returning every JSON log line the server
/// writes after "kiln listening".
pub(crate) fn spawn_server_logged(
    models: &Path,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Server, String, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new(KILN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--models",
        ])
        .arg(models)
        .arg("--data")
        .arg(data)
        .args(if extra.contains(&"--drain-delay") {
            &[][..]
        } else {
            &["--drain-delay", "0"][..]
        })
        .args(extra)
        .env_remove("KILN_CONFIG")
        .envs(env.iter().copied())
        .current_dir(models)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("kiln listening") {
                let v: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().to_owned());
                sent = true;
            } else if sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    // Nobody listening is fine: the lines still have to be read.
                    let _ = log_tx.send(v);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("kiln printed its address");
    (Server(child), format!("http://{addr}"), log_rx)
}

/// A spawned server that is killed when dropped: a test that fails half-way (a panic
/// unwinds through it) leaves no `kiln serve` behind, training on in the background.
pub(crate) struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already waited for (the usual end of a test): nothing to kill.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_request_in_flight_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "slow", 1, &slow_spec());
    let (mut child, base) = spawn_server(dir.path(), &["--workers", "1", "--max-batch-size", "4"]);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = base.trim_start_matches("http://").to_owned();
    let probe = |addr: &str| {
        Command::new(KILN)
            .args(["health", "--addr", addr])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe(&addr), "kiln health failed against a ready server");
    let body = Arc::new(slow_body(4));
    let n = 6;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/v1/models/slow:predict"))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    // Signal once every request has been accepted and queued.
    loop {
        let v: Value = client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["models"][0]["versions"][0]["stats"]["requests"]
            .as_u64()
            .unwrap()
            >= n
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    signal(&child, "-TERM");
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            200,
            "a request in flight at SIGTERM was lost"
        );
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "kiln exited with {status}");
    assert!(
        client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err(),
        "still listening after exit"
    );
}

#[test]
fn check_reports_the_signature_or_the_failure() {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris/1");
    let out = Command::new(KILN).arg("check").arg(&iris).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("features: sepal_length, sepal_width, petal_length, petal_width"),
        "{text}"
    );
    assert!(
        text.contains("labels:  setosa, versicolor, virginica"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let spec = mlp_spec(6);
    let mut w = weights_for(&spec);
    w.remove("0.weight");
    let v = write_version(dir.path(), "m", 1, &spec, &w);
    let out = Command::new(KILN).arg("check").arg(&v).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.weight"), "{err}");
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    if !cfg!(feature = "cuda") {
        let out = Command::new(KILN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--device",
                "cuda:0",
                "--models",
            ])
            .arg(dir.path())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features cuda"), "{err}");
    }
    let out = Command::new(KILN)
        .args(["serve", "--device", "tpu"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device 'tpu'"));
    std::fs::write(dir.path().join("bad.toml"), "max_batch = 3").unwrap();
    let out = Command::new(KILN)
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_batch"));
}

#[test]
fn help_names_every_flag_and_variable() {
    let out = Command::new(KILN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--grpc-listen",
        "KILN_GRPC_LISTEN",
        "--models",
        "--data",
        "--device",
        "--config",
        "KILN_LISTEN",
        "KILN_MODELS",
        "KILN_DATA",
        "KILN_DEVICE",
        "KILN_CONFIG",
        "--max-connections",
        "--header-read-timeout-ms",
        "--body-read-timeout-ms",
        "KILN_MAX_CONNECTIONS",
        "--tls-cert",
        "--tls-key",
        "KILN_TLS_CERT",
        "--database",
        "KILN_DATABASE_URL",
        "--replica-id",
        "KILN_REPLICA_ID",
        "--job-lease-ms",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}");
    }
    let out = Command::new(KILN)
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(std::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/v1/training-jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the job has checkpointed at least `epochs` epochs.
pub(crate) async fn wait_epochs(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    epochs: u64,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(client, base, id).await;
        if j["progress"]["epoch"].as_u64().unwrap_or(0) >= epochs {
            return j;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Uploads the iris data and queues a job that would train for a very long time.
pub(crate) async fn start_endless_job(client: &reqwest::Client, base: &str, model: &str) -> String {
    let csv = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv"))
        .unwrap();
    let ds: Value = client
        .post(format!("{base}/v1/datasets"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spec = serde_json::json!({"model": model, "dataset": ds["id"], "target": "species",
                                  "training": {"epochs": 100000, "batch_size": 4}});
    let j: Value = client
        .post(format!("{base}/v1/training-jobs"))
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    j["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_sigkill_resumes_from_its_checkpoint_after_restart() {
    let models = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut child, base) = spawn_server_with_data(models.path(), data.path(), &[]);
    wait_ready(&client, &base).await;
    let id = start_endless_job(&client, &base, "resumed").await;
    wait_epochs(&client, &base, &id, 3).await;
    signal(&child, "-KILL");
    child.wait().unwrap();

    let (mut child, base) = spawn_server_with_data(models.path(), data.path(), &[]);
    wait_ready(&client, &base).await;
    let after = job(&client, &base, &id).await;
    assert!(
        ["queued", "running"].contains(&after["state"].as_str().unwrap()),
        "not resumed: {after}"
    );
    let kept = after["history"].as_array().unwrap().len() as u64;
    assert!(kept >= 3, "history lost: {after}");
    // It continues from the checkpoint: epochs numbered on from where it stopped.
    let later = wait_epochs(&client, &base, &id, kept + 2).await;
    let epochs: Vec<u64> = later["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(
        epochs,
        (1..=epochs.len() as u64).collect::<Vec<_>>(),
        "history has gaps or repeats"
    );
    let r = client
        .post(format!("{base}/v1/training-jobs/{id}:cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_puts_a_running_job_back_in_the_queue() {
    let models = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut child, base) = spawn_server_with_data(models.path(), data.path(), &[]);
    wait_ready(&client, &base).await;
    let id = start_endless_job(&client, &base, "later").await;
    wait_epochs(&client, &base, &id, 2).await;
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "kiln did not exit 0");
    let (mut child, base) = spawn_server_with_data(models.path(), data.path(), &[]);
    wait_ready(&client, &base).await;
    let after = job(&client, &base, &id).await;
    assert!(
        ["queued", "running"].contains(&after["state"].as_str().unwrap()),
        "{after}"
    );
    assert!(after["history"].as_array().unwrap().len() >= 2);
    client
        .post(format!("{base}/v1/training-jobs/{id}:cancel"))
        .send()
        .await
        .unwrap();
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn train_writes_a_version_that_serves() {
    let models = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv");
    let out = Command::new(KILN)
        .args([
            "train", "--target", "species", "--epochs", "20", "--json", "--data",
        ])
        .arg(&data)
        .arg("--models")
        .arg(models.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One line per epoch — the 20 asked for, then (iris is a small table, so the default
    // refits) the refit's — and a summary.
    let (summary, epochs) = lines.split_last().unwrap();
    let chosen = epochs.iter().filter(|e| e["stage"] != "refit").count();
    assert_eq!(chosen, 20, "{stdout}");
    assert!(epochs.iter().all(|e| e["epoch"].is_number()), "{stdout}");
    assert_eq!(
        epochs.len() - chosen,
        summary["metrics"]["refit"]["epochs"].as_u64().unwrap() as usize,
        "{stdout}"
    );
    assert_eq!(
        (summary["model"].as_str(), summary["version"].as_u64()),
        (Some("iris"), Some(1))
    );
    assert!(summary["metrics"]["accuracy"].is_number());
    let check = Command::new(KILN)
        .arg("check")
        .arg(models.path().join("iris/1"))
        .output()
        .unwrap();
    assert!(check.status.success());
    // A missing target is refused with its reason.
    let out = Command::new(KILN)
        .args(["train", "--target", "colour", "--data"])
        .arg(&data)
        .arg("--models")
        .arg(models.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("target column 'colour'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_503_and_serves_through_the_drain_delay() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let (mut child, base) = spawn_server(dir.path(), &["--drain-delay", "1.5"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;
    signal(&child, "-TERM");
    let body = serde_json::json!({"instances": [[1, 2, 3, 4, 5, 6]]});
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Readiness flips to 503 at once…
    loop {
        let r = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // …while predictions are still answered.
    let r = client
        .post(format!("{base}/v1/models/mlp:predict"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// The request span records the client's address: the access log line of a request names
/// the peer that sent it.
#[test]
fn the_request_span_records_the_peer_address() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, logs) =
        spawn_server_logged(dir.path(), dir.path(), &[], &[("RUST_LOG", "kiln=debug")]);
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    let peer = stream.local_addr().unwrap().to_string();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answered = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs
            .recv_timeout(left)
            .expect("an 'answered' debug line for GET /health/live");
        if line["message"] == "answered" && line["span"]["route"] == "/health/live" {
            break line;
        }
    };
    assert_eq!(answered["span"]["peer"], peer.as_str(), "{answered}");
    assert_eq!(answered["span"]["name"], "request");
    assert!(answered["span"]["trace_id"].is_null(), "{answered}");

    // A W3C `traceparent` joins the request's span (and so its log lines) to the caller's
    // trace; a malformed one is ignored.
    let send = |traceparent: &str| {
        let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        write!(
            stream,
            "GET /health/live HTTP/1.1\r\nHost: kiln\r\ntraceparent: {traceparent}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    let next_answered = || loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs
            .recv_timeout(left)
            .expect("an 'answered' debug line for GET /health/live");
        if line["message"] == "answered" && line["span"]["route"] == "/health/live" {
            break line;
        }
    };
    send("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let traced = next_answered();
    assert_eq!(
        traced["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{traced}"
    );
    assert_eq!(traced["span"]["parent_id"], "00f067aa0ba902b7", "{traced}");
    send("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
    let ignored = next_answered();
    assert!(ignored["span"]["trace_id"].is_null(), "{ignored}");
    child.kill().unwrap();
    child.wait().unwrap();
}
