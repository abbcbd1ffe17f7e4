//! `kiln evaluate`: a version's loss and metrics on a labelled file, offline — the same
//! checks, encoding and metrics as `:evaluate` (`kiln::serving::evaluate`), with the model
//! run on this thread instead of a server's batcher. Prints the JSON `:evaluate` answers.

use std::path::PathBuf;

use anyhow::Context;

/// `kiln evaluate`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// A version directory: holds model.json and model.safetensors.
    pub dir: PathBuf,
    /// The labelled data: CSV, or a JSON array of records.
    pub data: PathBuf,
    /// The column of actual values (default: the column the model was trained on).
    #[arg(long)]
    pub target: Option<String>,
    /// Compute device: cpu or cuda:N.
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    super::set_compute_threads(1);
    let device: kiln::device::DeviceSpec = a.device.parse().map_err(anyhow::Error::msg)?;
    let device = device.open()?;
    let files = kiln::store::read_version_dir(&a.dir)?;
    let model = kiln::store::load_and_warm(&files, &device)?;
    let table = kiln::dataset::read_table(&a.data, None, None)
        .with_context(|| format!("reading {}", a.data.display()))?;
    let data = kiln::serving::evaluate::EvalData::of(&model, &table, a.target.as_deref())?;
    let evaluation = kiln::serving::evaluate::evaluate_offline(&model, data)?;
    let (name, version) = name_and_version(&a.dir);
    let answer = kiln::api::types::EvaluateResponse::of(&name, version, &evaluation);
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// `models/iris/3` → ("iris", 3); a directory not laid out so → (its name, 0).
fn name_and_version(dir: &std::path::Path) -> (String, u64) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let last = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match last(&dir).parse::<u64>() {
        Ok(v) => (dir.parent().map(last).unwrap_or_default(), v),
        Err(_) => (last(&dir), 0),
    }
}
