//! One training run end to end — prepare, train, package — shared by the job threads of
//! the server and by `kiln train`, so both produce the same model from the same spec.

use std::collections::HashMap;

use candle_core::Tensor;

use super::metrics::Metrics;
use super::prepare::{prepare, DataReport, Prepared};
use super::search;
use super::spec::ResolvedSpec;
use super::trainer::{self, Checkpoint, Hooks, Trained};
use crate::dataset::Table;
use crate::model::format::{ModelSpec, TrainingBlock, TrainingInfo};

/// A finished run, ready to publish.
pub struct RunResult {
    pub trained: Trained,
    pub model_spec: ModelSpec,
    pub weights: HashMap<String, Tensor>,
}

impl RunResult {
    /// The final metrics (also in the model's training information).
    pub fn metrics(&self) -> &Metrics {
        &self.trained.final_metrics
    }
}

/// Prepares the data; the report is in the result.
pub fn prepare_data(
    table: &Table,
    spec: &ResolvedSpec,
    validation: Option<&Table>,
) -> Result<Prepared, String> {
    prepare(table, spec, validation).map_err(|e| e.0)
}

/// Trains on prepared data and packages the served model's spec (with its preprocessing,
/// labels and training information).
pub fn train_and_package(
    spec: &ResolvedSpec,
    data: &Prepared,
    resume: Option<Checkpoint>,
    hooks: &mut dyn Hooks,
    job: Option<&str>,
) -> Result<RunResult, String> {
    debug_assert!(
        rayon::current_thread_index().is_some(),
        "training runs on a rayon pool of its own (see `device::spawn_compute`)"
    );
    let staged = search::run_stages(spec, data, resume, hooks).map_err(|e| e.to_string())?;
    Ok(package(spec, data, staged, job))
}

/// Packages a finished run of stages (`run_stages`, or a search's [`search::conclude`]):
/// the served model's spec, with the trials and the refit reported in its metrics.
pub fn package(
    spec: &ResolvedSpec,
    data: &Prepared,
    staged: search::Staged,
    job: Option<&str>,
) -> RunResult {
    let mut trained = staged.trained;
    // A search reports every trial; a refit says what it trained: in the job's metrics and
    // the model's training information.
    if !staged.trials.is_empty() {
        trained.final_metrics.search = Some(Box::new(serde_json::json!({
            "monitor": staged.monitor, "best_trial": staged.best_trial, "trials": staged.trials
        })));
    }
    trained.final_metrics.refit = staged
        .refit
        .map(|(epochs, rows)| Box::new(serde_json::json!({"epochs": epochs, "rows": rows})));
    // The network published is the winning trial's when there was a search.
    let published = staged.spec.as_ref().unwrap_or(spec);
    let mut model_spec = trainer::model_spec_for(published, data);
    model_spec.training = Some(TrainingBlock::Kiln(Box::new(training_info(
        published,
        &trained,
        &data.report,
        job,
    ))));
    let weights = trained.weights.clone();
    RunResult {
        trained,
        model_spec,
        weights,
    }
}

fn training_info(
    spec: &ResolvedSpec,
    trained: &Trained,
    report: &DataReport,
    job: Option<&str>,
) -> TrainingInfo {
    TrainingInfo {
        job: job.map(str::to_owned),
        dataset: spec.spec.dataset.clone(),
        target: spec.spec.target.clone(),
        trained_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        epochs_run: trained.epochs_run,
        best_epoch: trained.best_epoch,
        outcome: trained.outcome,
        evaluated_on: trained.evaluated_on.to_owned(),
        metrics: trained.final_metrics.clone(),
        loss: spec.loss().as_str().to_owned(),
        optimizer: serde_json::to_value(&spec.spec.training.optimizer)
            .expect("optimizer settings serialize"),
        report: report.clone(),
    }
}
