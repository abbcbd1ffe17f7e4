//! Training speed of kiln's own training path, in-process, one thread.
//!
//! ```text
//! cargo bench --bench train                  # every case below, then a table
//! cargo bench --bench train -- seed_b32      # one case (seed_b32, seed_b256, mlp_b256)
//! cargo bench --bench train -- http          # the same spec via `kiln train` and via a server job
//! cargo bench --bench train -- hooks         # a server job's per-epoch work, piece by piece
//! python3 benches/train_torch.py             # kiln and PyTorch interleaved, one table
//! ```
//!
//! Each case builds a `kiln::dataset::Table` of synthetic rows, then goes the way a job goes:
//! `JobSpec` → `resolve` → `run::prepare_data` → `trainer::train` (with hooks that only
//! collect the epoch events). `preprocessing: {"scale": "none", "drop_duplicates": false}` and
//! `validation_split: 0`, so what is timed is the training loop itself: the trainer's own
//! `epoch_seconds` per epoch (shuffle, batch gather, forward, loss, backward, Adam, the train
//! metrics), not the checkpoint handed to the hooks after it.
//!
//! - `seed_b32`, `seed_b256`: the seed model (Dense 100→64 relu →32 relu →10 softmax, trained on
//!   logits with sparse categorical cross-entropy), Adam lr 1e-3, batch 32 / 256, 10 epochs on
//!   60,000 rows × 100 features. Reported: samples/s per epoch, median over the epochs.
//! - `mlp_b256`: the compute-bound MLP 784→1024 relu→1024 relu→10 at batch 256, 5 epochs of
//!   7,680 rows (30 steps). Reported: ms per step (epoch seconds / steps), median over epochs.
//!
//! Data: `x[r][c]` = uniform in [-1, 1) from a splitmix64 hash of `r·width + c` (24 bits, so
//! exact in f32), label = the argmax of the sums of 10 consecutive groups of `width/10`
//! features. `benches/train_torch.py` generates the very same rows with numpy.
//!
//! `http`: the seed model at batch 32 trained by `kiln train --json` (a child process) and by
//! a job of a `kiln serve` child (dataset uploaded once, then POST /v1/training-jobs, followed
//! through GET …/events), interleaved, on a big data set (60,000 rows, 10 epochs) and a small
//! one (1,000 rows, 50 epochs, where per-epoch costs outside the loop show). Both use one
//! compute thread (`--threads 1`).
//!
//! `RAYON_NUM_THREADS=1` and `CANDLE_NUM_THREADS=1` are set first thing: one core.
//! Environment: `KILN_BENCH_ROWS` (60000), `KILN_BENCH_EPOCHS` (10), `KILN_BENCH_MLP_ROWS`
//! (7680), `KILN_BENCH_MLP_EPOCHS` (5); for `http`: `KILN_BENCH_HTTP_ROUNDS` (3),
//! `KILN_BENCH_HTTP_ROWS` (60000), `KILN_BENCH_HTTP_EPOCHS` (10), `KILN_BENCH_HTTP_SMALL_ROWS`
//! (1000), `KILN_BENCH_HTTP_SMALL_EPOCHS` (50). Every case also prints one JSON line on stdout (`{"bench": "kiln", ...}`), which
//! `train_torch.py` reads; the human-readable lines go to stderr.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::dataset::{Column, ColumnType, ColumnValues, Table};
use kiln::jobs::JobStore;
use kiln::training::run::prepare_data;
use kiln::training::spec::JobSpec;
use kiln::training::trainer::{train, Checkpoint, EpochEvent, Hooks};
use serde_json::{json, Value};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// === the synthetic data (mirrored in train_torch.py) ===

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function over `k·golden + salt`.
fn hash(k: u64, salt: u64) -> u64 {
    let mut z = k.wrapping_mul(GOLDEN).wrapping_add(salt);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `rows × width` features (row-major, exact f32 values in [-1, 1)) and class labels 0..10.
pub fn synthetic(rows: usize, width: usize, salt: u64) -> (Vec<f32>, Vec<u32>) {
    let x: Vec<f32> = (0..(rows * width) as u64)
        .map(|k| ((hash(k, salt) >> 40) as f32) / 16_777_216.0 * 2.0 - 1.0)
        .collect();
    let g = width / 10;
    let y = (0..rows)
        .map(|r| {
            let row = &x[r * width..(r + 1) * width];
            let mut best = (0u32, f64::NEG_INFINITY);
            for c in 0..10 {
                let s: f64 = row[c * g..(c + 1) * g].iter().map(|&v| f64::from(v)).sum();
                if s > best.1 {
                    best = (c as u32, s);
                }
            }
            best.0
        })
        .collect();
    (x, y)
}

fn table(x: &[f32], y: &[u32], width: usize) -> Table {
    let rows = y.len();
    let mut columns: Vec<Column> = (0..width)
        .map(|c| Column {
            name: format!("f{c}"),
            dtype: ColumnType::Float,
            values: ColumnValues::Numeric((0..rows).map(|r| f64::from(x[r * width + c])).collect()),
            missing: 0,
            invalid: 0,
            invalid_examples: Vec::new(),
        })
        .collect();
    columns.push(Column {
        name: "y".into(),
        dtype: ColumnType::Integer,
        values: ColumnValues::Numeric(y.iter().map(|&v| f64::from(v)).collect()),
        missing: 0,
        invalid: 0,
        invalid_examples: Vec::new(),
    });
    Table::new(columns).expect("a valid synthetic table")
}

fn write_csv(path: &Path, x: &[f32], y: &[u32], width: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("create the CSV"));
    let header: Vec<String> = (0..width)
        .map(|c| format!("f{c}"))
        .chain(["y".into()])
        .collect();
    writeln!(w, "{}", header.join(",")).unwrap();
    let mut line = String::new();
    for (r, label) in y.iter().enumerate() {
        line.clear();
        for v in &x[r * width..(r + 1) * width] {
            // The shortest text that reads back as the same f32.
            line.push_str(&v.to_string());
            line.push(',');
        }
        line.push_str(&label.to_string());
        writeln!(w, "{line}").unwrap();
    }
    w.flush().unwrap();
}

// === the models and specs ===

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    width: usize,
    hidden: &'static [usize],
    batch: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "seed_b32",
        width: 100,
        hidden: &[64, 32],
        batch: 32,
    },
    Case {
        name: "seed_b256",
        width: 100,
        hidden: &[64, 32],
        batch: 256,
    },
    Case {
        name: "mlp_b256",
        width: 784,
        hidden: &[1024, 1024],
        batch: 256,
    },
];

impl Case {
    fn is_mlp(&self) -> bool {
        self.width == 784
    }
    fn rows(&self) -> usize {
        if self.is_mlp() {
            env_or("KILN_BENCH_MLP_ROWS", 7680)
        } else {
            env_or("KILN_BENCH_ROWS", 60_000)
        }
    }
    fn epochs(&self) -> u32 {
        if self.is_mlp() {
            env_or("KILN_BENCH_MLP_EPOCHS", 5)
        } else {
            env_or("KILN_BENCH_EPOCHS", 10)
        }
    }
    fn spec(&self, epochs: u32, dataset: &str) -> Value {
        let mut layers: Vec<Value> = self
            .hidden
            .iter()
            .map(|u| json!({"type": "dense", "units": u, "activation": "relu"}))
            .collect();
        layers.push(json!({"type": "dense", "units": 10, "activation": "softmax"}));
        json!({
            "model": format!("bench_{}", self.name),
            "dataset": dataset,
            "target": "y",
            "preprocessing": {"scale": "none", "drop_duplicates": false},
            "layers": layers,
            "training": {
                "epochs": epochs,
                "batch_size": self.batch,
                "validation_split": 0,
                "optimizer": {"type": "adam", "learning_rate": 0.001},
                "seed": 42
            }
        })
    }
}

struct Collect(Vec<EpochEvent>);

impl Hooks for Collect {
    fn should_stop(&self) -> bool {
        false
    }
    fn epoch_done(&mut self, event: &EpochEvent, _: &Checkpoint) -> Result<(), String> {
        self.0.push(event.clone());
        Ok(())
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run_case(case: &Case) -> Value {
    let (rows, epochs) = (case.rows(), case.epochs());
    let (x, y) = synthetic(rows, case.width, 7);
    let t = table(&x, &y, case.width);
    drop(x);
    let spec = JobSpec::from_json(case.spec(epochs, "synthetic").to_string().as_bytes())
        .expect("bench spec parses")
        .resolve(&t)
        .expect("bench spec resolves");
    let data = prepare_data(&t, &spec, None).expect("bench data prepares");
    drop(t);
    assert_eq!(data.n_train(), rows, "every row trains");
    let mut hooks = Collect(Vec::new());
    let started = Instant::now();
    let trained = train(&spec, &data, None, &mut hooks).expect("bench training runs");
    let total = started.elapsed().as_secs_f64();
    let steps = rows.div_ceil(case.batch);
    let secs: Vec<f64> = hooks.0.iter().map(|e| e.epoch_seconds).collect();
    let sps: Vec<f64> = secs.iter().map(|s| rows as f64 / s).collect();
    let ms_step: Vec<f64> = secs.iter().map(|s| s * 1e3 / steps as f64).collect();
    let last = hooks.0.last().expect("at least one epoch");
    json!({
        "bench": "kiln",
        "case": case.name,
        "rows": rows,
        "width": case.width,
        "batch": case.batch,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "epoch_seconds": secs,
        "samples_per_sec": sps,
        "median_samples_per_sec": median(&sps),
        "median_ms_per_step": median(&ms_step),
        "first_loss": hooks.0[0].loss,
        "last_loss": last.loss,
        "last_accuracy": last.metrics.get("accuracy"),
        "final_accuracy": trained.final_metrics.accuracy,
        "train_call_seconds": total,
    })
}

// === `kiln train` vs a server job ===

fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// What one run (CLI or job) took. `epoch_at`: when each epoch's event reached the bench
/// (a `--json` line on the CLI's stdout; a server-sent `epoch` event of the job) — it comes
/// after the epoch's hooks, so the gap between two events is the loop plus what the hooks do
/// (the job's history row and checkpoint; nothing for the CLI).
struct RunTimes {
    epoch_at: Vec<Instant>,
    /// Σ of the trainer's own `epoch_seconds` (the loop alone).
    loop_seconds: f64,
    /// CLI: process start → exit. Job: POST → `end` event.
    end_to_end: f64,
    /// Job only: `finished_at − started_at` of the job record (the job thread's life).
    job_thread: Option<f64>,
    /// Job only: seconds until POST /v1/training-jobs answered (the spec is resolved
    /// against the dataset before the answer).
    submit: Option<f64>,
}

impl RunTimes {
    /// Mean seconds between consecutive epoch events.
    fn per_epoch(&self) -> f64 {
        let (a, b) = (self.epoch_at[0], *self.epoch_at.last().unwrap());
        b.duration_since(a).as_secs_f64() / (self.epoch_at.len() - 1) as f64
    }
    /// Mean seconds per epoch spent after the loop (hooks: history, checkpoint, events).
    fn hooks_per_epoch(&self) -> f64 {
        let n = self.epoch_at.len() as f64;
        self.per_epoch() - self.loop_seconds / n
    }
}

fn cli_once(csv: &Path, spec: &Path, models: &Path) -> RunTimes {
    let started = Instant::now();
    let mut child = Command::new(kiln_bin())
        .args(["train", "--json", "--threads", "1", "--target", "y"])
        .arg("--data")
        .arg(csv)
        .arg("--spec")
        .arg(spec)
        .arg("--models")
        .arg(models)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln train");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut epoch_at, mut loop_seconds) = (Vec::new(), 0.0);
    for line in out.lines() {
        let line = line.unwrap();
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(s) = v["epoch_seconds"].as_f64() {
            epoch_at.push(Instant::now());
            loop_seconds += s;
        }
    }
    assert!(child.wait().unwrap().success(), "kiln train failed");
    RunTimes {
        epoch_at,
        loop_seconds,
        end_to_end: started.elapsed().as_secs_f64(),
        job_thread: None,
        submit: None,
    }
}

fn ms_of(rfc: &str) -> f64 {
    // 2026-01-01T12:34:56.789Z → milliseconds within the day (a run never spans midnight
    // in practice; a negative difference fails the assertion below).
    let t = &rfc[11..23];
    let h: f64 = t[0..2].parse().unwrap();
    let m: f64 = t[3..5].parse().unwrap();
    let s: f64 = t[6..12].parse().unwrap();
    (h * 3600.0 + m * 60.0 + s) * 1e3
}

struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path) -> Server {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(kiln_bin())
        .args(["serve", "--threads", "1", "--workers", "1"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--models")
        .arg(dir.join("models"))
        .arg("--max-upload-bytes")
        .arg((1u64 << 30).to_string())
        .env("RUST_LOG", "warn")
        .env("KILN_GRPC_LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln serve");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kiln serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, base }
}

/// One server job, followed through its server-sent events (no polling while it runs).
async fn http_once(client: &reqwest::Client, base: &str, dataset: &str, spec: &Value) -> RunTimes {
    let mut body = spec.clone();
    body["dataset"] = dataset.into();
    let submitted = Instant::now();
    let r = client
        .post(format!("{base}/v1/training-jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "submit: {}",
        r.text().await.unwrap()
    );
    let job: Value = r.json().await.unwrap();
    let submit = submitted.elapsed().as_secs_f64();
    let id = job["id"].as_str().unwrap().to_owned();
    let mut events = client
        .get(format!("{base}/v1/training-jobs/{id}/events"))
        .send()
        .await
        .unwrap();
    assert!(events.status().is_success());
    let (mut epoch_at, mut loop_seconds) = (Vec::new(), 0.0);
    let (mut buf, mut event) = (String::new(), String::new());
    'stream: while let Some(chunk) = events.chunk().await.unwrap() {
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = buf.find('\n') {
            let line = buf[..nl].trim_end_matches('\r').to_owned();
            buf.drain(..=nl);
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                match event.as_str() {
                    "epoch" => {
                        let v: Value = serde_json::from_str(d.trim()).unwrap();
                        epoch_at.push(now);
                        loop_seconds += v["epoch_seconds"].as_f64().unwrap();
                    }
                    "end" => {
                        let v: Value = serde_json::from_str(d.trim()).unwrap();
                        assert_eq!(v["state"], "succeeded", "job ended: {v}");
                        break 'stream;
                    }
                    other => panic!("unexpected event {other}: {d}"),
                }
            }
        }
    }
    let end_to_end = submitted.elapsed().as_secs_f64();
    drop(events);
    let v: Value = client
        .get(format!("{base}/v1/training-jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_thread = (ms_of(v["finished_at"].as_str().unwrap())
        - ms_of(v["started_at"].as_str().unwrap()))
        / 1e3;
    assert!(job_thread > 0.0);
    RunTimes {
        epoch_at,
        loop_seconds,
        end_to_end,
        job_thread: Some(job_thread),
        submit: Some(submit),
    }
}

fn http_vs_cli() {
    let case = CASES[0];
    let rounds: usize = env_or("KILN_BENCH_HTTP_ROUNDS", 3);
    // A big data set (epochs of about a second) and a small one (epochs of milliseconds,
    // where what happens per epoch outside the loop shows).
    let configs = [
        (
            "big",
            env_or("KILN_BENCH_HTTP_ROWS", 60_000usize),
            env_or("KILN_BENCH_HTTP_EPOCHS", 10u32),
        ),
        (
            "small",
            env_or("KILN_BENCH_HTTP_SMALL_ROWS", 1_000usize),
            env_or("KILN_BENCH_HTTP_SMALL_EPOCHS", 50u32),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    for (label, rows, epochs) in configs {
        let csv = dir.path().join(format!("{label}.csv"));
        let (x, y) = synthetic(rows, case.width, 7);
        write_csv(&csv, &x, &y, case.width);
        drop((x, y));
        let spec = case.spec(epochs, "synthetic");
        let spec_path = dir.path().join(format!("{label}.json"));
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        eprintln!(
            "kiln train vs server job, {label}: the seed model, {rows} rows × 100, batch {}, {epochs} epochs, {rounds} interleaved rounds",
            case.batch
        );
        let dataset: String = rt.block_on(async {
            let r = client
                .post(format!("{}/v1/datasets?name={label}", server.base))
                .header("content-type", "text/csv")
                .body(std::fs::read(&csv).unwrap())
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "upload: {}",
                r.text().await.unwrap()
            );
            let v: Value = r.json().await.unwrap();
            v["id"].as_str().unwrap().to_owned()
        });
        let models = dir.path().join("cli-models");
        let (mut cli, mut http) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let c = cli_once(&csv, &spec_path, &models);
            let h = rt.block_on(http_once(&client, &server.base, &dataset, &spec));
            assert_eq!(
                (c.epoch_at.len(), h.epoch_at.len()),
                (epochs as usize, epochs as usize)
            );
            eprintln!(
                "  round {}: cli {:.1} ms/epoch between events (loop {:.1}, after it {:.1}), process {:.2} s | job {:.1} ms/epoch between events (loop {:.1}, after it {:.1}), submit→end {:.2} s (POST answered in {:.2} s), job thread {:.2} s",
                round + 1,
                c.per_epoch() * 1e3,
                c.loop_seconds * 1e3 / f64::from(epochs),
                c.hooks_per_epoch() * 1e3,
                c.end_to_end,
                h.per_epoch() * 1e3,
                h.loop_seconds * 1e3 / f64::from(epochs),
                h.hooks_per_epoch() * 1e3,
                h.end_to_end,
                h.submit.unwrap(),
                h.job_thread.unwrap()
            );
            cli.push(c);
            http.push(h);
        }
        let med = |v: &[RunTimes], f: &dyn Fn(&RunTimes) -> f64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        let e = f64::from(epochs);
        let line = json!({
            "bench": "kiln_http",
            "config": label,
            "rows": rows,
            "epochs": epochs,
            "batch": case.batch,
            "rounds": rounds,
            "cli_ms_per_epoch": med(&cli, &|r| r.per_epoch() * 1e3),
            "job_ms_per_epoch": med(&http, &|r| r.per_epoch() * 1e3),
            "cli_loop_ms_per_epoch": med(&cli, &|r| r.loop_seconds * 1e3 / e),
            "job_loop_ms_per_epoch": med(&http, &|r| r.loop_seconds * 1e3 / e),
            "cli_after_loop_ms_per_epoch": med(&cli, &|r| r.hooks_per_epoch() * 1e3),
            "job_after_loop_ms_per_epoch": med(&http, &|r| r.hooks_per_epoch() * 1e3),
            "per_epoch_ratio": median(&cli.iter().zip(&http).map(|(c, h)| h.per_epoch() / c.per_epoch()).collect::<Vec<_>>()),
            "cli_process_seconds": med(&cli, &|r| r.end_to_end),
            "job_submit_to_end_seconds": med(&http, &|r| r.end_to_end),
            "job_thread_seconds": med(&http, &|r| r.job_thread.unwrap()),
            "job_submit_answer_seconds": med(&http, &|r| r.submit.unwrap()),
            "end_to_end_ratio": median(&cli.iter().zip(&http).map(|(c, h)| h.end_to_end / c.end_to_end).collect::<Vec<_>>()),
        });
        eprintln!(
            "  medians: per epoch cli {:.1} ms, job {:.1} ms (×{:.3}); after the loop cli {:.1} ms, job {:.1} ms per epoch; end to end cli {:.2} s, job {:.2} s (×{:.3}; POST answered in {:.2} s, job thread {:.2} s)",
            line["cli_ms_per_epoch"].as_f64().unwrap(),
            line["job_ms_per_epoch"].as_f64().unwrap(),
            line["per_epoch_ratio"].as_f64().unwrap(),
            line["cli_after_loop_ms_per_epoch"].as_f64().unwrap(),
            line["job_after_loop_ms_per_epoch"].as_f64().unwrap(),
            line["cli_process_seconds"].as_f64().unwrap(),
            line["job_submit_to_end_seconds"].as_f64().unwrap(),
            line["end_to_end_ratio"].as_f64().unwrap(),
            line["job_submit_answer_seconds"].as_f64().unwrap(),
            line["job_thread_seconds"].as_f64().unwrap(),
        );
        println!("{line}");
    }
}

/// What a server job does after each epoch, timed piece by piece (the same calls as the job
/// hooks in src/jobs/manager.rs: the history row, then the checkpoint files).
struct JobLikeHooks {
    store: kiln::jobs::SqliteJobStore,
    ckdir: std::path::PathBuf,
    /// Per epoch: (record_epoch, checkpoint::save) seconds.
    times: Vec<(f64, f64)>,
    loop_seconds: Vec<f64>,
}

impl Hooks for JobLikeHooks {
    fn should_stop(&self) -> bool {
        false
    }
    fn epoch_done(&mut self, event: &EpochEvent, ck: &Checkpoint) -> Result<(), String> {
        let t0 = Instant::now();
        self.store
            .record_epoch("job_0000000000000000", event)
            .map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        kiln::jobs::checkpoint::save(&self.ckdir, ck, event)?;
        let t2 = Instant::now();
        self.times
            .push(((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64()));
        self.loop_seconds.push(event.epoch_seconds);
        Ok(())
    }
}

/// `hooks`: the seed model at batch 32 on the small data set with a job's per-epoch work.
fn job_hooks() {
    let case = CASES[0];
    let rows = env_or("KILN_BENCH_HTTP_SMALL_ROWS", 1_000usize);
    let epochs = env_or("KILN_BENCH_HTTP_SMALL_EPOCHS", 50u32);
    let dir = tempfile::tempdir().unwrap();
    let store = kiln::jobs::SqliteJobStore::open(&dir.path().join("kiln.db")).unwrap();
    let (x, y) = synthetic(rows, case.width, 7);
    let t = table(&x, &y, case.width);
    let spec = JobSpec::from_json(case.spec(epochs, "synthetic").to_string().as_bytes())
        .unwrap()
        .resolve(&t)
        .unwrap();
    store.insert("job_0000000000000000", &spec).unwrap();
    let data = prepare_data(&t, &spec, None).unwrap();
    let mut hooks = JobLikeHooks {
        store,
        ckdir: dir.path().join("checkpoints").join("job_0000000000000000"),
        times: Vec::new(),
        loop_seconds: Vec::new(),
    };
    train(&spec, &data, None, &mut hooks).unwrap();
    let ms = |f: &dyn Fn(&(f64, f64)) -> f64| {
        median(&hooks.times.iter().map(|t| f(t) * 1e3).collect::<Vec<_>>())
    };
    let line = json!({
        "bench": "kiln_job_hooks",
        "rows": rows,
        "epochs": epochs,
        "loop_ms": median(&hooks.loop_seconds.iter().map(|s| s * 1e3).collect::<Vec<_>>()),
        "record_epoch_ms": ms(&|t| t.0),
        "checkpoint_save_ms": ms(&|t| t.1),
    });
    eprintln!(
        "per epoch (medians): training loop {:.2} ms; job hooks: history row {:.2} ms, checkpoint files (fsynced) {:.2} ms",
        line["loop_ms"].as_f64().unwrap(),
        line["record_epoch_ms"].as_f64().unwrap(),
        line["checkpoint_save_ms"].as_f64().unwrap(),
    );
    println!("{line}");
}

fn main() {
    // Before anything touches candle (its pools read these once).
    std::env::set_var("RAYON_NUM_THREADS", "1");
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.iter().any(|a| a == "http") {
        http_vs_cli();
        return;
    }
    if args.iter().any(|a| a == "hooks") {
        job_hooks();
        return;
    }
    if args.first().map(String::as_str) == Some("csv") {
        // `train csv PATH [ROWS WIDTH]`: write the synthetic data set (for manual runs).
        let path = args.get(1).expect("csv PATH");
        let rows = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60_000);
        let width = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
        let (x, y) = synthetic(rows, width, 7);
        write_csv(Path::new(path), &x, &y, width);
        return;
    }
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| args.is_empty() || args.iter().any(|a| a == c.name))
        .collect();
    eprintln!(
        "kiln training benchmark: 1 thread; avx512f detected: {}",
        std::is_x86_feature_detected!("avx512f")
    );
    for case in cases {
        let v = run_case(case);
        eprintln!(
            "{:<10} batch {:>3}: {:>9.0} samples/s per epoch (median of {}), {:.3} ms/step; loss {:.4} → {:.4}; epochs {:?}",
            case.name,
            case.batch,
            v["median_samples_per_sec"].as_f64().unwrap(),
            v["epochs"],
            v["median_ms_per_step"].as_f64().unwrap(),
            v["first_loss"].as_f64().unwrap(),
            v["last_loss"].as_f64().unwrap(),
            v["samples_per_sec"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap().round() as u64)
                .collect::<Vec<_>>()
        );
        println!("{v}");
    }
}
