//! What the benchmarks that drive the real binary share: settings from the environment,
//! spawning `kiln serve` and waiting for readiness, a bare HTTP GET, resident memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `name`'s value parsed, or `default` when it is unset.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        Err(_) => default,
    }
}

/// What the spawned binary's log said, and when (since spawn).
#[derive(Default, Debug)]
pub struct Boot {
    pub addr: Option<SocketAddr>,
    pub listening: Option<Duration>,
    pub model_load_ms: Option<u64>,
}

/// Spawns `kiln serve` on 127.0.0.1:0 with JSON logs and `extra` flags; a thread reads stderr
/// (and keeps draining it) and reports the listening address.
/// `bin` is the kiln binary: this build's, or another (a build of an earlier commit, to compare).
pub fn spawn_kiln_at(
    bin: &Path,
    models: &Path,
    cwd: &Path,
    extra: &[&str],
) -> (Child, Instant, mpsc::Receiver<(String, Value, Instant)>) {
    let started = Instant::now();
    let mut child = Command::new(bin)
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
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        // gRPC on a free port (a build without gRPC ignores it): binaries run side by side.
        .env("KILN_GRPC_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the kiln binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let msg = v["message"].as_str().unwrap_or("").to_owned();
                let _ = tx.send((msg, v, at));
            } else {
                let _ = tx.send((line, Value::Null, at));
            }
        }
    });
    (child, started, rx)
}

/// A blocking `GET` that returns the status code (0 when nothing answered).
pub fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_nodelay(true);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf[..buf.len().min(16)]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// What [`boot_binary`] returns: the process, time to ready, what its log said, the log.
pub type Booted = (
    Child,
    Duration,
    Boot,
    mpsc::Receiver<(String, Value, Instant)>,
);

/// Spawns the binary and returns it once `/health/ready` says 200, with the timings.
pub fn boot_binary(models: &Path, cwd: &Path, extra: &[&str]) -> Booted {
    boot_binary_at(Path::new(env!("CARGO_BIN_EXE_kiln")), models, cwd, extra)
}

/// [`boot_binary`] with another kiln binary.
pub fn boot_binary_at(bin: &Path, models: &Path, cwd: &Path, extra: &[&str]) -> Booted {
    let (mut child, started, rx) = spawn_kiln_at(bin, models, cwd, extra);
    let mut boot = Boot::default();
    let deadline = started + Duration::from_secs(30);
    // Learn the port from the "kiln listening" line.
    while boot.addr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((msg, v, at)) => {
                if msg == "kiln listening" {
                    boot.listening = Some(at - started);
                    boot.addr = v["addr"].as_str().and_then(|a| a.parse().ok());
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the kiln binary did not log its address in 30 s");
            }
        }
    }
    let addr = boot.addr.unwrap();
    let ready = loop {
        if http_status(addr, "/health/ready") == 200 {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the kiln binary was not ready in 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    while let Ok((msg, v, _)) = rx.try_recv() {
        if msg == "version available" {
            boot.model_load_ms = v["ms"].as_u64();
        }
    }
    (child, ready, boot, rx)
}

/// (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
