//! `kiln import`: PyTorch weights + a model.json → a new version, validated first.

use std::path::PathBuf;

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

/// Every tensor's presence and shape and one forward pass are checked before publishing
/// (`kiln::store::validate_and_publish`, as uploads and training jobs do).
pub fn run(a: &Args) -> anyhow::Result<()> {
    let (weights, spec, name, models) = (&a.weights, &a.spec, a.name.as_str(), &a.models);
    super::set_compute_threads(1);
    kiln::store::check_name(name)?;
    let files = kiln::store::ModelFiles::read(spec, weights)?;
    // What the file holds, to show beside an error about a missing or misshapen tensor.
    let listing = safetensors::SafeTensors::deserialize(&files.weights).map(|st| {
        let mut tensors: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect();
        tensors.sort();
        tensors
            .iter()
            .map(|(n, shape)| format!("{n} {shape:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let store = kiln::store::LocalDir::new(models);
    let published = super::publish(&store, name, files).map_err(|e| {
        match (e.downcast_ref::<kiln::store::StoreError>(), &listing) {
            (Some(kiln::store::StoreError::Invalid(_)), Ok(l)) => {
                anyhow::anyhow!("{e}\nthe file holds: {l}")
            }
            _ => e,
        }
    })?;
    for t in &published.unused_tensors {
        eprintln!("warning: tensor '{t}' is not used by any layer");
    }
    println!(
        "imported {} as {name} version {} ({})",
        weights.display(),
        published.version,
        kiln::store::ModelStore::location(&store, name, published.version)
    );
    Ok(())
}
