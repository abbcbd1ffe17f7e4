//! `kiln import`: PyTorch weights + a model.json → a new version, validated first; or, with
//! `--hf DIR`, a Hugging Face / sentence-transformers transformer directory
//! (docs/text-models.md).

use std::path::PathBuf;

/// `kiln import`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// The weights file.
    #[arg(required_unless_present = "hf")]
    pub weights: Option<PathBuf>,
    /// model.json describing the layers (their `name` fields map PyTorch's module names).
    #[arg(long, required_unless_present = "hf")]
    pub spec: Option<PathBuf>,
    /// A transformer directory as Hugging Face or sentence-transformers lay it out
    /// (config.json, tokenizer.json, model.safetensors).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "spec"])]
    pub hf: Option<PathBuf>,
    /// With --hf: how token vectors become one embedding (default: the
    /// sentence-transformers pooling config, else cls).
    #[arg(long, requires = "hf", value_parser = ["cls", "mean"])]
    pub pooling: Option<String>,
    /// With --hf: L2-normalise embeddings by default (default: whether sentence-transformers'
    /// modules.json has a Normalize module).
    #[arg(long, requires = "hf", conflicts_with = "no_normalize")]
    pub normalize: bool,
    /// With --hf: do not normalise embeddings by default.
    #[arg(long, requires = "hf")]
    pub no_normalize: bool,
    /// With --hf: most tokens per input (default: sentence-transformers' max_seq_length,
    /// else the model's max_position_embeddings). tokenizer.json's truncation is not used.
    #[arg(long, requires = "hf")]
    pub max_length: Option<usize>,
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
    super::set_compute_threads(1);
    kiln::store::check_name(&a.name)?;
    if let Some(dir) = &a.hf {
        return run_hf(a, dir);
    }
    let (Some(weights), Some(spec)) = (&a.weights, &a.spec) else {
        anyhow::bail!("kiln import needs WEIGHTS and --spec, or --hf DIR");
    };
    let (name, models) = (a.name.as_str(), &a.models);
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

/// `kiln import --hf DIR`: the directory's files with kiln's model.json, validated (loaded,
/// one input embedded) and published.
fn run_hf(a: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    use kiln::text::import::{from_hf_dir, ImportOptions};
    use kiln::text::Pooling;
    let opts = ImportOptions {
        pooling: a.pooling.as_deref().map(|p| {
            if p == "mean" {
                Pooling::Mean
            } else {
                Pooling::Cls
            }
        }),
        normalize: if a.normalize {
            Some(true)
        } else if a.no_normalize {
            Some(false)
        } else {
            None
        },
        max_length: a.max_length,
    };
    let imported = from_hf_dir(dir, &opts).map_err(anyhow::Error::msg)?;
    let spec = imported.spec.clone();
    let files = kiln::store::ModelFiles::transformer(imported);
    let store = kiln::store::LocalDir::new(&a.models);
    let published = super::publish(&store, &a.name, files)?;
    println!(
        "imported {} as {} version {} ({}): {}, {} pooling, normalize {}, max_length {}",
        dir.display(),
        a.name,
        published.version,
        kiln::store::ModelStore::location(&store, &a.name, published.version),
        spec.architecture.as_str(),
        spec.pooling.as_str(),
        spec.normalize,
        spec.max_length
    );
    Ok(())
}
