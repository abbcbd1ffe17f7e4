//! Test harness: fixture model directories and a real kiln server on 127.0.0.1:0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kiln::config::{Config, Overrides, RegistryLayer, TrainingLayer};
use kiln::model::format::ModelSpec;
use kiln::model::Model;
use serde_json::Value;

/// A kiln server running in this process, serving `models_dir` over a real socket.
pub struct Server {
    pub base: String,
    pub addr: SocketAddr,
    /// The gRPC listener's address (on 127.0.0.1:0); `None` when the config turns it off.
    pub grpc: Option<SocketAddr>,
    /// The server's data directory (datasets, job database, checkpoints).
    pub data: tempfile::TempDir,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts kiln with `toml` as its config file and waits until `/health/ready` says 200
    /// (over plain HTTP: a TLS server is not waited for).
    pub async fn start(models_dir: &Path, toml: &str) -> Server {
        Server::start_with_routes(models_dir, toml, axum::Router::new()).await
    }

    /// [`Server::start`] with `extra` routes beside kiln's own (`kiln::serve_with_routes`).
    pub async fn start_with_routes(
        models_dir: &Path,
        toml: &str,
        extra: axum::Router<kiln::state::AppState>,
    ) -> Server {
        let data = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            registry: RegistryLayer {
                models_dir: Some(models_dir.to_owned()),
                ..Default::default()
            },
            training: TrainingLayer {
                data_dir: Some(data.path().to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let config = Config::from_toml(toml, &overrides).expect("test config is valid");
        let tls = config.connections.tls.is_some();
        // Logs are captured per test and shown for failures (RUST_LOG=debug for more).
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        // gRPC on a port of its own too, unless the config turns it off.
        let grpc = match config.grpc_listen {
            Some(_) => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let grpc_addr = grpc.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = kiln::Listeners {
            http: listener,
            grpc,
        };
        let handle = tokio::spawn(kiln::serve_on(config, listeners, extra, async move {
            let _ = rx.await;
            kiln::shutdown::Drain::immediate()
        }));
        let server = Server {
            data,
            addr,
            grpc: grpc_addr,
            base: format!("{}://{addr}", if tls { "https" } else { "http" }),
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
        };
        if !tls {
            server.wait_ready().await;
        }
        server
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Posts a raw body with a content type; returns the whole response.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Triggers the graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes a model version the way a publisher must: into `<v>.tmp`, then rename.
pub fn write_version(
    models: &Path,
    name: &str,
    version: u64,
    spec: &Value,
    tensors: &HashMap<String, Tensor>,
) -> PathBuf {
    let dir = models.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!("{version}.tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("model.json"),
        serde_json::to_vec_pretty(spec).unwrap(),
    )
    .unwrap();
    candle_core::safetensors::save(tensors, tmp.join("model.safetensors")).unwrap();
    let final_dir = dir.join(version.to_string());
    std::fs::rename(&tmp, &final_dir).unwrap();
    final_dir
}

/// Random weights of the right shapes for `spec` (built by kiln's own layer builder).
pub fn weights_for(spec: &Value) -> HashMap<String, Tensor> {
    let spec: ModelSpec = serde_json::from_value(spec.clone()).expect("fixture spec parses");
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Model::check_and_build(&spec, &vb).expect("fixture spec builds");
    let data = vm.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Writes a fixture model with random weights and returns its directory.
pub fn fixture(models: &Path, name: &str, version: u64, spec: &Value) -> PathBuf {
    write_version(models, name, version, spec, &weights_for(spec))
}

/// Tabular classifier with named features and fitted preprocessing (numeric + one-hot).
pub fn tabular_spec() -> Value {
    serde_json::json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [5], "features": ["a", "b", "color"]},
        "labels": ["no", "yes"],
        "layers": [
            {"type": "dense", "units": 8, "activation": "relu", "name": "fc1"},
            {"type": "dense", "units": 2, "name": "fc2"},
            {"type": "activation", "activation": "softmax"}
        ],
        "preprocessing": {"features": [
            {"kind": "numeric", "name": "a", "fill": 1.0, "shift": 1.0, "scale": 2.0},
            {"kind": "numeric", "name": "b", "shift": 0.0, "scale": 1.0},
            {"kind": "categorical", "name": "color", "encoding": "one_hot", "categories": ["red", "green", "blue"]}
        ]}
    })
}

/// Plain MLP on a 6-value tensor, no feature names, logits out.
pub fn mlp_spec(width: usize) -> Value {
    serde_json::json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [width]},
        "layers": [
            {"type": "dense", "units": 16, "activation": "tanh"},
            {"type": "dense", "units": 3}
        ]
    })
}

/// Regression with a target transform (answers in original units).
pub fn regression_spec() -> Value {
    serde_json::json!({
        "format_version": 1,
        "task": "regression",
        "input": {"shape": [2], "features": ["x1", "x2"]},
        "layers": [{"type": "dense", "units": 1, "name": "out"}],
        "preprocessing": {
            "features": [
                {"kind": "numeric", "name": "x1", "shift": 0.0, "scale": 1.0},
                {"kind": "numeric", "name": "x2", "shift": 0.0, "scale": 1.0}
            ],
            "target": {"shift": 100.0, "scale": 10.0}
        }
    })
}

/// A compute-heavy conv model used to keep a worker busy (for 503 and 504 tests).
pub fn slow_spec() -> Value {
    serde_json::json!({
        "format_version": 1,
        "task": "regression",
        "input": {"shape": [8, 32, 32]},
        "layers": [
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 1}
        ]
    })
}

/// `n` instances of the slow model's input as a JSON body.
pub fn slow_body(n: usize) -> String {
    let row = format!(
        "[{}]",
        vec![
            format!(
                "[{}]",
                vec![format!("[{}]", vec!["0.5"; 32].join(",")); 32].join(",")
            );
            8
        ]
        .join(",")
    );
    format!("{{\"instances\": [{}]}}", vec![row; n].join(","))
}

/// Deterministic pseudo-random rows in [-1, 1).
pub fn rows(n: usize, width: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            (0..width)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        })
        .collect()
}

pub fn assert_close(a: &Value, b: &Value, tol: f64) {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{a} vs {b}");
            for (x, y) in x.iter().zip(y) {
                assert_close(x, y, tol);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol, "{x} vs {y}");
        }
        _ => assert_eq!(a, b),
    }
}

/// What the environment variable `var` names (a URL, a directory, a program) for a test that
/// needs an engine `cargo test` cannot provide: set by a step of `scripts/test`.
///
/// `None` means skip: the test prints why and returns. Under `scripts/test`
/// (`KILN_TEST_REQUIRE_ALL=1`) a missing engine fails the test instead, so the suite can
/// never pass by skipping.
pub fn external(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("KILN_TEST_REQUIRE_ALL").as_deref() == Ok("1") => {
            panic!("{what} is needed: {var} is not set (scripts/test sets it up)")
        }
        _ => {
            eprintln!(
                "skipped: {what} is not available ({var} is not set; scripts/test sets it up)"
            );
            None
        }
    }
}
