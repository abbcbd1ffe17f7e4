//! Fixtures and invariants shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target calls kiln's own decoders, as the HTTP handlers do, and checks what holds for
//! any input: no panic (libFuzzer reports it), no allocation past `-malloc_limit_mb` (likewise),
//! every error one that maps to a 4xx status, and every accepted request of the right shape.

use std::collections::HashMap;
use std::path::Path;

use kiln::api::decode::Decoded;
use kiln::api::error::ApiError;
use kiln::model::format::ModelSpec;
use kiln::model::Model;

/// The row limit (`max_rows_per_request`) the request targets decode under: small, so that
/// inputs of a few KiB reach it.
pub const MAX_ROWS: usize = 64;

/// A model from its `model.json` text, with weights from a fresh `VarMap` (the decoders read
/// only the spec; the weights just have to fit it).
fn model(json: &str) -> Model {
    let spec = ModelSpec::from_json(json).expect("fixture spec parses");
    let vm = candle_nn::VarMap::new();
    let vb =
        candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
    Model::check_and_build(&spec, &vb).expect("fixture spec builds");
    let tensors: HashMap<String, candle_core::Tensor> = vm
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    Model::from_tensors(spec, tensors, &candle_core::Device::Cpu).expect("fixture model loads")
}

/// The input signatures a request can meet: the shipped iris model (named features, fitted
/// numeric preprocessing), a plain tensor model, a model with categorical features (one-hot
/// and ordinal, with and without fill values), named features without preprocessing, and an
/// embedding model (int64 ids).
pub fn models() -> Vec<Model> {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/iris/1");
    vec![
        kiln::store::read_version_dir(&iris)
            .and_then(|files| {
                Ok(kiln::store::load_and_warm(
                    &files,
                    &candle_core::Device::Cpu,
                )?)
            })
            .expect("the shipped iris model loads"),
        model(
            r#"{"format_version": 1, "task": "classification", "input": {"shape": [2, 2]},
            "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}"#,
        ),
        model(
            r#"{"format_version": 1, "task": "regression", "input": {"shape": [6], "features": ["a", "b", "c", "d"]},
            "layers": [{"type": "dense", "units": 1}],
            "preprocessing": {"features": [
                {"kind": "numeric", "name": "a", "fill": 0.5, "clip": [-10, 10], "shift": 1, "scale": 2},
                {"kind": "numeric", "name": "b"},
                {"kind": "categorical", "name": "c", "encoding": "one_hot", "categories": ["x", "y", "z"], "fill": "x"},
                {"kind": "categorical", "name": "d", "encoding": "ordinal", "categories": ["p", "q"]}],
                "target": {"shift": 3, "scale": 2}}}"#,
        ),
        model(
            r#"{"format_version": 1, "task": "classification", "input": {"shape": [2], "features": ["u", "v"]},
            "layers": [{"type": "dense", "units": 3}]}"#,
        ),
        model(
            r#"{"format_version": 1, "task": "classification", "input": {"shape": [3], "dtype": "int64"},
            "layers": [{"type": "embedding", "input_dim": 5, "output_dim": 2}, {"type": "flatten"}, {"type": "dense", "units": 2}]}"#,
        ),
    ]
}

/// The error would be answered with a 4xx status; anything else is a failure.
pub fn assert_client_error(err: &ApiError) {
    let (status, code) = kiln::api::error::status_and_code(err);
    assert!(
        status.is_client_error(),
        "a hostile request got {status} ({code}): {err}"
    );
}

/// Accepted rows: at least one and at most [`MAX_ROWS`], each of the model's width, all finite.
pub fn assert_rows(decoded: &Decoded, model: &Model) {
    assert!(decoded.n_rows > 0, "accepted a request without instances");
    assert!(
        decoded.n_rows <= MAX_ROWS,
        "accepted more rows than the limit"
    );
    assert_eq!(
        decoded.rows.len(),
        decoded.n_rows * model.spec().row_len(),
        "rows of the wrong width"
    );
    assert!(
        decoded.rows.iter().all(|x| x.is_finite()),
        "a non-finite value reached the model"
    );
}

/// Checks one decoder's answer.
pub fn check(result: Result<Decoded, ApiError>, model: &Model) {
    match result {
        Ok(d) => assert_rows(&d, model),
        Err(e) => assert_client_error(&e),
    }
}

/// A file for this process to write inputs to (the dataset readers read files, as an upload
/// is streamed to disk before it is parsed).
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir.join(name)
}

/// Reads `bytes` as an upload of `format` is read (`kiln::dataset::read_table`, delimiter
/// detected), and checks the table, its profile and the profile's round trip through
/// `meta.json`.
pub fn check_dataset(bytes: &[u8], format: kiln::dataset::Format) {
    use kiln::dataset::{read_table, Profile};
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = PATH.get_or_init(|| scratch_file("upload"));
    std::fs::write(path, bytes).expect("writing the scratch file");
    match read_table(path, Some(format), None) {
        Ok(table) => {
            assert!(table.n_rows > 0, "a table without rows");
            for c in &table.columns {
                assert_eq!(c.values.len(), table.n_rows, "column '{}'", c.name);
            }
            assert_eq!(table.duplicate_rows().len(), table.n_rows);
            let profile = table.profile();
            let json = serde_json::to_vec_pretty(&profile).expect("profiles serialize");
            serde_json::from_slice::<Profile>(&json).expect("a stored profile reads back");
        }
        Err(e) => assert_client_error(&ApiError::from(e)),
    }
}
