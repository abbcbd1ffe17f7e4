//! One training run end to end — prepare, train, package — shared by the job threads of
//! the server and by `kiln train`, so both produce the same model from the same spec.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::{json, Value};

use super::prepare::{prepare, Prepared};
use super::spec::ResolvedSpec;
use super::store::{now_ms, rfc3339};
use super::trainer::{self, Checkpoint, Hooks, Trained};
use crate::dataset::Table;
use crate::model::format::ModelSpec;

/// A finished run, ready to publish.
pub struct RunResult {
    pub trained: Trained,
    pub model_spec: ModelSpec,
    pub weights: HashMap<String, Tensor>,
    pub metrics: Value,
    pub report: Value,
}

/// Prepares the data (the report is handed to `on_report` before training starts).
pub fn prepare_data(
    table: &Table,
    spec: &ResolvedSpec,
    validation: Option<&Table>,
) -> Result<(Prepared, Value), String> {
    let data = prepare(table, spec, validation).map_err(|e| e.0)?;
    let report = serde_json::to_value(&data.report).expect("reports serialize");
    Ok((data, report))
}

/// Trains on prepared data and packages the served model's spec (with its preprocessing,
/// labels and training information).
pub fn train_and_package(
    spec: &ResolvedSpec,
    data: &Prepared,
    report: Value,
    resume: Option<Checkpoint>,
    hooks: &mut dyn Hooks,
    job: Option<&str>,
) -> Result<RunResult, String> {
    debug_assert!(
        rayon::current_thread_index().is_some(),
        "training runs on a rayon pool of its own (see `device::spawn_compute`)"
    );
    let trained = trainer::train(spec, data, resume, hooks).map_err(|e| e.to_string())?;
    let metrics = serde_json::to_value(&trained.final_metrics).expect("metrics serialize");
    let mut model_spec = trainer::model_spec_for(spec, data);
    model_spec.training = Some(json!({
        "job": job,
        "dataset": spec.spec.dataset,
        "target": spec.spec.target,
        "trained_at": rfc3339(now_ms()),
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "outcome": trained.outcome,
        "evaluated_on": trained.evaluated_on,
        "metrics": metrics,
        "loss": spec.loss().as_str(),
        "optimizer": spec.spec.training.optimizer,
        "report": report,
    }));
    let weights = trained.weights.clone();
    Ok(RunResult {
        trained,
        model_spec,
        weights,
        metrics,
        report,
    })
}
