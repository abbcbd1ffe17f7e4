//! Load benchmark: kiln against a bare-axum "ceiling", over loopback.
//!
//! ```text
//! cargo bench --bench load
//! ```
//!
//! 1. The real binary (`CARGO_BIN_EXE_kiln`, built by `cargo bench` in the bench profile):
//!    time from spawn to `/health/ready` 200 (with the seed model to load), and its resident
//!    memory (VmRSS) idle and after each of two consecutive load runs.
//! 2. In this process: kiln (`kiln::serve` on its own multi-threaded tokio runtime) and a
//!    ceiling (a bare axum server that parses the same JSON into `instances: Vec<Vec<f32>>`
//!    and answers a fixed `predictions` array of the same shape), both on 127.0.0.1:0. The
//!    load generator (hyper HTTP/1.1 client, keep-alive, N connections each sending
//!    back-to-back) drives them interleaved, ceiling then kiln, for a few rounds per scenario,
//!    and prints the medians and the kiln/ceiling ratios.
//!
//! Everything shares the machine's cores: the load generator, the server under test and
//! kiln's worker threads. Ratios against the ceiling are the figure to trust.
//!
//! Environment (all optional):
//! - `KILN_BENCH_SECS` (5): measured seconds per run; `KILN_BENCH_WARMUP_SECS` (1).
//! - `KILN_BENCH_ROUNDS` (3): ceiling/kiln pairs per scenario.
//! - `KILN_BENCH_CLIENTS` (64): connections in the single-row scenario;
//!   `KILN_BENCH_BATCH_CLIENTS` (16) and `KILN_BENCH_BATCH_ROWS` (32) for the batched one.
//! - `KILN_BENCH_CLIENT_THREADS` (1): tokio worker threads of the load generator.
//! - `KILN_BENCH_SERVER_THREADS` (2): tokio worker threads of each in-process server.
//! - `KILN_BENCH_RSS_SECS` (3): seconds per scenario in each load run on the spawned binary;
//!   `KILN_BENCH_RSS_RUNS` (2): how many such runs (RSS is read after each).
//! - `KILN_BENCH_STARTS` (5): spawns of the binary timed to readiness.
//! - `KILN_BENCH_ONLY` (`all`): `binary` or `inproc` to run one half; `versus` runs instead
//!   kiln binaries (`KILN_BENCH_VERSUS=label=path,…`, default this build's) beside the ceiling,
//!   each in its own process, under this bench's client and wrk (`KILN_BENCH_GENERATORS`,
//!   default `own,wrk`) in the same run: see `load_parts/versus.rs`. `grpc` runs instead
//!   ModelInfer over gRPC against V2 infer over REST on one kiln: see `load_parts/grpc.rs`.
//! - `KILN_BENCH_CONFIG` (empty: kiln's defaults): a kiln config file's text, used by both the
//!   binary and the in-process server, e.g. `KILN_BENCH_CONFIG=$'workers = 1\n'`.
//! - `KILN_BENCH_SCENARIOS` (`single,batch,compute`): which in-process scenarios to run;
//!   `compute` serves the MLP 784→1024→1024→10 to `KILN_BENCH_COMPUTE_CLIENTS` (256)
//!   single-row clients and compares its rows/s with the same model's in-process forward at
//!   the batch size the batcher reached (on 1 thread, and on as many threads as workers).

mod common;
#[path = "load_parts/grpc.rs"]
mod grpc;
#[path = "load_parts/versus.rs"]
mod versus;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use kiln::config::{Config, LogFormat, Overrides, RegistryLayer};
use kiln::model::format::ModelSpec;
use kiln::model::Model;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use common::{boot_binary, env_or, http_status, mib, rss_kib};

const MODEL: &str = "seed";
const ROW_LEN: usize = 100;
const OUT_LEN: usize = 10;

#[derive(Clone, Debug)]
struct Settings {
    secs: f64,
    warmup: f64,
    rounds: usize,
    clients: usize,
    batch_clients: usize,
    batch_rows: usize,
    compute_clients: usize,
    client_threads: usize,
    server_threads: usize,
    rss_secs: f64,
    rss_runs: usize,
    starts: usize,
    only: String,
    /// kiln config (TOML) for both the binary and the in-process server.
    config: String,
    scenarios: String,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            secs: env_or("KILN_BENCH_SECS", 5.0),
            warmup: env_or("KILN_BENCH_WARMUP_SECS", 1.0),
            rounds: env_or("KILN_BENCH_ROUNDS", 3),
            clients: env_or("KILN_BENCH_CLIENTS", 64),
            batch_clients: env_or("KILN_BENCH_BATCH_CLIENTS", 16),
            batch_rows: env_or("KILN_BENCH_BATCH_ROWS", 32),
            compute_clients: env_or("KILN_BENCH_COMPUTE_CLIENTS", 256),
            client_threads: env_or("KILN_BENCH_CLIENT_THREADS", 1),
            server_threads: env_or("KILN_BENCH_SERVER_THREADS", 2),
            rss_secs: env_or("KILN_BENCH_RSS_SECS", 3.0),
            rss_runs: env_or("KILN_BENCH_RSS_RUNS", 2),
            starts: env_or("KILN_BENCH_STARTS", 5),
            only: env_or("KILN_BENCH_ONLY", "all".to_owned()),
            config: std::env::var("KILN_BENCH_CONFIG").unwrap_or_default(),
            scenarios: env_or("KILN_BENCH_SCENARIOS", "single,batch,compute".to_owned()),
        }
    }
}

impl Settings {
    /// The seed model's two scenarios: one row × `clients`, `batch_rows` × `batch_clients`.
    fn seed_scenarios(&self) -> [Scenario; 2] {
        [
            Scenario {
                clients: self.clients,
                rows: 1,
                model: MODEL,
            },
            Scenario {
                clients: self.batch_clients,
                rows: self.batch_rows,
                model: MODEL,
            },
        ]
    }
}

/// One load scenario: `clients` connections, `rows` instances per request.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    clients: usize,
    rows: usize,
    /// The served model: `seed`, or `mlp` for the compute-bound case.
    model: &'static str,
}

impl Scenario {
    fn label(&self) -> String {
        if self.model == MODEL {
            format!("{} clients x {} row(s)", self.clients, self.rows)
        } else {
            format!("{} x {} row(s) {}", self.clients, self.rows, self.model)
        }
    }

    fn row_len(&self) -> usize {
        if self.model == MLP {
            MLP_ROW_LEN
        } else {
            ROW_LEN
        }
    }

    fn path(&self) -> &'static str {
        if self.model == MLP {
            "/v1/models/mlp:predict"
        } else {
            "/v1/models/seed:predict"
        }
    }
}

/// The compute-bound model: MLP 784→1024 relu→1024 relu→10.
const MLP: &str = "mlp";
const MLP_ROW_LEN: usize = 784;

fn mlp_spec() -> Value {
    json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [MLP_ROW_LEN]},
        "layers": [
            {"type": "dense", "units": 1024, "activation": "relu"},
            {"type": "dense", "units": 1024, "activation": "relu"},
            {"type": "dense", "units": 10}
        ]
    })
}

// === the model fixture ===

fn seed_spec() -> Value {
    json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [ROW_LEN]},
        "layers": [
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 32, "activation": "relu"},
            {"type": "dense", "units": OUT_LEN},
            {"type": "activation", "activation": "softmax"}
        ]
    })
}

/// Writes `<models>/<name>/1/{model.json, model.safetensors}` with random weights.
fn write_model(models: &Path, name: &str, spec_json: &Value) {
    let spec = ModelSpec::from_json(&spec_json.to_string()).expect("the seed spec parses");
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Model::check_and_build(&spec, &vb).expect("the seed spec builds");
    let tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let dir = models.join(name).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("model.json"),
        serde_json::to_vec_pretty(spec_json).unwrap(),
    )
    .unwrap();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

/// `{"instances": [[row_len floats] × n]}` with deterministic values in [-1, 1).
fn request_body(n: usize, row_len: usize, seed: u64) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({ "instances": rows(n, row_len, seed) })).unwrap())
}

/// `n` rows of `row_len` deterministic values in [-1, 1).
fn rows(n: usize, row_len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            (0..row_len)
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

// === the compute-bound case: served rows/s against the in-process forward ===

/// The MLP behind `compute_clients` single-row clients, against the same model's
/// in-process forward (`Model::run_rows`, the call a worker makes) at the batch size the
/// batcher reached, on one plain thread and on `workers` concurrent threads (as many as
/// serve it), rounds interleaved.
fn bench_compute(
    s: &Settings,
    models: &Path,
    addr: SocketAddr,
    client_rt: &tokio::runtime::Runtime,
) {
    let config = Config::from_toml(&s.config, &Overrides::default()).expect("valid config");
    let workers = config.registry.workers;
    let sc = Scenario {
        clients: s.compute_clients,
        rows: 1,
        model: MLP,
    };
    let body = request_body(1, MLP_ROW_LEN, 11);
    let files = kiln::store::read_version_dir(&models.join(MLP).join("1"))
        .expect("the bench MLP's files read");
    let model = std::sync::Arc::new(
        kiln::store::load_and_warm(&files, &candle_core::Device::Cpu).expect("the bench MLP loads"),
    );
    println!(
        "-- compute-bound: {} ({} bytes per request) vs the in-process forward, {} rounds of {:.0} s --",
        sc.label(),
        body.len(),
        s.rounds,
        s.secs
    );
    let mut served = Vec::new();
    let mut single = Vec::new();
    let mut parallel = Vec::new();
    let mut batches = Vec::new();
    for _ in 0..s.rounds {
        let r = client_rt.block_on(load_run(addr, sc, body.clone(), s.warmup, s.secs, true));
        print_run("kiln", sc, &r);
        print_cpu(&r);
        let batch = r.stats_mean_batch.unwrap_or(1.0).round().max(1.0) as usize;
        let one = forward_rows_per_sec(&model, batch, 1, s.secs.min(3.0));
        let many = forward_rows_per_sec(&model, batch, workers, s.secs.min(3.0));
        println!(
            "  in-process forward at batch {batch}: {one:.0} rows/s on 1 thread, {many:.0} rows/s on {workers} threads"
        );
        served.push(r.rows_ps());
        single.push(one);
        parallel.push(many);
        batches.push(batch as f64);
    }
    let (sv, one, many) = (median(served), median(single), median(parallel));
    println!(
        "  compute-bound summary (medians): served {sv:.0} rows/s at mean batch {:.0}; in-process {one:.0} rows/s (1 thread), {many:.0} ({workers} threads); served/in-process {:.2} (1 thread), {:.2} ({workers} threads)",
        median(batches),
        sv / one,
        sv / many
    );
}

/// Rows per second of `Model::run_rows` at `batch` on `threads` plain threads at once.
fn forward_rows_per_sec(
    model: &std::sync::Arc<Model>,
    batch: usize,
    threads: usize,
    secs: f64,
) -> f64 {
    let input: Vec<f32> = rows(batch, MLP_ROW_LEN, 5).concat();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (model, input) = (model.clone(), input.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut calls = 0u64;
                while Instant::now() < end {
                    std::hint::black_box(model.run_rows(input.clone(), batch).unwrap());
                    calls += 1;
                }
                calls as f64 * batch as f64 / start.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

// === the ceiling: bare axum, same JSON in, same shape out ===

#[derive(Deserialize)]
struct CeilingRequest {
    instances: Vec<Vec<f32>>,
}

#[derive(Serialize)]
struct CeilingResponse {
    predictions: Vec<[f32; OUT_LEN]>,
}

/// Probabilities with as many digits as a real softmax output, so the ceiling formats floats
/// as expensive (and as long) as kiln's.
const FIXED_ROW: [f32; OUT_LEN] = [
    0.087_342_16,
    0.119_023_55,
    0.064_187_93,
    0.102_948_77,
    0.093_751_24,
    0.131_806_42,
    0.078_215_36,
    0.110_473_89,
    0.095_618_07,
    0.116_632_61,
];

async fn ceiling_predict(
    axum::Json(req): axum::Json<CeilingRequest>,
) -> axum::Json<CeilingResponse> {
    axum::Json(CeilingResponse {
        predictions: vec![FIXED_ROW; req.instances.len()],
    })
}

fn ceiling_router() -> axum::Router {
    axum::Router::new().route("/v1/models/{name}", axum::routing::post(ceiling_predict))
}

// === the load generator ===

/// What one run measured (requests completed inside the measured window).
#[derive(Clone, Debug, Default)]
struct RunResult {
    requests: u64,
    errors: u64,
    secs: f64,
    rows_per_request: usize,
    /// Sorted latencies, microseconds.
    latencies_us: Vec<u32>,
    /// Sum of `x-batch-size` over measured requests that carried it.
    batch_header_sum: u64,
    batch_header_n: u64,
    /// rows / batches from `GET /v1/models` over the measured window (kiln only).
    stats_mean_batch: Option<f64>,
    /// CPU time and context switches of this process's thread groups over the window.
    cpu: ThreadCpu,
}

impl RunResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn rows_ps(&self) -> f64 {
        self.rps() * self.rows_per_request as f64
    }
    fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
    /// Mean `x-batch-size` per request (request-weighted: a request in a batch of 64 says 64).
    fn header_mean_batch(&self) -> Option<f64> {
        (self.batch_header_n > 0).then(|| self.batch_header_sum as f64 / self.batch_header_n as f64)
    }
}

/// CPU nanoseconds and context switches per thread group of this process: the kiln
/// runtime (`kiln-rt`, its blocking pool included), kiln's batch workers (`kiln-worker-*`),
/// the ceiling's runtime, the load generator, and the rest (candle's pool, main).
#[derive(Clone, Debug, Default)]
struct ThreadCpu(HashMap<&'static str, (u64, u64)>);

fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("kiln-worker") {
        "kiln workers"
    } else if comm.starts_with("kiln-rt") {
        "kiln runtime"
    } else if comm.starts_with("ceiling-rt") {
        "ceiling runtime"
    } else if comm.starts_with("loadgen") {
        "load generator"
    } else {
        "other"
    }
}

impl ThreadCpu {
    /// Reads `/proc/self/task/*/{comm,schedstat,status}` (Linux; empty elsewhere).
    fn now() -> ThreadCpu {
        let mut out = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return ThreadCpu(out);
        };
        for task in dir.flatten() {
            let p = task.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let ns: u64 = std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
            let switches: u64 = status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .sum();
            let e = out.entry(thread_group(comm.trim())).or_insert((0, 0));
            e.0 += ns;
            e.1 += switches;
        }
        // The whole machine's busy time (all processes; steal included), from /proc/stat.
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            if let Some(line) = stat.lines().next() {
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                if f.len() >= 8 {
                    let busy_ticks = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
                    out.insert("machine", (busy_ticks * 10_000_000, 0)); // USER_HZ = 100
                }
            }
        }
        ThreadCpu(out)
    }

    /// CPU of this process's threads, nanoseconds.
    fn process_ns(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| **k != "machine")
            .map(|(_, v)| v.0)
            .sum()
    }

    fn since(&self, before: &ThreadCpu) -> ThreadCpu {
        ThreadCpu(
            self.0
                .iter()
                .map(|(k, (ns, sw))| {
                    let (ns0, sw0) = before.0.get(k).copied().unwrap_or((0, 0));
                    (*k, (ns.saturating_sub(ns0), sw.saturating_sub(sw0)))
                })
                .collect(),
        )
    }

    fn ns(&self, group: &str) -> u64 {
        self.0.get(group).map_or(0, |v| v.0)
    }

    fn switches(&self, group: &str) -> u64 {
        self.0.get(group).map_or(0, |v| v.1)
    }
}

struct ConnResult {
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    batch_sum: u64,
    batch_n: u64,
}

/// One keep-alive connection sending requests back to back until `end`.
async fn connection(
    addr: SocketAddr,
    path: &'static str,
    body: Bytes,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<ConnResult> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let host = addr.to_string();
    let mut r = ConnResult {
        requests: 0,
        errors: 0,
        latencies_us: Vec::with_capacity(1 << 14),
        batch_sum: 0,
        batch_n: 0,
    };
    while Instant::now() < end {
        sender.ready().await?;
        let req = hyper::Request::post(path)
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))?;
        let start = Instant::now();
        let res = sender.send_request(req).await?;
        let ok = res.status() == hyper::StatusCode::OK;
        let batch: Option<u64> = res
            .headers()
            .get("x-batch-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let answer = res.into_body().collect().await?.to_bytes();
        let done = Instant::now();
        if start >= measure_from && done <= end {
            if ok && !answer.is_empty() {
                r.requests += 1;
                r.latencies_us
                    .push((done - start).as_micros().min(u32::MAX as u128) as u32);
                if let Some(b) = batch {
                    r.batch_sum += b;
                    r.batch_n += 1;
                }
            } else {
                r.errors += 1;
            }
        }
    }
    drop(sender);
    let _ = driver.await;
    Ok(r)
}

/// `(batches, rows)` of the seed model's version 1, from `GET /v1/models`.
async fn kiln_stats(client: &reqwest::Client, addr: SocketAddr, model: &str) -> Option<(u64, u64)> {
    let v: Value = client
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let model = v["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == model)?;
    let stats = &model["versions"].as_array()?.first()?["stats"];
    Some((stats["batches"].as_u64()?, stats["rows"].as_u64()?))
}

/// Drives `addr` with a scenario for warm-up + `secs`; `is_kiln` also reads the batch stats.
async fn load_run(
    addr: SocketAddr,
    sc: Scenario,
    body: Bytes,
    warmup: f64,
    secs: f64,
    is_kiln: bool,
) -> RunResult {
    let path = sc.path();
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..sc.clients)
        .map(|_| tokio::spawn(connection(addr, path, body.clone(), measure_from, end)))
        .collect();
    let mut stats_mean_batch = None;
    let control = reqwest::Client::new();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = ThreadCpu::now();
    let before = if is_kiln {
        kiln_stats(&control, addr, sc.model).await
    } else {
        None
    };
    tokio::time::sleep_until(end.into()).await;
    let cpu = ThreadCpu::now().since(&cpu_before);

    if is_kiln {
        let after = kiln_stats(&control, addr, sc.model).await;
        if let (Some((b0, r0)), Some((b1, r1))) = (before, after) {
            if b1 > b0 {
                stats_mean_batch = Some((r1 - r0) as f64 / (b1 - b0) as f64);
            }
        }
    }
    let mut out = RunResult {
        secs,
        rows_per_request: sc.rows,
        stats_mean_batch,
        cpu,
        ..Default::default()
    };
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                out.requests += r.requests;
                out.errors += r.errors;
                out.latencies_us.extend(r.latencies_us);
                out.batch_header_sum += r.batch_sum;
                out.batch_header_n += r.batch_n;
            }
            Ok(Err(e)) => {
                eprintln!("  connection failed: {e:#}");
                out.errors += 1;
            }
            Err(e) => {
                eprintln!("  connection task failed: {e}");
                out.errors += 1;
            }
        }
    }
    out.latencies_us.sort_unstable();
    out
}

fn print_run(target: &str, sc: Scenario, r: &RunResult) {
    let batch = match (r.stats_mean_batch, r.header_mean_batch()) {
        (Some(s), Some(h)) => format!("  mean batch {s:.1} rows (per request: {h:.1})"),
        (None, Some(h)) => format!("  mean batch per request {h:.1}"),
        _ => String::new(),
    };
    println!(
        "  {target:<8} {:<22} {:>9.0} req/s {:>10.0} rows/s  p50 {:>7.3} ms  p99 {:>7.3} ms{}{batch}",
        sc.label(),
        r.rps(),
        r.rows_ps(),
        r.pct_ms(0.50),
        r.pct_ms(0.99),
        if r.errors > 0 {
            format!("  ERRORS {}", r.errors)
        } else {
            String::new()
        },
    );
}

/// CPU of the server under test (its runtime threads, plus kiln's workers), µs per request.
fn server_cpu_us(r: &RunResult) -> f64 {
    let c = &r.cpu;
    let ns = (c.ns("kiln runtime") + c.ns("kiln workers")).max(c.ns("ceiling runtime"));
    ns as f64 / 1e3 / r.requests.max(1) as f64
}

/// How busy the machine was outside this process, in cores.
fn foreign_cores(r: &RunResult) -> f64 {
    let machine = r.cpu.ns("machine") as f64;
    (machine - r.cpu.process_ns() as f64).max(0.0) / (r.secs * 1e9)
}

/// Where the CPU went in an in-process run, per request.
fn print_cpu(r: &RunResult) {
    if r.requests == 0 || r.cpu.0.is_empty() {
        return;
    }
    let per = |ns: u64| ns as f64 / 1e3 / r.requests as f64;
    let c = &r.cpu;
    let server = if c.ns("kiln runtime") + c.ns("kiln workers") > c.ns("ceiling runtime") {
        format!(
            "kiln {:.1} (runtime {:.1} + workers {:.1})",
            per(c.ns("kiln runtime") + c.ns("kiln workers")),
            per(c.ns("kiln runtime")),
            per(c.ns("kiln workers"))
        )
    } else {
        format!("ceiling {:.1}", per(c.ns("ceiling runtime")))
    };
    let switches =
        c.switches("kiln runtime") + c.switches("kiln workers") + c.switches("ceiling runtime");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let window_ns = r.secs * 1e9;
    let machine = c.ns("machine") as f64;
    let foreign = (machine - c.process_ns() as f64).max(0.0);
    println!(
        "           CPU µs/request: server {server}, load generator {:.1}, other {:.1}; server context switches/request {:.2}; machine busy {:.0}% of {cores:.0} cores, {:.0}% of a core outside this process",
        per(c.ns("load generator")),
        per(c.ns("other")),
        switches as f64 / r.requests as f64,
        machine / (window_ns * cores) * 100.0,
        foreign / window_ns * 100.0,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// === the real binary: start-up and memory ===

fn bench_binary(s: &Settings, models: &Path, cwd: &Path, client_rt: &tokio::runtime::Runtime) {
    println!("\n== the kiln binary ({}) ==", env!("CARGO_BIN_EXE_kiln"));
    let mut readies = Vec::new();
    let mut listens = Vec::new();
    let mut loads = Vec::new();
    let mut kept = None;
    for i in 0..s.starts.max(1) {
        let (mut child, ready, boot, rx) = boot_binary(models, cwd, &[]);
        let ms = ready.as_secs_f64() * 1e3;
        let listen_ms = boot.listening.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        println!(
            "  start {}: ready in {ms:.1} ms (listening at {listen_ms:.1} ms; model load + warm-up {} ms)",
            i + 1,
            boot.model_load_ms.map_or("?".to_owned(), |m| m.to_string())
        );
        readies.push(ms);
        listens.push(listen_ms);
        if let Some(m) = boot.model_load_ms {
            loads.push(m as f64);
        }
        if i + 1 == s.starts.max(1) {
            kept = Some((child, boot.addr.unwrap(), rx));
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    println!(
        "  start-up to ready: median {:.1} ms, min {:.1} ms over {} starts (listening: median {:.1} ms)",
        median(readies.clone()),
        readies.iter().copied().fold(f64::INFINITY, f64::min),
        readies.len(),
        median(listens),
    );

    let (mut child, addr, _log) = kept.unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    let (idle, _) = rss_kib(pid);
    println!("  RSS idle (after ready + 0.5 s): {:.1} MiB", mib(idle));
    let scenarios = s.seed_scenarios();
    let mut after = Vec::new();
    for run in 1..=s.rss_runs.max(2) {
        for sc in scenarios {
            let body = request_body(sc.rows, sc.row_len(), 7);
            let r = client_rt.block_on(load_run(
                addr,
                sc,
                body,
                s.warmup.min(0.5),
                s.rss_secs,
                true,
            ));
            print_run("binary", sc, &r);
        }
        std::thread::sleep(Duration::from_millis(500));
        let (rss, hwm) = rss_kib(pid);
        println!(
            "  RSS after load run {run}: {:.1} MiB (peak so far {:.1} MiB)",
            mib(rss),
            mib(hwm)
        );
        after.push(rss);
    }
    let steps: Vec<String> = after
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            format!(
                "run {} → run {}: {:+.1} MiB",
                i + 1,
                i + 2,
                mib(w[1]) - mib(w[0])
            )
        })
        .collect();
    println!(
        "  RSS growth idle → run 1: {:+.1} MiB; {}",
        mib(after[0]) - mib(idle),
        steps.join("; ")
    );
    let _ = child.kill();
    let _ = child.wait();
}

// === in-process: kiln vs the ceiling, interleaved ===

fn bench_inprocess(s: &Settings, models: &Path, client_rt: &tokio::runtime::Runtime) {
    let server_rt = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(s.server_threads)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    };
    // The compute-bound model joins the seed model only here (the binary's start-up and
    // memory figures are of the seed model alone).
    let compute = s.scenarios.contains("compute");
    if compute {
        write_model(models, MLP, &mlp_spec());
    }
    // kiln, as the binary runs it (logs at info to stderr, like `kiln serve`).
    let kiln_rt = server_rt("kiln-rt");
    let overrides = Overrides {
        registry: RegistryLayer {
            models_dir: Some(models.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = Config::from_toml(&s.config, &overrides).expect("KILN_BENCH_CONFIG is valid");
    println!(
        "\n== in-process: kiln (workers {}, threads {}, max_batch_size {}, max_queue_delay {:?}) vs bare axum ==",
        config.registry.workers, config.registry.threads, config.registry.batching.max_batch_size, config.registry.batching.max_queue_delay
    );
    kiln::telemetry::init(LogFormat::Text);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let kiln_listener = kiln_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let kiln_addr = kiln_listener.local_addr().unwrap();
    let kiln_task = kiln_rt.spawn(kiln::serve(config, kiln_listener, async move {
        let _ = stop_rx.await;
        kiln::shutdown::Drain::immediate()
    }));
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    while http_status(kiln_addr, "/health/ready") != 200 {
        assert!(Instant::now() < ready_deadline, "in-process kiln not ready");
        std::thread::sleep(Duration::from_millis(2));
    }

    let ceiling_rt = server_rt("ceiling-rt");
    let ceiling_listener = ceiling_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let ceiling_addr = ceiling_listener.local_addr().unwrap();
    ceiling_rt.spawn(async move { axum::serve(ceiling_listener, ceiling_router()).await });

    let mut scenarios = Vec::new();
    if s.scenarios.contains("single") {
        scenarios.push(Scenario {
            clients: s.clients,
            rows: 1,
            model: MODEL,
        });
    }
    if s.scenarios.contains("batch") {
        scenarios.push(Scenario {
            clients: s.batch_clients,
            rows: s.batch_rows,
            model: MODEL,
        });
    }
    let mut summary = Vec::new();
    for sc in scenarios {
        let body = request_body(sc.rows, sc.row_len(), 42);
        println!(
            "-- {} ({} bytes per request), {} rounds of {:.0} s (+{:.0} s warm-up) --",
            sc.label(),
            body.len(),
            s.rounds,
            s.secs,
            s.warmup
        );
        let mut ceil = Vec::new();
        let mut kiln = Vec::new();
        for _ in 0..s.rounds {
            let r = client_rt.block_on(load_run(
                ceiling_addr,
                sc,
                body.clone(),
                s.warmup,
                s.secs,
                false,
            ));
            print_run("ceiling", sc, &r);
            print_cpu(&r);
            ceil.push(r);
            let r = client_rt.block_on(load_run(
                kiln_addr,
                sc,
                body.clone(),
                s.warmup,
                s.secs,
                true,
            ));
            print_run("kiln", sc, &r);
            print_cpu(&r);
            kiln.push(r);
        }
        summary.push((sc, ceil, kiln));
    }

    println!("\n== summary: medians over rounds (in-process, loopback) ==");
    println!(
        "  {:<22} {:<8} {:>9} {:>10} {:>9} {:>9} {:>11} {:>14} {:>13}",
        "scenario",
        "target",
        "req/s",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "server µs/req",
        "foreign cores"
    );
    for (sc, ceil, kiln) in &summary {
        for (name, runs) in [("ceiling", ceil), ("kiln", kiln)] {
            let mb = median(runs.iter().filter_map(|r| r.stats_mean_batch).collect());
            println!(
                "  {:<22} {:<8} {:>9.0} {:>10.0} {:>9.3} {:>9.3} {:>11} {:>14.1} {:>13.2}",
                sc.label(),
                name,
                median(runs.iter().map(RunResult::rps).collect()),
                median(runs.iter().map(RunResult::rows_ps).collect()),
                median(runs.iter().map(|r| r.pct_ms(0.5)).collect()),
                median(runs.iter().map(|r| r.pct_ms(0.99)).collect()),
                if mb.is_finite() {
                    format!("{mb:.1}")
                } else {
                    "-".to_owned()
                },
                median(runs.iter().map(server_cpu_us).collect()),
                median(runs.iter().map(foreign_cores).collect()),
            );
        }
        let per_round: Vec<f64> = ceil
            .iter()
            .zip(kiln.iter())
            .map(|(c, k)| k.rps() / c.rps())
            .collect();
        let of_medians = median(kiln.iter().map(RunResult::rps).collect())
            / median(ceil.iter().map(RunResult::rps).collect());
        let cpu_ratio = median(kiln.iter().map(server_cpu_us).collect())
            / median(ceil.iter().map(server_cpu_us).collect());
        println!(
            "  {:<22} kiln/ceiling: {:.2} (req/s and rows/s; median of rounds {:.2}; rounds {}); server CPU per request {:.2}x the ceiling's",
            sc.label(),
            of_medians,
            median(per_round.clone()),
            per_round
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            cpu_ratio
        );
    }

    if compute {
        bench_compute(s, models, kiln_addr, client_rt);
    }

    let _ = stop_tx.send(());
    let _ = kiln_rt.block_on(kiln_task);
    ceiling_rt.shutdown_background();
    kiln_rt.shutdown_background();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let s = Settings::from_env();
    versus::serve_ceiling_if_asked(s.server_threads);
    // candle's thread counts, as `kiln serve` sets them from `threads` (default 1): before
    // anything touches candle.
    let threads = Config::from_toml(&s.config, &Overrides::default())
        .expect("KILN_BENCH_CONFIG is valid")
        .registry
        .threads
        .to_string();
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    std::env::set_var("CANDLE_NUM_THREADS", &threads);
    println!(
        "kiln load benchmark: {} cores; run {:.0} s + {:.0} s warm-up, {} rounds; load generator: hyper http1, {} tokio thread(s); servers: {} tokio threads",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.secs,
        s.warmup,
        s.rounds,
        s.client_threads,
        s.server_threads
    );
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    write_model(&models, MODEL, &seed_spec());
    // The binary runs in the temporary dir and reads config/kiln.toml there.
    std::fs::create_dir_all(tmp.path().join("config")).unwrap();
    std::fs::write(tmp.path().join("config/kiln.toml"), &s.config).unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.client_threads)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .unwrap();
    if s.only == "grpc" {
        grpc::bench_grpc(&s, &models, &client_rt);
    } else if s.only == "versus" {
        versus::bench_versus(&s, &models, tmp.path(), &client_rt);
    } else if s.only != "inproc" {
        bench_binary(&s, &models, tmp.path(), &client_rt);
    }
    if !matches!(s.only.as_str(), "binary" | "versus" | "grpc") {
        bench_inprocess(&s, &models, &client_rt);
    }
    println!(
        "\ntotal bench time {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
