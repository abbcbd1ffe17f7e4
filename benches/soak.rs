//! Soak: the real `kiln serve` under a fixed request rate for a fixed time, then SIGTERM under
//! the same load. A reliability check rather than a measure of speed: it exits non-zero when
//! a check fails.
//!
//! ```text
//! cargo bench --bench soak
//! KILN_SOAK_SECS=600 KILN_SOAK_RATE=500 cargo bench --bench soak
//! ```
//!
//! The binary (`CARGO_BIN_EXE_kiln`, release-optimized by `cargo bench`) serves the shipped
//! models (`models/iris`, `models/digits`) on 127.0.0.1:0 with `--drain-delay`. The load is
//! open-loop: request *i* is due at `start + i / rate` whatever the latency of the ones
//! before it, on a pool of keep-alive HTTP/1.1 connections (hyper) that grows when every
//! connection is busy. Latency is counted from the moment a request was due, so a stall
//! shows as latency instead of as a lower rate. The requests cycle through v1 `:predict`
//! (an array of raw values and an object of named features), v1 `:classify` and v2 `/infer`,
//! on both models.
//!
//! 1. Soak: `KILN_SOAK_SECS` at `KILN_SOAK_RATE`; the server's VmRSS is read from
//!    `/proc/<pid>/status` every second. Checks: every request answered 200 with the expected
//!    body. Reports latency percentiles and RSS at start, after warm-up and at the end.
//! 2. SIGTERM under load: the same rate for `KILN_SOAK_SIGTERM_AFTER_SECS`, then SIGTERM, the
//!    load going on until the process has exited. Checks: every request sent before the
//!    signal answered 200; every request sent during the drain delay (less 250 ms, for the
//!    race with the listener closing) answered 200; the process exits 0 within
//!    `drain delay + 30 s`. Requests sent after listening stopped fail (connection refused or
//!    closed); they are counted apart, not as failures.
//!
//! Environment (all optional):
//! - `KILN_SOAK_RATE` (300): requests per second.
//! - `KILN_SOAK_SECS` (120): length of the soak; `KILN_SOAK_WARMUP_SECS` (10): RSS "after
//!   warm-up" is the sample taken then.
//! - `KILN_SOAK_DRAIN_DELAY` (1.5): the server's `--drain-delay`, seconds.
//! - `KILN_SOAK_SIGTERM_AFTER_SECS` (5): load before the signal in phase 2.
//! - `KILN_SOAK_MAX_CONNECTIONS` (256): most connections open at once; a request due while
//!   all are busy waits (and its latency shows it).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use common::{boot_binary, env_or, http_status, mib, rss_kib};

/// Requests sent during the drain delay but this close to its end may meet the listener
/// closing; they are not held to the drain-delay check.
const DRAIN_MARGIN: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
struct Settings {
    rate: f64,
    secs: f64,
    warmup: f64,
    drain_delay: f64,
    sigterm_after: f64,
    max_connections: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let s = Settings {
            rate: env_or("KILN_SOAK_RATE", 300.0),
            secs: env_or("KILN_SOAK_SECS", 120.0),
            warmup: env_or("KILN_SOAK_WARMUP_SECS", 10.0),
            drain_delay: env_or("KILN_SOAK_DRAIN_DELAY", 1.5),
            sigterm_after: env_or("KILN_SOAK_SIGTERM_AFTER_SECS", 5.0),
            max_connections: env_or("KILN_SOAK_MAX_CONNECTIONS", 256),
        };
        assert!(s.rate > 0.0, "KILN_SOAK_RATE must be positive");
        assert!(
            s.max_connections > 0,
            "KILN_SOAK_MAX_CONNECTIONS must be positive"
        );
        s
    }
}

// === the request mix ===

/// One kind of request: where it goes, what it sends, the key its answer must have.
struct Kind {
    label: &'static str,
    path: &'static str,
    body: Bytes,
    answer_key: &'static str,
}

fn kinds() -> Vec<Kind> {
    let iris = [5.1, 3.5, 1.4, 0.2];
    let named =
        json!({"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3});
    // An 8x8 digit ("0"-like ring), pixel values 0-16 as in the training data.
    let digit: Vec<f64> = (0..64)
        .map(|i| {
            let (r, c) = (i / 8, i % 8);
            let outer = (1..7).contains(&r) && (1..7).contains(&c);
            let inner = (2..6).contains(&r) && (2..6).contains(&c);
            if outer && !inner {
                15.0
            } else {
                0.0
            }
        })
        .collect();
    let body = |v: Value| Bytes::from(serde_json::to_vec(&v).expect("JSON bodies serialize"));
    vec![
        Kind {
            label: "v1 iris :predict (array)",
            path: "/v1/models/iris:predict",
            body: body(json!({"instances": [iris]})),
            answer_key: "predictions",
        },
        Kind {
            label: "v1 iris :predict (named)",
            path: "/v1/models/iris:predict",
            body: body(json!({"instances": [named]})),
            answer_key: "predictions",
        },
        Kind {
            label: "v1 iris :classify",
            path: "/v1/models/iris:classify",
            body: body(json!({"examples": [named]})),
            answer_key: "results",
        },
        Kind {
            label: "v2 iris /infer",
            path: "/v2/models/iris/infer",
            body: body(
                json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris}]}),
            ),
            answer_key: "outputs",
        },
        Kind {
            label: "v1 digits :predict",
            path: "/v1/models/digits:predict",
            body: body(json!({"instances": [digit]})),
            answer_key: "predictions",
        },
        Kind {
            label: "v2 digits /infer",
            path: "/v2/models/digits/infer",
            body: body(
                json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": digit}]}),
            ),
            answer_key: "outputs",
        },
    ]
}

// === the open-loop load generator ===

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// No connection could be opened (after listening stopped: refused).
    Connect(String),
    /// The connection failed after the request was written (closed, reset).
    Closed(String),
    /// An answer other than 200.
    Status(u16),
    /// A 200 whose body is not the expected JSON.
    BadBody(String),
}

impl Outcome {
    /// A short name to count outcomes by.
    fn kind(&self) -> String {
        match self {
            Outcome::Ok => "200".into(),
            Outcome::Connect(_) => "connect failed".into(),
            Outcome::Closed(_) => "connection closed".into(),
            Outcome::Status(s) => format!("status {s}"),
            Outcome::BadBody(_) => "bad body".into(),
        }
    }
}

struct Record {
    kind: usize,
    /// When the request was due (the schedule), and when it was handed to a connection.
    due: Instant,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

/// Keep-alive connections not in use, and a cap on connections in use.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    busy: Semaphore,
    opened: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn new(addr: SocketAddr, max: usize) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
            busy: Semaphore::new(max),
            opened: Default::default(),
        }
    }

    /// An idle connection that is still open, or a new one.
    async fn take(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let idle = self.idle.lock().expect("pool lock").pop();
            match idle {
                Some(s) if s.is_ready() => return Ok(s),
                Some(_) => continue, // closed by the server while idle: drop it
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(sender)
    }

    fn give_back(&self, s: SendRequest<Full<Bytes>>) {
        if s.is_ready() {
            self.idle.lock().expect("pool lock").push(s);
        }
    }
}

/// Sends one request, on a pooled connection; a request a connection refused before writing
/// it (closed while idle) is retried on another.
async fn one(pool: Arc<Pool>, kinds: Arc<Vec<Kind>>, kind: usize, due: Instant) -> Record {
    let k = &kinds[kind];
    let _permit = pool
        .busy
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let sent = Instant::now();
    let host = pool.addr.to_string();
    let mut req = hyper::Request::post(k.path)
        .header(HOST, host.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(k.body.clone()))
        .expect("a valid request");
    let outcome = loop {
        let mut sender = match pool.take().await {
            Ok(s) => s,
            Err(e) => break Outcome::Connect(e),
        };
        match sender.try_send_request(req).await {
            Ok(res) => {
                let status = res.status().as_u16();
                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                pool.give_back(sender);
                break match (status, body) {
                    (_, Err(e)) => Outcome::Closed(e.to_string()),
                    (200, Ok(b)) => match serde_json::from_slice::<Value>(&b) {
                        Ok(v) if v.get(k.answer_key).is_some() => Outcome::Ok,
                        Ok(v) => Outcome::BadBody(format!("no '{}' in {v}", k.answer_key)),
                        Err(e) => Outcome::BadBody(e.to_string()),
                    },
                    (s, Ok(_)) => Outcome::Status(s),
                };
            }
            Err(mut e) => match e.take_message() {
                Some(r) => req = r, // never written: try another connection
                None => break Outcome::Closed(e.into_error().to_string()),
            },
        }
    };
    Record {
        kind,
        due,
        sent,
        done: Instant::now(),
        outcome,
    }
}

/// Issues requests at `rate` from now until `stop` says so (checked at each tick), cycling
/// through the kinds, and returns every record once all have ended.
async fn drive(
    pool: Arc<Pool>,
    kinds: Arc<Vec<Kind>>,
    rate: f64,
    stop: impl Fn(Instant) -> bool,
) -> Vec<Record> {
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    loop {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        if stop(due) {
            break;
        }
        let kind = (i % kinds.len() as u64) as usize;
        tasks.spawn(one(pool.clone(), kinds.clone(), kind, due));
        i += 1;
    }
    let mut records = Vec::with_capacity(i as usize);
    while let Some(r) = tasks.join_next().await {
        records.push(r.expect("request tasks do not panic"));
    }
    records.sort_by_key(|r| r.due);
    records
}

// === reports ===

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Counts of outcomes by kind, e.g. `{"200": 35996, "status 503": 4}`.
fn tally<'a>(records: impl Iterator<Item = &'a Record>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.outcome.kind()).or_default() += 1;
    }
    m
}

fn latency_line(records: &[&Record]) -> String {
    let mut l: Vec<Duration> = records.iter().map(|r| r.done - r.due).collect();
    l.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        percentile_ms(&l, 0.5),
        percentile_ms(&l, 0.99),
        percentile_ms(&l, 0.999),
        l.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    )
}

/// Least-squares slope of (seconds, KiB) samples, in MiB per minute.
fn slope_mib_per_min(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let var: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    cov / var / 1024.0 * 60.0
}

/// Failed checks, printed at the end.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: String) {
        println!("  check: {what}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            self.0.push(what);
        }
    }
}

fn print_failures(records: &[&Record], kinds: &[Kind]) {
    for r in records.iter().filter(|r| r.outcome != Outcome::Ok).take(5) {
        println!("    e.g. {}: {:?}", kinds[r.kind].label, r.outcome);
    }
}

// === the phases ===

fn soak(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    pool: &Arc<Pool>,
    kinds: &Arc<Vec<Kind>>,
    pid: u32,
    checks: &mut Checks,
) {
    println!(
        "\n== phase 1: {:.0} req/s for {:.0} s (open loop) ==",
        s.rate, s.secs
    );
    let started = Instant::now();
    let (rss0, _) = rss_kib(pid);
    // One sample a second on a thread of its own, while the load runs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                samples.push((started.elapsed().as_secs_f64(), rss_kib(pid).0));
            }
            samples
        })
    };
    let end = started + Duration::from_secs_f64(s.secs);
    let records = rt.block_on(drive(pool.clone(), kinds.clone(), s.rate, |due| due >= end));
    let elapsed = started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().expect("the RSS sampler does not panic");
    let (rss_end, hwm) = rss_kib(pid);

    let all: Vec<&Record> = records.iter().collect();
    let ok = all.iter().filter(|r| r.outcome == Outcome::Ok).count();
    // Intervals between the first and last due times: the rate the schedule kept.
    let span = records
        .last()
        .map_or(0.0, |r| (r.due - records[0].due).as_secs_f64());
    println!(
        "  {} requests in {elapsed:.1} s ({:.1} req/s over {span:.1} s; {} connections opened)",
        records.len(),
        records.len().saturating_sub(1) as f64 / span.max(1e-9),
        pool.opened.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("  outcomes: {:?}", tally(all.iter().copied()));
    println!("  latency (from due time): {}", latency_line(&all));
    for (i, k) in kinds.iter().enumerate() {
        let of: Vec<&Record> = all.iter().copied().filter(|r| r.kind == i).collect();
        println!(
            "    {:<26} {:>6} requests, {}",
            k.label,
            of.len(),
            latency_line(&of)
        );
    }
    let late: Vec<Duration> = all.iter().map(|r| r.sent - r.due).collect();
    println!(
        "  waited for a connection: max {:.2} ms",
        late.iter().max().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    let at_warmup = samples
        .iter()
        .find(|(t, _)| *t >= s.warmup)
        .map_or(rss0, |(_, kib)| *kib);
    let after_warmup: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= s.warmup)
        .collect();
    let max = samples.iter().map(|(_, k)| *k).max().unwrap_or(rss0);
    println!(
        "  RSS: start {:.1} MiB, after {:.0} s warm-up {:.1} MiB, end {:.1} MiB, max {:.1} MiB (peak VmHWM {:.1} MiB)",
        mib(rss0),
        s.warmup,
        mib(at_warmup),
        mib(rss_end),
        mib(max),
        mib(hwm)
    );
    println!(
        "  RSS growth: start → end {:+.1} MiB; after warm-up → end {:+.1} MiB ({:+.3} MiB/min by least squares over {} samples)",
        mib(rss_end) - mib(rss0),
        mib(rss_end) - mib(at_warmup),
        slope_mib_per_min(&after_warmup),
        after_warmup.len()
    );
    // Settling or growth: the trend over the second half alone, and RSS through the run.
    let half: Vec<(f64, u64)> = after_warmup
        .iter()
        .copied()
        .filter(|(t, _)| *t >= s.secs / 2.0)
        .collect();
    println!(
        "  RSS trend over the second half ({} samples): {:+.3} MiB/min",
        half.len(),
        slope_mib_per_min(&half)
    );
    let step = (s.secs / 12.0).max(1.0);
    let mut line = String::new();
    let mut next = 0.0;
    for (t, kib) in &samples {
        if *t >= next {
            line.push_str(&format!(" {:.0}s {:.1}", t, mib(*kib)));
            next += step;
        }
    }
    println!("  RSS through the run (MiB):{line}");
    checks.check(
        ok == records.len() && !records.is_empty(),
        format!(
            "phase 1: every request answered 200 ({ok} of {})",
            records.len()
        ),
    );
    print_failures(&all, kinds);
}

/// Sends SIGTERM with kill(1) (the crate forbids `unsafe`, so no libc call).
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("running kill(1)");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// Waits for the child without blocking the runtime; `None` past `limit`.
fn wait_exit(child: &Mutex<Child>, limit: Duration) -> Option<(ExitStatus, Instant)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child
            .lock()
            .expect("child lock")
            .try_wait()
            .expect("waiting for kiln")
        {
            return Some((st, Instant::now()));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigterm_under_load(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    pool: &Arc<Pool>,
    kinds: &Arc<Vec<Kind>>,
    child: Child,
    checks: &mut Checks,
) {
    println!(
        "\n== phase 2: SIGTERM after {:.0} s of {:.0} req/s (drain delay {:.1} s) ==",
        s.sigterm_after, s.rate, s.drain_delay
    );
    let pid = child.id();
    let child = Arc::new(Mutex::new(child));
    let start = Instant::now();
    let signal_at = start + Duration::from_secs_f64(s.sigterm_after);
    let limit = Duration::from_secs_f64(s.drain_delay) + Duration::from_secs(30);
    // The signal and the wait for the exit run on a thread; the load stops 0.5 s after the exit.
    let exited: Arc<Mutex<Option<Instant>>> = Arc::default();
    let watcher = {
        let (child, exited) = (child.clone(), exited.clone());
        std::thread::spawn(move || {
            std::thread::sleep(signal_at.saturating_duration_since(Instant::now()));
            let signalled = Instant::now();
            sigterm(pid);
            let result = wait_exit(&child, limit);
            let gone = result.map_or_else(Instant::now, |(_, at)| at);
            *exited.lock().expect("exit lock") = Some(gone);
            (signalled, result)
        })
    };
    let records = rt.block_on(drive(pool.clone(), kinds.clone(), s.rate, |due| {
        exited
            .lock()
            .expect("exit lock")
            .is_some_and(|at| due > at + Duration::from_millis(500))
    }));
    let (signalled, result) = watcher.join().expect("the signal thread does not panic");
    if result.is_none() {
        let _ = child.lock().expect("child lock").kill();
    }
    let drain_end = signalled + Duration::from_secs_f64(s.drain_delay);
    let before: Vec<&Record> = records.iter().filter(|r| r.sent < signalled).collect();
    let during: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent >= signalled && r.sent + DRAIN_MARGIN < drain_end)
        .collect();
    let after: Vec<&Record> = records
        .iter()
        .filter(|r| r.sent >= signalled && r.sent + DRAIN_MARGIN >= drain_end)
        .collect();
    println!(
        "  sent before the signal: {} {:?}",
        before.len(),
        tally(before.iter().copied())
    );
    println!("    latency: {}", latency_line(&before));
    println!(
        "  sent during the drain delay (up to {} ms before its end): {} {:?}",
        DRAIN_MARGIN.as_millis(),
        during.len(),
        tally(during.iter().copied())
    );
    println!(
        "  sent after (listening stops at the end of the delay): {} {:?}",
        after.len(),
        tally(after.iter().copied())
    );
    let in_flight = before.iter().filter(|r| r.done > signalled).count();
    println!("  requests sent before the signal and answered after it: {in_flight}");
    checks.check(
        !before.is_empty() && before.iter().all(|r| r.outcome == Outcome::Ok),
        format!(
            "phase 2: every request sent before SIGTERM answered 200 ({} of {})",
            before.iter().filter(|r| r.outcome == Outcome::Ok).count(),
            before.len()
        ),
    );
    print_failures(&before, kinds);
    checks.check(
        during.iter().all(|r| r.outcome == Outcome::Ok),
        format!(
            "phase 2: every request sent during the drain delay answered 200 ({} of {})",
            during.iter().filter(|r| r.outcome == Outcome::Ok).count(),
            during.len()
        ),
    );
    print_failures(&during, kinds);
    match result {
        Some((status, at)) => {
            println!(
                "  exited {status} {:.2} s after the signal",
                (at - signalled).as_secs_f64()
            );
            checks.check(status.success(), "phase 2: the process exits 0".into());
        }
        None => checks.check(
            false,
            format!("phase 2: the process exits within {} s", limit.as_secs()),
        ),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let s = Settings::from_env();
    println!(
        "kiln soak: {} cores; {:.0} req/s for {:.0} s, then SIGTERM under load; {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.rate,
        s.secs,
        s
    );
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let data = tmp.path().join("data");
    let delay = s.drain_delay.to_string();
    let data_arg = data.to_str().expect("a UTF-8 temporary path");
    let (child, ready, boot, _log) = boot_binary(
        &models,
        tmp.path(),
        &["--drain-delay", &delay, "--data", data_arg],
    );
    let addr = boot.addr.expect("boot_binary waits for the address");
    println!(
        "  {} ready in {:.0} ms (listening at {:.0} ms) on {addr}, models from {}",
        env!("CARGO_BIN_EXE_kiln"),
        ready.as_secs_f64() * 1e3,
        boot.listening.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        models.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = Arc::new(Pool::new(addr, s.max_connections));
    let kinds = Arc::new(kinds());
    let mut checks = Checks::default();
    soak(&s, &rt, &pool, &kinds, child.id(), &mut checks);
    sigterm_under_load(&s, &rt, &pool, &kinds, child, &mut checks);
    checks.check(
        http_status(addr, "/health/live") == 0,
        "after exit: nothing listens on the port".into(),
    );
    if checks.0.is_empty() {
        println!("\nall checks passed");
    } else {
        println!("\n{} check(s) FAILED:", checks.0.len());
        for c in &checks.0 {
            println!("  - {c}");
        }
        std::process::exit(1);
    }
}
