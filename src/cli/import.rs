//! `kiln import`: PyTorch weights + a model.json → a new version, validated first.

use std::path::PathBuf;

use anyhow::Context;

/// `kiln import`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// The weights file.
    pub weights: PathBuf,
    /// model.json describing the layers (their `name` fields map PyTorch's module names).
    #[arg(long)]
    pub spec: PathBuf,
    /// Model name to publish under.
    #[arg(long)]
    pub name: String,
    /// Models directory.
    #[arg(long, env = "KILN_MODELS", default_value = "./models")]
    pub models: PathBuf,
}

/// Every tensor's presence and shape and one forward pass are checked before publishing.
pub fn run(a: &Args) -> anyhow::Result<()> {
    let (weights, spec, name, models) = (&a.weights, &a.spec, a.name.as_str(), &a.models);
    super::set_compute_threads(1);
    if !kiln::registry::valid_model_name(name) {
        anyhow::bail!("invalid model name {name:?}: expected 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit");
    }
    let spec_bytes = std::fs::read(spec).with_context(|| format!("reading {}", spec.display()))?;
    let weight_bytes =
        std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
    let text = std::str::from_utf8(&spec_bytes)
        .with_context(|| format!("{} is not UTF-8", spec.display()))?;
    let parsed = kiln::model::format::ModelSpec::from_json(text)
        .map_err(|m| anyhow::anyhow!("{}: {m}", spec.display()))?;
    let device = candle_core::Device::Cpu;
    let tensors = candle_core::safetensors::load_buffer(&weight_bytes, &device).map_err(|e| {
        anyhow::anyhow!("{} is not a valid safetensors file: {e}", weights.display())
    })?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let listing = names
        .iter()
        .map(|n| format!("{n} {:?}", tensors[*n].dims()))
        .collect::<Vec<_>>()
        .join(", ");
    let model = kiln::model::Model::from_tensors(parsed, tensors.clone(), &device)
        .map_err(|e| anyhow::anyhow!("{e}\nthe file holds: {listing}"))?;
    model.warm_up()?;
    for t in model.unused_tensors() {
        eprintln!("warning: tensor '{t}' is not used by any layer");
    }
    let version =
        kiln::training::publish::publish_files(models, name, &spec_bytes, &weight_bytes, "import")?;
    println!(
        "imported {} as {name} version {version} ({})",
        weights.display(),
        models.join(name).join(version.to_string()).display()
    );
    Ok(())
}
