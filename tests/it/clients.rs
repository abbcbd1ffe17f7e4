//! kiln's gRPC endpoint checked by the official Python client of the Open Inference
//! Protocol (tritonclient[grpc], set up by scripts/setup/40-python-clients.sh):
//! tests/clients/tritonclient_grpc.py runs against a real server.

use serde_json::json;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_infers_reads_metadata_and_errors() {
    let Some(python) = external("KILN_TEST_PYTHON", "Python with tritonclient[grpc]") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    fixture(dir.path(), "tab", 1, &tabular_spec());
    let s = Server::start(dir.path(), "").await;
    // What REST's V2 answers for the rows the script sends: the script compares.
    let rows = rows(3, 6, 11);
    let (status, v2) = s
        .post(
            "/v2/models/mlp/infer",
            &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 6], "data": rows}]}),
        )
        .await;
    assert_eq!(status, 200, "{v2}");
    let probabilities: Vec<&[serde_json::Value]> = v2["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .chunks(3)
        .collect();
    let expected = json!({"rows": rows, "probabilities": probabilities}).to_string();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tritonclient_grpc.py");
    let url = s.grpc.expect("gRPC is on").to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(url)
            .arg(expected)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("every check passed"), "{stdout}\n{stderr}");
    s.stop().await;
}
