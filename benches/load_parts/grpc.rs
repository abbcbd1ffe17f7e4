//! `KILN_BENCH_ONLY=grpc`: the Open Inference Protocol over gRPC (ModelInfer, raw tensor
//! bytes, as tritonclient sends them; tonic's client, one HTTP/2 connection per client)
//! against the same protocol over REST (`POST /v2/models/seed/infer`, JSON, this bench's
//! HTTP/1.1 client), on one in-process kiln serving both listeners, interleaved REST then
//! gRPC for `KILN_BENCH_ROUNDS` rounds per scenario (the seed model's two: one row × 64
//! clients, 32 rows × 16). Prints the medians and gRPC/REST ratios.
//!
//! `KILN_BENCH_GRPC_GENERATORS` (`own,external`): `own` drives both protocols from this
//! process (tonic's client for gRPC, the bench's hyper client for REST); `external` drives
//! them with C load generators in processes of their own, one thread each and one
//! connection per client: wrk(1) for REST and h2load(1) (Debian's `nghttp2-client`) for gRPC,
//! POSTing the same length-prefixed ModelInfer message on every stream. tonic's client costs
//! more CPU per call than the bench's HTTP/1.1 client, and both share the machine with the
//! server, so `own` understates gRPC; `external` takes the clients' cost out of the ratio.
//! h2load reports the mean latency, not percentiles (its answers are checked once with
//! tonic first: h2load counts any HTTP 200 as a success, grpc-status included).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use kiln::config::{Config, LogFormat, Overrides, RegistryLayer};
use kiln::grpc::proto::inference as pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use prost::Message;
use serde_json::json;

use super::common::{env_or, http_status};
use super::versus::{has_wrk, parse_wrk, run_wrk_on, wrk_ms};
use super::{connection, median, rows, RunResult, Scenario, Settings, MODEL, ROW_LEN};

/// One gRPC client: its own HTTP/2 connection, calls back to back until `end`.
async fn grpc_connection(
    addr: SocketAddr,
    req: pb::ModelInferRequest,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(u64, u64, Vec<u32>)> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = GrpcInferenceServiceClient::new(channel);
    let (mut ok, mut errors, mut latencies) = (0, 0, Vec::with_capacity(1 << 14));
    while Instant::now() < end {
        let start = Instant::now();
        let res = client.model_infer(req.clone()).await;
        let done = Instant::now();
        if start >= measure_from && done <= end {
            match res {
                Ok(r) if !r.get_ref().raw_output_contents.is_empty() => {
                    ok += 1;
                    latencies.push((done - start).as_micros().min(u32::MAX as u128) as u32);
                }
                Ok(_) | Err(_) => errors += 1,
            }
        }
    }
    Ok((ok, errors, latencies))
}

async fn grpc_run(
    addr: SocketAddr,
    sc: Scenario,
    req: pb::ModelInferRequest,
    warmup: f64,
    secs: f64,
) -> RunResult {
    let measure_from = Instant::now() + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..sc.clients)
        .map(|_| tokio::spawn(grpc_connection(addr, req.clone(), measure_from, end)))
        .collect();
    let mut out = RunResult {
        secs,
        rows_per_request: sc.rows,
        ..Default::default()
    };
    for t in tasks {
        match t.await {
            Ok(Ok((ok, errors, latencies))) => {
                out.requests += ok;
                out.errors += errors;
                out.latencies_us.extend(latencies);
            }
            Ok(Err(e)) => {
                eprintln!("  gRPC client failed: {e:#}");
                out.errors += 1;
            }
            Err(e) => {
                eprintln!("  gRPC client task failed: {e}");
                out.errors += 1;
            }
        }
    }
    out.latencies_us.sort_unstable();
    out
}

async fn rest_run(
    addr: SocketAddr,
    sc: Scenario,
    body: Bytes,
    warmup: f64,
    secs: f64,
) -> RunResult {
    let measure_from = Instant::now() + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..sc.clients)
        .map(|_| {
            tokio::spawn(connection(
                addr,
                "/v2/models/seed/infer",
                body.clone(),
                measure_from,
                end,
            ))
        })
        .collect();
    let mut out = RunResult {
        secs,
        rows_per_request: sc.rows,
        ..Default::default()
    };
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                out.requests += r.requests;
                out.errors += r.errors;
                out.latencies_us.extend(r.latencies_us);
            }
            Ok(Err(e)) => {
                eprintln!("  REST client failed: {e:#}");
                out.errors += 1;
            }
            Err(e) => {
                eprintln!("  REST client task failed: {e}");
                out.errors += 1;
            }
        }
    }
    out.latencies_us.sort_unstable();
    out
}

const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

fn has_h2load() -> bool {
    Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Requests/s, mean latency (ms) and failed calls from h2load's report.
fn parse_h2load(out: &str) -> (f64, f64, u64) {
    let mut rps = f64::NAN;
    let mut mean_ms = f64::NAN;
    let mut errors = 0;
    let count = |l: &str, what: &str| -> u64 {
        l.split(',')
            .filter(|p| p.trim_end().ends_with(what))
            .filter_map(|p| p.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
            .sum()
    };
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("finished in") {
            rps = rest
                .split(',')
                .find_map(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN);
        } else if l.starts_with("requests:") {
            errors += count(l, "failed") + count(l, "errored") + count(l, "timeout");
        } else if let Some(rest) = l.strip_prefix("status codes:") {
            errors += count(rest, "3xx") + count(rest, "4xx") + count(rest, "5xx");
        } else if let Some(rest) = l.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            if let Some(mean) = rest.split_whitespace().nth(2) {
                mean_ms = wrk_ms(mean);
            }
        }
    }
    (rps, mean_ms, errors)
}

/// h2load: one thread, `clients` connections with one stream each, for `warmup` + `secs`.
fn run_h2load(addr: SocketAddr, clients: usize, body: &Path, warmup: f64, secs: f64) -> String {
    let out = Command::new("h2load")
        .args([
            "-t1".to_owned(),
            format!("-c{clients}"),
            "-m1".to_owned(),
            format!("--warm-up-time={}", warmup.ceil() as u64),
            format!("--duration={}", secs.ceil() as u64),
            "-H".to_owned(),
            "content-type: application/grpc".to_owned(),
            "-H".to_owned(),
            "te: trailers".to_owned(),
            "-d".to_owned(),
        ])
        .arg(body)
        .arg(format!("http://{addr}{INFER_PATH}"))
        .output()
        .expect("running h2load");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The gRPC wire form of one call's request: the 5-byte prefix (uncompressed, length) and
/// the protobuf message.
fn grpc_frame(req: &pb::ModelInferRequest) -> Vec<u8> {
    let msg = req.encode_to_vec();
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

fn line(target: &str, r: &RunResult) {
    println!(
        "  {target:<5} {:>9.0} req/s {:>10.0} rows/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
        r.rps(),
        r.rows_ps(),
        r.pct_ms(0.5),
        r.pct_ms(0.99),
        r.errors
    );
}

pub(crate) fn bench_grpc(
    s: &Settings,
    models: &std::path::Path,
    client_rt: &tokio::runtime::Runtime,
) {
    let kiln_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.server_threads)
        .thread_name("kiln-rt")
        .enable_all()
        .build()
        .unwrap();
    let overrides = Overrides {
        registry: RegistryLayer {
            models_dir: Some(models.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = Config::from_toml(&s.config, &overrides).expect("KILN_BENCH_CONFIG is valid");
    println!("\n== gRPC ModelInfer (raw tensors) vs REST V2 infer (JSON), one in-process kiln ==");
    kiln::telemetry::init(LogFormat::Text);
    let bind = || {
        kiln_rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
    };
    let (http, grpc) = (bind(), bind());
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listeners = kiln::Listeners {
        http,
        grpc: Some(grpc),
    };
    let server = kiln_rt.spawn(kiln::serve_on(
        config,
        listeners,
        axum::Router::new(),
        async move {
            let _ = stop_rx.await;
            kiln::shutdown::Drain::immediate()
        },
    ));
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    while http_status(http_addr, "/health/ready") != 200 {
        assert!(Instant::now() < ready_deadline, "in-process kiln not ready");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut generators: Vec<String> =
        env_or("KILN_BENCH_GRPC_GENERATORS", "own,external".to_owned())
            .split(',')
            .map(str::to_owned)
            .collect();
    if generators.iter().any(|g| g == "external") && !(has_wrk() && has_h2load()) {
        println!("  (wrk or h2load is not installed: `apt-get install wrk nghttp2-client`; running without them)");
        generators.retain(|g| g != "external");
    }
    let tmp = tempfile::tempdir().unwrap();
    for sc in s.seed_scenarios() {
        let data = rows(sc.rows, ROW_LEN, 42);
        let flat: Vec<f32> = data.concat();
        let rest_body = Bytes::from(
            serde_json::to_vec(&json!({"inputs": [{"name": "input", "datatype": "FP32",
                "shape": [sc.rows, ROW_LEN], "data": flat}]}))
            .unwrap(),
        );
        let raw: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
        let req = pb::ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![sc.rows as i64, ROW_LEN as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        };
        // The external generators' request bodies, checked once through tonic.
        let rest_file = tmp.path().join(format!("rest-{}.json", sc.rows));
        std::fs::write(&rest_file, &rest_body).unwrap();
        let script = tmp.path().join(format!("rest-{}.lua", sc.rows));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 local f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
                rest_file.display()
            ),
        )
        .unwrap();
        let grpc_file = tmp.path().join(format!("grpc-{}.bin", sc.rows));
        std::fs::write(&grpc_file, grpc_frame(&req)).unwrap();
        let check = client_rt.block_on(grpc_run(
            grpc_addr,
            Scenario { clients: 1, ..sc },
            req.clone(),
            0.0,
            0.2,
        ));
        assert!(
            check.requests > 0 && check.errors == 0,
            "the gRPC request is answered"
        );

        println!("{}", sc.label());
        for g in &generators {
            let (mut rest_rps, mut grpc_rps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..s.rounds {
                let (r, gr) = if g == "own" {
                    let r = client_rt.block_on(rest_run(
                        http_addr,
                        sc,
                        rest_body.clone(),
                        s.warmup,
                        s.secs,
                    ));
                    line("REST", &r);
                    let gr =
                        client_rt.block_on(grpc_run(grpc_addr, sc, req.clone(), s.warmup, s.secs));
                    line("gRPC", &gr);
                    (r.rps(), gr.rps())
                } else {
                    run_wrk_on(
                        http_addr,
                        sc.clients,
                        "/v2/models/seed/infer",
                        &script,
                        s.warmup,
                    );
                    let (r, p99, errors) = parse_wrk(&run_wrk_on(
                        http_addr,
                        sc.clients,
                        "/v2/models/seed/infer",
                        &script,
                        s.secs,
                    ));
                    println!(
                        "  REST  {r:>9.0} req/s (wrk)     p99  {p99:>6.2} ms  errors {errors}"
                    );
                    let (gr, mean, errors) = parse_h2load(&run_h2load(
                        grpc_addr, sc.clients, &grpc_file, s.warmup, s.secs,
                    ));
                    println!(
                        "  gRPC  {gr:>9.0} req/s (h2load)  mean {mean:>6.2} ms  errors {errors}"
                    );
                    (r, gr)
                };
                rest_rps.push(r);
                grpc_rps.push(gr);
                ratios.push(gr / r);
            }
            println!(
                "  median ({g}): REST {:.0} req/s, gRPC {:.0} req/s; gRPC/REST {:.2}x",
                median(rest_rps),
                median(grpc_rps),
                median(ratios)
            );
        }
    }
    let _ = stop_tx.send(());
    kiln_rt.block_on(server).unwrap().unwrap();
}
