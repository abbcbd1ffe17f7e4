//! `KILN_BENCH_ONLY=grpc`: the Open Inference Protocol over gRPC (ModelInfer, raw tensor
//! bytes, as tritonclient sends them; tonic's client, one HTTP/2 connection per client)
//! against the same protocol over REST (`POST /v2/models/seed/infer`, JSON, this bench's
//! HTTP/1.1 client), on one in-process kiln serving both listeners, interleaved REST then
//! gRPC for `KILN_BENCH_ROUNDS` rounds per scenario (the seed model's two: one row × 64
//! clients, 32 rows × 16). Prints the medians and gRPC/REST ratios.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use kiln::config::{Config, LogFormat, Overrides, RegistryLayer};
use kiln::grpc::proto::inference as pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::json;

use super::common::http_status;
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
        println!("{}", sc.label());
        let (mut rest_rps, mut grpc_rps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..s.rounds {
            let r =
                client_rt.block_on(rest_run(http_addr, sc, rest_body.clone(), s.warmup, s.secs));
            line("REST", &r);
            let g = client_rt.block_on(grpc_run(grpc_addr, sc, req.clone(), s.warmup, s.secs));
            line("gRPC", &g);
            rest_rps.push(r.rps());
            grpc_rps.push(g.rps());
            ratios.push(g.rps() / r.rps());
        }
        println!(
            "  median: REST {:.0} req/s, gRPC {:.0} req/s; gRPC/REST {:.2}x",
            median(rest_rps),
            median(grpc_rps),
            median(ratios)
        );
    }
    let _ = stop_tx.send(());
    kiln_rt.block_on(server).unwrap().unwrap();
}
