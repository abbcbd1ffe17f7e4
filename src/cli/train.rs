//! `kiln train`: the same training run as a server job, from a file, with a progress bar.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::training::run;
use kiln::training::spec::{JobSpec, SpecOverrides};
use kiln::training::trainer::{Checkpoint, EpochEvent, Hooks, Outcome};

/// `kiln train`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// The data: CSV with a header, or JSON records.
    #[arg(long)]
    pub data: PathBuf,
    /// Target column (overrides the spec's).
    #[arg(long)]
    pub target: Option<String>,
    /// A second file with the same columns to validate on (instead of a split).
    #[arg(long)]
    pub validation_data: Option<PathBuf>,
    /// Job spec (JSON, as POST /v1/training-jobs takes; `dataset` may be omitted).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Model name (overrides the spec's; default: the data file's stem).
    #[arg(long)]
    pub model: Option<String>,
    /// Models directory to publish into.
    #[arg(long, env = "KILN_MODELS", default_value = "./models")]
    pub models: PathBuf,
    /// Epochs (overrides the spec's).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// candle intra-op threads.
    #[arg(long, env = "KILN_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON line per epoch instead of the progress bar.
    #[arg(long)]
    pub json: bool,
}

struct Progress {
    bar: Option<ProgressBar>,
}

impl Hooks for Progress {
    fn should_stop(&self) -> bool {
        false
    }

    fn epoch_done(&mut self, e: &EpochEvent, _: &Checkpoint) -> Result<(), String> {
        let mut msg = format!("loss {:.4}", e.loss);
        if let Some(v) = e.val_loss {
            msg.push_str(&format!(" val_loss {v:.4}"));
        }
        for (k, v) in &e.metrics {
            msg.push_str(&format!(" {k} {v:.4}"));
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(u64::from(e.epoch));
                bar.set_message(format!("{msg} ({:.0} samples/s)", e.samples_per_sec));
            }
            None => println!("{}", serde_json::to_string(e).expect("events serialize")),
        }
        Ok(())
    }
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    super::set_compute_threads(a.threads);
    let stem = a
        .data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // The flags replace the spec's values; the data file is always the dataset.
    let overrides = SpecOverrides {
        model: a.model.clone(),
        model_default: Some(stem),
        dataset: Some(a.data.display().to_string()),
        target: a.target.clone(),
        epochs: a.epochs,
    };
    let job_spec = match &a.spec {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            JobSpec::from_json_with(&bytes, &overrides)
                .with_context(|| format!("the spec {}", p.display()))?
        }
        None => JobSpec::from_json_with(b"{}", &overrides)?,
    };
    if job_spec.target.is_empty() {
        anyhow::bail!("no target column: pass --target or give one in the spec");
    }
    job_spec.check_names()?;
    let table = kiln::dataset::read_table(&a.data, None, None)
        .with_context(|| format!("reading {}", a.data.display()))?;
    let validation = match &a.validation_data {
        Some(p) => {
            let vt = kiln::dataset::read_table(p, None, None)
                .with_context(|| format!("reading {}", p.display()))?;
            job_spec.check_validation_columns(&table, &vt)?;
            Some(vt)
        }
        None => None,
    };
    let resolved = job_spec.resolve(&table)?;
    let data =
        run::prepare_data(&table, &resolved, validation.as_ref()).map_err(anyhow::Error::msg)?;
    drop((table, validation));
    eprintln!(
        "training '{}' on {} rows ({} for validation), {} features → {} inputs",
        resolved.spec.model,
        data.n_train(),
        data.n_val(),
        resolved.features().len(),
        data.width
    );
    let epochs = resolved.spec.training.epochs;
    let bar = (!a.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = ProgressBar::new(u64::from(epochs));
        bar.set_style(
            ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {msg} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    });
    let mut hooks = Progress { bar };
    // On a rayon pool of its own, as the server's jobs run (`device::spawn_compute`):
    // candle's rayon-split ops then stay on the training thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .thread_name(|t| format!("kiln-train-{t}"))
        .build()
        .context("starting the training thread")?;
    let result = pool
        .install(|| run::train_and_package(&resolved, &data, None, &mut hooks, None))
        .map_err(anyhow::Error::msg)?;
    if let Some(bar) = &hooks.bar {
        bar.finish();
    }
    if result.trained.outcome == Outcome::EarlyStopped {
        eprintln!(
            "stopped early after epoch {} (best epoch {:?})",
            result.trained.epochs_run, result.trained.best_epoch
        );
    }
    let files = kiln::store::ModelFiles::trained(&result.model_spec, &result.weights)?;
    let store = kiln::store::LocalDir::new(&a.models);
    let version = super::publish(&store, &resolved.spec.model, files)?.version;
    let dir = kiln::store::ModelStore::location(&store, &resolved.spec.model, version);
    eprintln!("wrote {dir}");
    println!(
        "{}",
        serde_json::json!({"model": resolved.spec.model, "version": version, "path": dir, "evaluated_on": result.trained.evaluated_on, "metrics": result.metrics()})
    );
    Ok(())
}
