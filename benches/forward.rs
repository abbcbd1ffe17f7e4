//! In-process forward throughput of kiln's `Model`, single-threaded.
//!
//! ```text
//! cargo bench --bench forward
//! ```
//!
//! Models (random weights, built by kiln's own layer builder, run through `Model::run_rows`,
//! the call a worker makes per batch: flat rows in → one tensor → forward → flat rows out),
//! called as kiln's batch workers call it: from the thread of a one-thread rayon pool
//! (`threads = 1`; see `batcher::spawn`):
//! - the compute-bound MLP 784→1024 relu→1024 relu→10, at batch 1, 32 and 256, with GFLOP/s
//!   (2·(784·1024 + 1024·1024 + 1024·10) FLOPs per row);
//! - the seed model 100→64 relu→32 relu→10 softmax, at batch 1, 32 and 256.
//!
//! Also, as references: `Model::forward` on a prebuilt tensor (no input copy, no copy back),
//! the MLP's three GEMMs as bare candle matmuls (no bias, relu or copies), and the
//! seed model called from a plain thread (how workers called it before they ran on their own
//! rayon pool: see the comment at that case).
//!
//! `RAYON_NUM_THREADS=1` and `CANDLE_NUM_THREADS=1` are set first thing (kiln's default
//! `threads = 1`): every figure is one core. Timing: rounds interleaved over all cases
//! (each round ≈ `KILN_BENCH_ROUND_MS` of calls), median over `KILN_BENCH_ROUNDS` rounds.
//!
//! Environment: `KILN_BENCH_ROUNDS` (7), `KILN_BENCH_ROUND_MS` (300), `KILN_BENCH_FILTER`
//! (run only the cases whose name contains it, e.g. `seed`).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kiln::model::format::ModelSpec;
use kiln::model::Model;
use serde_json::json;

const MLP_FLOPS_PER_ROW: f64 = 2.0 * (784.0 * 1024.0 + 1024.0 * 1024.0 + 1024.0 * 10.0);
const SEED_FLOPS_PER_ROW: f64 = 2.0 * (100.0 * 64.0 + 64.0 * 32.0 + 32.0 * 10.0);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A model built from `spec` with random weights (candle's default initialisers).
fn build(spec: serde_json::Value) -> Model {
    let spec = ModelSpec::from_json(&spec.to_string()).expect("bench spec parses");
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Model::check_and_build(&spec, &vb).expect("bench spec builds");
    // Plain tensors (copied out of the Vars), as a served model holds them.
    let tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    Model::from_tensors(spec, tensors, &Device::Cpu).expect("bench model builds")
}

fn mlp() -> Model {
    build(json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [784]},
        "layers": [
            {"type": "dense", "units": 1024, "activation": "relu"},
            {"type": "dense", "units": 1024, "activation": "relu"},
            {"type": "dense", "units": 10}
        ]
    }))
}

fn seed() -> Model {
    build(json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [100]},
        "layers": [
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dense", "units": 32, "activation": "relu"},
            {"type": "dense", "units": 10},
            {"type": "activation", "activation": "softmax"}
        ]
    }))
}

fn rows(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One benchmarked call: runs `batch` rows once.
struct Case {
    name: String,
    batch: usize,
    flops_per_row: f64,
    run: Box<dyn FnMut() + Send>,
    /// Run the timing loop on a rayon pool thread (as if kiln's worker were one).
    in_pool: bool,
    /// Calls per round, calibrated once.
    iters: u64,
    /// Seconds per call, one entry per round.
    samples: Vec<f64>,
    /// Minor page faults of the whole process over all timed calls.
    faults: u64,
    /// Calls timed in all.
    calls: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // Before anything touches candle (its pools read these once).
    std::env::set_var("RAYON_NUM_THREADS", "1");
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    let rounds: usize = env_or("KILN_BENCH_ROUNDS", 7);
    let round = Duration::from_millis(env_or("KILN_BENCH_ROUND_MS", 300));

    println!(
        "kiln forward benchmark: 1 thread (RAYON_NUM_THREADS=1, CANDLE_NUM_THREADS=1); avx512f detected: {}, avx2: {}, fma: {}",
        std::is_x86_feature_detected!("avx512f"),
        std::is_x86_feature_detected!("avx2"),
        std::is_x86_feature_detected!("fma"),
    );
    println!(
        "{rounds} interleaved rounds of ~{} ms per case; medians",
        round.as_millis()
    );

    let mlp = Arc::new(mlp());
    let seed = Arc::new(seed());
    let mut cases: Vec<Case> = Vec::new();
    for (label, model, width, flops) in [
        ("mlp 784-1024-1024-10", &mlp, 784usize, MLP_FLOPS_PER_ROW),
        ("seed 100-64-32-10", &seed, 100usize, SEED_FLOPS_PER_ROW),
    ] {
        for batch in [1usize, 32, 256] {
            let input = rows(batch * width, batch as u64);
            let m = model.clone();
            cases.push(Case {
                name: format!("{label} run_rows"),
                batch,
                flops_per_row: flops,
                run: Box::new(move || {
                    let out = m.run_rows(input.clone(), batch).unwrap();
                    black_box(out);
                }),
                in_pool: true,
                iters: 0,
                samples: Vec::new(),
                faults: 0,
                calls: 0,
            });
        }
        // The same at batch 256 without the host copies in and out.
        let batch = 256;
        let xs = Tensor::from_vec(rows(batch * width, 9), (batch, width), &Device::Cpu).unwrap();
        let m = model.clone();
        cases.push(Case {
            name: format!("{label} forward (tensor in/out)"),
            batch,
            flops_per_row: flops,
            run: Box::new(move || {
                black_box(m.forward(&xs).unwrap());
            }),
            in_pool: true,
            iters: 0,
            samples: Vec::new(),
            faults: 0,
            calls: 0,
        });
    }
    // The MLP's three GEMMs alone, as Linear calls them (x · wᵀ), with no bias, relu or host
    // copies: the candle floor under the MLP rows above (same FLOPs per row).
    {
        let x = Tensor::from_vec(rows(256 * 784, 3), (256, 784), &Device::Cpu).unwrap();
        let ws: Vec<Tensor> = [(1024usize, 784usize), (1024, 1024), (10, 1024)]
            .iter()
            .enumerate()
            .map(|(i, &(o, n))| {
                (Tensor::from_vec(rows(o * n, 4 + i as u64), (o, n), &Device::Cpu).unwrap() * 0.05)
                    .unwrap()
            })
            .collect();
        cases.push(Case {
            name: "mlp's 3 bare candle matmuls (x . w^T)".into(),
            batch: 256,
            flops_per_row: MLP_FLOPS_PER_ROW,
            run: Box::new(move || {
                let mut h = x.clone();
                for w in &ws {
                    h = h.matmul(&w.t().unwrap()).unwrap();
                }
                black_box(h);
            }),
            in_pool: true,
            iters: 0,
            samples: Vec::new(),
            faults: 0,
            calls: 0,
        });
    }
    // The seed model called from a plain thread (this bench's main thread), as kiln's workers
    // called it until they ran on their own rayon pool. candle's softmax_last_dim (and the
    // layer/rms norms) split rows with rayon's par_chunks: from a thread outside any pool each
    // call hands the job to rayon's global pool and sleeps until it is done (two thread
    // wake-ups per op); from a pool thread it runs inline.
    for batch in [1usize, 32, 256] {
        let input = rows(batch * 100, batch as u64);
        let m = seed.clone();
        cases.push(Case {
            name: "seed 100-64-32-10 run_rows, plain thread".into(),
            batch,
            flops_per_row: SEED_FLOPS_PER_ROW,
            run: Box::new(move || {
                black_box(m.run_rows(input.clone(), batch).unwrap());
            }),
            in_pool: false,
            iters: 0,
            samples: Vec::new(),
            faults: 0,
            calls: 0,
        });
    }
    // A worker's pool, as `batcher::spawn` builds it with `threads = 1`.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "bench-worker".into())
        .build()
        .expect("a one-thread rayon pool");

    if let Ok(filter) = std::env::var("KILN_BENCH_FILTER") {
        cases.retain(|c| c.name.contains(filter.as_str()));
    }
    // Warm up and calibrate: calls per round ≈ round duration.
    for c in &mut cases {
        let calibrate = |run: &mut Box<dyn FnMut() + Send>| {
            for _ in 0..3 {
                run();
            }
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < round / 4 {
                run();
                n += 1;
            }
            t.elapsed().as_secs_f64() / n as f64
        };
        let per = if c.in_pool {
            pool.install(|| calibrate(&mut c.run))
        } else {
            calibrate(&mut c.run)
        };
        c.iters = ((round.as_secs_f64() / per) as u64).max(1);
    }
    let started = Instant::now();
    let busy_before = machine_busy_secs();
    for _ in 0..rounds {
        for c in &mut cases {
            let iters = c.iters;
            let timed = |run: &mut Box<dyn FnMut() + Send>| {
                let t = Instant::now();
                for _ in 0..iters {
                    run();
                }
                t.elapsed().as_secs_f64() / iters as f64
            };
            let faults = minor_faults();
            let per = if c.in_pool {
                pool.install(|| timed(&mut c.run))
            } else {
                timed(&mut c.run)
            };
            c.faults += minor_faults().saturating_sub(faults);
            c.calls += iters;
            c.samples.push(per);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let busy = machine_busy_secs() - busy_before;

    println!(
        "\n{:<44} {:>6} {:>10} {:>12} {:>9} {:>12} {:>9} {:>7} {:>12}",
        "case",
        "batch",
        "µs/call",
        "rows/s",
        "GFLOP/s",
        "best rows/s",
        "best GF/s",
        "spread",
        "faults/call"
    );
    for c in &cases {
        let med = median(c.samples.clone());
        let lo = c.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = c.samples.iter().copied().fold(0.0, f64::max);
        let rows_ps = c.batch as f64 / med;
        let best_rows_ps = c.batch as f64 / lo;
        println!(
            "{:<44} {:>6} {:>10.1} {:>12.0} {:>9.1} {:>12.0} {:>9.1} {:>6.0}% {:>12.1}",
            c.name,
            c.batch,
            med * 1e6,
            rows_ps,
            rows_ps * c.flops_per_row / 1e9,
            best_rows_ps,
            best_rows_ps * c.flops_per_row / 1e9,
            (hi - lo) / med * 100.0,
            c.faults as f64 / c.calls.max(1) as f64
        );
    }
    println!(
        "\n(median and fastest of {rounds} rounds; spread: (slowest − fastest) / median. Target: MLP at batch 256 ≥ 90 GFLOP/s, half of the ~180 GFLOP/s AVX-512 FMA peak of one core.)"
    );
    println!(
        "measured in {wall:.0} s; the machine was busy {:.2} cores on average (this bench uses ~1: more means other work shared the machine)",
        busy / wall
    );
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat); 0 elsewhere.
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces: count fields after its ')'.
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Seconds of CPU the whole machine spent busy (all processes, steal included), from
/// /proc/stat; 0 where it cannot be read.
fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 8 {
        return 0.0;
    }
    // user nice system idle iowait irq softirq steal, in USER_HZ (100 per second)
    (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) as f64 / 100.0
}
