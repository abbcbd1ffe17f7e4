//! Trains the example models shipped in `models/` and writes their version directories
//! (until kiln's own trainer lands, this is how they are produced):
//!
//! ```text
//! cargo run --release --example make_models -- models
//! ```
//!
//! - `iris/1`: 4 named features → standard scaling (fitted here, stored in model.json) →
//!   Dense 16 relu → Dense 3 softmax, labels setosa/versicolor/virginica.
//! - `digits/1`: 8×8 images [1, 8, 8] (pixel values 0..16) → conv2d 8 3x3 same relu →
//!   max_pool 2 → conv2d 16 3x3 relu → flatten → dense 10 softmax.
//!
//! Data: `examples/data/iris.csv` and `examples/data/digits.csv`, copied from the
//! scikit-learn data sets (CC BY 4.0). Each version is written to `<v>.tmp` and renamed.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Optimizer, ParamsAdamW, VarBuilder, VarMap};
use kiln::model::format::{LayerSpec, ModelSpec};
use kiln::model::Model;

fn main() -> anyhow::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "models".into());
    let out = Path::new(&out);
    iris(out)?;
    digits(out)?;
    Ok(())
}

fn read_csv(path: &str) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    Ok((header, rows))
}

fn iris(out: &Path) -> anyhow::Result<()> {
    let (_, rows) = read_csv("examples/data/iris.csv")?;
    let labels = ["setosa", "versicolor", "virginica"];
    let n = rows.len();
    let mut x: Vec<f32> = Vec::with_capacity(n * 4);
    let mut y: Vec<u32> = Vec::with_capacity(n);
    for r in &rows {
        x.extend(
            r[..4]
                .iter()
                .map(|v| v.parse::<f32>().expect("numeric iris feature")),
        );
        y.push(
            labels
                .iter()
                .position(|l| *l == r[4])
                .expect("known species") as u32,
        );
    }
    // Standard scaling fitted on the data: stored in model.json, applied by the server.
    let mut features = Vec::new();
    let names = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
    for (j, name) in names.iter().enumerate() {
        let col: Vec<f64> = (0..n).map(|i| f64::from(x[i * 4 + j])).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        for i in 0..n {
            x[i * 4 + j] = ((f64::from(x[i * 4 + j]) - mean) / std) as f32;
        }
        features.push(serde_json::json!({"kind": "numeric", "name": name, "fill": mean, "shift": mean, "scale": std}));
    }
    let spec: ModelSpec = serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [4], "features": names},
        "labels": labels,
        "layers": [
            {"type": "dense", "units": 16, "activation": "relu", "name": "fc1"},
            {"type": "dense", "units": 3, "name": "fc2"},
            {"type": "activation", "activation": "softmax"}
        ],
        "preprocessing": {"features": features},
        "training": {"dataset": "examples/data/iris.csv", "produced_by": "examples/make_models.rs"}
    }))?;
    train_and_write(spec, &x, &y, &[4], 300, 0.01, &out.join("iris"))
}

fn digits(out: &Path) -> anyhow::Result<()> {
    let (header, rows) = read_csv("examples/data/digits.csv")?;
    assert_eq!(header[0], "label");
    let mut x: Vec<f32> = Vec::with_capacity(rows.len() * 64);
    let mut y = Vec::with_capacity(rows.len());
    for r in &rows {
        y.push(r[0].parse::<u32>()?);
        x.extend(
            r[1..]
                .iter()
                .map(|v| v.parse::<f32>().expect("numeric pixel")),
        );
    }
    let spec: ModelSpec = serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "task": "classification",
        "input": {"shape": [1, 8, 8]},
        "labels": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu", "name": "conv1"},
            {"type": "max_pool2d", "pool_size": 2},
            {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu", "name": "conv2"},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "name": "fc"},
            {"type": "activation", "activation": "softmax"}
        ],
        "training": {"dataset": "examples/data/digits.csv", "produced_by": "examples/make_models.rs"}
    }))?;
    train_and_write(spec, &x, &y, &[1, 8, 8], 40, 0.005, &out.join("digits"))
}

/// Full-batch-ish Adam (no weight decay) on cross-entropy over the logits (the trailing
/// softmax is left out of training and kept for serving).
fn train_and_write(
    spec: ModelSpec,
    x: &[f32],
    y: &[u32],
    shape: &[usize],
    epochs: usize,
    lr: f64,
    dir: &Path,
) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let built = Model::check_and_build(&spec, &vb)?;
    let train_layers = match spec.layers.last() {
        Some(LayerSpec::Activation { .. }) => &built.layers[..built.layers.len() - 1],
        _ => &built.layers[..],
    };
    let n = y.len();
    let mut dims = vec![n];
    dims.extend_from_slice(shape);
    let xs = Tensor::from_slice(x, dims, &dev)?;
    let ys = Tensor::from_slice(y, n, &dev)?;
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let batch = 64;
    for epoch in 0..epochs {
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start);
            let xb = xs.narrow(0, start, len)?;
            let yb = ys.narrow(0, start, len)?;
            let logits = train_layers
                .iter()
                .try_fold(xb, |h, l| l.forward_t(&h, true))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            opt.backward_step(&loss)?;
        }
        if (epoch + 1) % (epochs / 4).max(1) == 0 {
            let logits = train_layers
                .iter()
                .try_fold(xs.clone(), |h, l| l.forward_t(&h, false))?;
            let acc = logits
                .argmax(D::Minus1)?
                .eq(&ys)?
                .to_dtype(DType::F32)?
                .mean_all()?
                .to_scalar::<f32>()?;
            println!(
                "{}: epoch {} training accuracy {acc:.3}",
                dir.display(),
                epoch + 1
            );
        }
    }
    let tmp = dir.join("1.tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(
        tmp.join("model.json"),
        serde_json::to_string_pretty(&spec)? + "\n",
    )?;
    varmap.save(tmp.join("model.safetensors"))?;
    // safetensors writes 0600; a server running as another user must read it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tmp.join("model.safetensors"),
            std::fs::Permissions::from_mode(0o644),
        )?;
    }
    let _ = std::fs::remove_dir_all(dir.join("1"));
    std::fs::rename(&tmp, dir.join("1"))?;
    // Prove the written version loads and serves.
    kiln::registry::load_and_warm(&dir.join("1"), &dev)?;
    println!("wrote {}", dir.join("1").display());
    Ok(())
}
