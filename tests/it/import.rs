//! `kiln import` on weights exactly as PyTorch saves them (tests/fixtures/pytorch, made by
//! make_fixtures.py): named and indexed modules, served predictions equal to PyTorch's, and
//! clear errors naming a missing or misshapen tensor.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::util::*;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Absolute tolerance between kiln's outputs and PyTorch's (both float32).
const TOL: f64 = 1e-5;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch")
        .join(name)
}

fn kiln_import(weights: &Path, spec: &Path, name: &str, models: &Path) -> Output {
    Command::new(KILN)
        .arg("import")
        .arg(weights)
        .arg("--spec")
        .arg(spec)
        .args(["--name", name, "--models"])
        .arg(models)
        .env_remove("KILN_MODELS")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Imports the fixture `name` under the same name and asserts that it succeeded as version 1.
fn import_fixture(name: &str, models: &Path) {
    let dir = fixture_dir(name);
    let out = kiln_import(
        &dir.join("model.safetensors"),
        &dir.join("model.json"),
        name,
        models,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "kiln import {name} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains(&format!("as {name} version 1")),
        "stdout: {stdout}"
    );
    // Every tensor PyTorch wrote is read by some layer (BatchNorm's num_batches_tracked is
    // deliberately ignored), so there is nothing to warn about.
    assert!(!stderr.contains("warning"), "stderr: {stderr}");
    let version = models.join(name).join("1");
    assert!(version.join("model.json").is_file());
    assert!(version.join("model.safetensors").is_file());
}

/// Numeric version directories of `models/<name>`, sorted.
fn versions(models: &Path, name: &str) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(models.join(name)) else {
        return Vec::new();
    };
    let mut v: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

fn flatten(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        Value::Number(n) => out.push(n.as_f64().unwrap()),
        other @ (Value::Null | Value::Bool(_) | Value::String(_) | Value::Object(_)) => {
            panic!("not a number: {other}")
        }
    }
}

/// Imports the fixture, serves it, predicts its instances and returns the largest absolute
/// difference from PyTorch's outputs (asserting it is within `TOL`).
async fn matches_pytorch(name: &str) -> f64 {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir(name).join("expected.json")).unwrap())
            .unwrap();
    let models = tempfile::tempdir().unwrap();
    import_fixture(name, models.path());

    let server = Server::start(models.path(), "").await;
    let (code, body) = server
        .post(
            &format!("/v1/models/{name}:predict"),
            &json!({"instances": expected["instances"]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let got = body["predictions"].as_array().expect("predictions").clone();
    let want = expected["outputs"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{body}");

    let mut max_diff = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (mut gs, mut ws) = (Vec::new(), Vec::new());
        flatten(g, &mut gs);
        flatten(w, &mut ws);
        assert_eq!(gs.len(), ws.len(), "instance {i}: kiln {g} vs PyTorch {w}");
        for (j, (a, b)) in gs.iter().zip(&ws).enumerate() {
            let d = (a - b).abs();
            assert!(
                d <= TOL,
                "{name} instance {i} output {j}: kiln {a} vs PyTorch {b} (|diff| {d:e} > {TOL:e})\nkiln:    {g}\nPyTorch: {w}"
            );
            max_diff = max_diff.max(d);
        }
    }
    println!(
        "{name}: {} outputs within {TOL:e} of PyTorch {} (max |diff| {max_diff:e})",
        got.len() * want[0].as_array().map_or(1, Vec::len),
        expected["torch_version"]
    );
    server.stop().await;
    max_diff
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytorch_mlp_with_named_modules_matches() {
    matches_pytorch("mlp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytorch_conv_sequential_with_batch_norm_matches() {
    matches_pytorch("conv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pytorch_lstm_matches() {
    matches_pytorch("lstm").await;
}

/// What to do to one tensor of a fixture's weights.
enum Edit {
    Remove,
    Reshape(&'static [usize]),
}

#[test]
fn import_names_the_missing_or_misshapen_tensor() {
    let cases: [(&str, &str, Edit, &str); 5] = [
        // Transposed Linear weight: [in, out] instead of PyTorch's [out, in].
        ("mlp", "fc2.weight", Edit::Reshape(&[32, 16]), "[16, 32]"),
        ("mlp", "fc3.bias", Edit::Remove, "[4]"),
        // Indexed (Sequential) names.
        (
            "conv",
            "3.weight",
            Edit::Reshape(&[8, 4, 2, 2]),
            "[8, 4, 3, 3]",
        ),
        ("conv", "4.running_var", Edit::Remove, "[8]"),
        (
            "lstm",
            "lstm.weight_hh_l0",
            Edit::Reshape(&[32, 4]),
            "[32, 8]",
        ),
    ];
    for (fixture, tensor, edit, expected_shape) in cases {
        let models = tempfile::tempdir().unwrap();
        // A good version 1 first: the failed import must not add a version beside it.
        import_fixture(fixture, models.path());

        let dir = fixture_dir(fixture);
        let mut tensors =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let original = tensors
            .remove(tensor)
            .unwrap_or_else(|| panic!("{fixture} has {tensor}"));
        if let Edit::Reshape(shape) = edit {
            assert_ne!(original.dims(), shape);
            tensors.insert(
                tensor.to_owned(),
                Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let work = tempfile::tempdir().unwrap();
        let broken = work.path().join("model.safetensors");
        candle_core::safetensors::save(&tensors, &broken).unwrap();

        let out = kiln_import(&broken, &dir.join("model.json"), fixture, models.path());
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let what = format!("{fixture} without a good {tensor}");
        assert!(!out.status.success(), "{what}: import succeeded: {stdout}");
        assert!(
            stderr.contains(&format!("'{tensor}'")),
            "{what}: stderr does not name the tensor: {stderr}"
        );
        assert!(
            stderr.contains(&format!("expected shape {expected_shape}")),
            "{what}: stderr does not give the expected shape {expected_shape}: {stderr}"
        );
        assert!(
            !stdout.contains("imported"),
            "{what}: stdout says imported: {stdout}"
        );
        assert_eq!(
            versions(models.path(), fixture),
            [1],
            "{what}: a version directory was created"
        );
        // Nothing else was left behind in the model directory (no staging directory).
        let entries: Vec<String> = std::fs::read_dir(models.path().join(fixture))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["1"], "{what}");
    }
}

#[test]
fn import_into_an_empty_models_dir_creates_no_version_on_failure() {
    let models = tempfile::tempdir().unwrap();
    let dir = fixture_dir("lstm");
    let mut tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("head.weight").unwrap();
    let work = tempfile::tempdir().unwrap();
    let broken = work.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &broken).unwrap();

    let out = kiln_import(&broken, &dir.join("model.json"), "lstm", models.path());
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("'head.weight'"), "{stderr}");
    assert!(stderr.contains("expected shape [2, 8]"), "{stderr}");
    assert!(versions(models.path(), "lstm").is_empty());
}
