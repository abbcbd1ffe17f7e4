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
fn spawn_server(models: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(KILN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--models",
        ])
        .arg(models)
        .args(extra)
        .env_remove("KILN_CONFIG")
        .current_dir(models)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("kiln listening") {
                let v: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().to_owned());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("kiln printed its address");
    (child, format!("http://{addr}"))
}

fn signal(child: &Child, sig: &str) {
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
        "--models",
        "--data",
        "--device",
        "--config",
        "KILN_LISTEN",
        "KILN_MODELS",
        "KILN_DATA",
        "KILN_DEVICE",
        "KILN_CONFIG",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}");
    }
    let out = Command::new(KILN)
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
}
