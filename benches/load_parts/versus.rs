//! `KILN_BENCH_ONLY=versus`: kiln binaries side by side with the ceiling, each in a process
//! of its own, driven by two load generators in the same run.
//!
//! ```text
//! KILN_BENCH_ONLY=versus KILN_BENCH_VERSUS=before=/tmp/kiln-before,after=/tmp/kiln-after \
//!     cargo bench --bench load
//! ```
//!
//! - Targets: the ceiling (this bench binary re-run with `KILN_BENCH_CEILING_SERVE=1`: the
//!   bare axum server of the in-process half, on `KILN_BENCH_SERVER_THREADS` tokio threads,
//!   in its own process) and every kiln binary of `KILN_BENCH_VERSUS` (`label=path`,
//!   comma-separated; default: this build's binary as `kiln`), all serving the seed model.
//!   Give it a build of an earlier commit to compare code before and after a change.
//! - Generators (`KILN_BENCH_GENERATORS`, default `own,wrk`): `own` is this bench's hyper
//!   client (one tokio thread); `wrk` is wrk(1) (Debian's `wrk`, one thread, `--latency`),
//!   skipped with a note when it is not installed. Two generators because the ratio depends
//!   on the client: each costs the shared cores differently.
//! - Every round runs every generator against every target in turn, so a noisy moment hurts
//!   all of them alike; the summary gives medians over rounds, each target's ratio to the
//!   ceiling under the same generator, and the server's CPU per request (from
//!   `/proc/<pid>/stat`, user + system).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use super::*;

/// One measured run against one target.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rps: f64,
    p99_ms: f64,
    errors: u64,
    /// Server CPU per request, µs (user + system of the target's process).
    cpu_us: f64,
}

/// A server under test: its name, address and process.
struct Target {
    name: String,
    addr: SocketAddr,
    child: Child,
}

/// If this process was started to serve the ceiling, serves it until killed and never
/// returns.
pub fn serve_ceiling_if_asked(server_threads: usize) {
    if std::env::var_os("KILN_BENCH_CEILING_SERVE").is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("ceiling-rt")
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("ceiling listening {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        axum::serve(listener, ceiling_router()).await.unwrap();
    });
    std::process::exit(0);
}

fn spawn_ceiling(server_threads: usize) -> Target {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("KILN_BENCH_CEILING_SERVE", "1")
        .env("KILN_BENCH_SERVER_THREADS", server_threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-running the bench binary as the ceiling");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("ceiling listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the ceiling said {line:?}"));
    Target {
        name: "ceiling".into(),
        addr,
        child,
    }
}

/// CPU seconds (user + system) the process has used so far.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub(crate) fn has_wrk() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// wrk's and h2load's duration figures (`812.00us`, `1.23ms`, `2.01s`) in milliseconds.
pub(crate) fn wrk_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |x| x * scale)
}

/// Requests/s, p99 and non-2xx answers from wrk's `--latency` report.
pub(crate) fn parse_wrk(out: &str) -> (f64, f64, u64) {
    let mut rps = f64::NAN;
    let mut p99 = f64::NAN;
    let mut errors = 0;
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = wrk_ms(v.trim());
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (rps, p99, errors)
}

fn run_wrk(addr: SocketAddr, sc: Scenario, script: &Path, secs: f64) -> String {
    run_wrk_on(addr, sc.clients, sc.path(), script, secs)
}

/// wrk (one thread, `clients` connections, `--latency`) POSTing `script`'s body to `path`.
pub(crate) fn run_wrk_on(
    addr: SocketAddr,
    clients: usize,
    path: &str,
    script: &Path,
    secs: f64,
) -> String {
    let out = Command::new("wrk")
        .args([
            "-t1".to_owned(),
            format!("-c{clients}"),
            format!("-d{}s", secs.ceil() as u64),
            "--latency".to_owned(),
            "-s".to_owned(),
        ])
        .arg(script)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("running wrk");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn measure(
    s: &Settings,
    target: &Target,
    generator: &str,
    sc: Scenario,
    body: &Bytes,
    script: &Path,
    client_rt: &tokio::runtime::Runtime,
) -> Sample {
    let pid = target.child.id();
    match generator {
        "wrk" => {
            // Warm-up, then the measured run (wrk counts whole seconds).
            run_wrk(target.addr, sc, script, s.warmup);
            let cpu0 = process_cpu_secs(pid);
            let out = run_wrk(target.addr, sc, script, s.secs);
            let cpu = process_cpu_secs(pid) - cpu0;
            let (rps, p99_ms, errors) = parse_wrk(&out);
            let requests = rps * s.secs.ceil();
            Sample {
                rps,
                p99_ms,
                errors,
                cpu_us: cpu * 1e6 / requests.max(1.0),
            }
        }
        _ => {
            // The CPU window starts with the warm-up here; per request it is the same rate.
            let cpu0 = process_cpu_secs(pid);
            let r = client_rt.block_on(load_run(
                target.addr,
                sc,
                body.clone(),
                s.warmup,
                s.secs,
                false,
            ));
            let cpu = process_cpu_secs(pid) - cpu0;
            let all_requests = r.rps() * (s.secs + s.warmup);
            Sample {
                rps: r.rps(),
                p99_ms: r.pct_ms(0.99),
                errors: r.errors,
                cpu_us: cpu * 1e6 / all_requests.max(1.0),
            }
        }
    }
}

pub fn bench_versus(s: &Settings, models: &Path, cwd: &Path, client_rt: &tokio::runtime::Runtime) {
    let spec = std::env::var("KILN_BENCH_VERSUS")
        .unwrap_or_else(|_| format!("kiln={}", env!("CARGO_BIN_EXE_kiln")));
    let bins: Vec<(String, std::path::PathBuf)> = spec
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (label, path) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("KILN_BENCH_VERSUS: '{p}' is not label=path"));
            (label.trim().to_owned(), path.trim().into())
        })
        .collect();
    let mut generators: Vec<String> = env_or("KILN_BENCH_GENERATORS", "own,wrk".to_owned())
        .split(',')
        .map(|g| g.trim().to_owned())
        .collect();
    if generators.iter().any(|g| g == "wrk") && !has_wrk() {
        println!("  (wrk is not installed: `apt-get install wrk`; running without it)");
        generators.retain(|g| g != "wrk");
    }
    println!(
        "\n== versus: ceiling and {} in processes of their own; generators {}; {} rounds ==",
        bins.iter()
            .map(|(l, p)| format!("{l} ({})", p.display()))
            .collect::<Vec<_>>()
            .join(", "),
        generators.join(", "),
        s.rounds
    );
    let mut targets = vec![spawn_ceiling(s.server_threads)];
    for (label, bin) in &bins {
        let (child, ready, boot, _log) = common::boot_binary_at(bin, models, cwd, &[]);
        println!("  {label}: ready in {:.1} ms", ready.as_secs_f64() * 1e3);
        targets.push(Target {
            name: label.clone(),
            addr: boot.addr.expect("boot_binary_at waits for the address"),
            child,
        });
    }
    let scenarios = s.seed_scenarios();
    let tmp = tempfile::tempdir().unwrap();
    // samples[scenario][generator][target] = one Sample per round
    let mut samples = vec![vec![vec![Vec::<Sample>::new(); targets.len()]; generators.len()]; 2];
    for (si, sc) in scenarios.iter().enumerate() {
        let body = request_body(sc.rows, sc.row_len(), 42);
        let body_file = tmp.path().join(format!("body-{si}.json"));
        std::fs::write(&body_file, &body).unwrap();
        let script = tmp.path().join(format!("post-{si}.lua"));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 local f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
                body_file.display()
            ),
        )
        .unwrap();
        println!("-- {} ({} bytes per request) --", sc.label(), body.len());
        for round in 0..s.rounds {
            for (gi, g) in generators.iter().enumerate() {
                for (ti, t) in targets.iter().enumerate() {
                    let x = measure(s, t, g, *sc, &body, &script, client_rt);
                    println!(
                        "  round {} {g:<4} {:<10} {:>9.0} req/s {:>10.0} rows/s  p99 {:>7.3} ms  server {:>6.1} µs/req{}",
                        round + 1,
                        t.name,
                        x.rps,
                        x.rps * sc.rows as f64,
                        x.p99_ms,
                        x.cpu_us,
                        if x.errors > 0 {
                            format!("  ERRORS {}", x.errors)
                        } else {
                            String::new()
                        }
                    );
                    samples[si][gi][ti].push(x);
                }
            }
        }
    }
    println!("\n== versus summary: medians over rounds ==");
    for (si, sc) in scenarios.iter().enumerate() {
        for (gi, g) in generators.iter().enumerate() {
            let ceil = &samples[si][gi][0];
            let ceil_rps = median(ceil.iter().map(|x| x.rps).collect());
            let ceil_p99 = median(ceil.iter().map(|x| x.p99_ms).collect());
            for (ti, t) in targets.iter().enumerate() {
                let xs = &samples[si][gi][ti];
                let rps = median(xs.iter().map(|x| x.rps).collect());
                let p99 = median(xs.iter().map(|x| x.p99_ms).collect());
                let per_round: Vec<String> = xs
                    .iter()
                    .zip(ceil)
                    .map(|(x, c)| format!("{:.2}", x.rps / c.rps))
                    .collect();
                println!(
                    "  {:<22} {g:<4} {:<10} {:>9.0} req/s {:>10.0} rows/s  x{:.2} of the ceiling (rounds {})  p99 {:.3} ms (x{:.2})  server {:.1} µs/req",
                    sc.label(),
                    t.name,
                    rps,
                    rps * sc.rows as f64,
                    rps / ceil_rps,
                    per_round.join(", "),
                    p99,
                    p99 / ceil_p99,
                    median(xs.iter().map(|x| x.cpu_us).collect()),
                );
            }
        }
    }
    for mut t in targets {
        let _ = t.child.kill();
        let _ = t.child.wait();
    }
}
