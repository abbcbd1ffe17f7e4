//! Runs of several stages: a search's trials, trained one after another on the same split,
//! and the refit on every row. A plain spec is one stage and goes straight to the trainer.
//!
//! Each trial is a complete run of its own spec ([`ResolvedSpec::trial_spec`] then
//! [`run_trial`]). The server runs each trial as a sub-job of its own (the job system: a
//! child job record, claimable by any replica), then calls [`conclude`] with the trials'
//! results to pick the winner and refit it. `kiln train` (no job system) runs them here, in
//! sequence, with [`run_stages`]: one event stream, where every epoch event names its stage
//! and trial, epochs are numbered across stages, and every checkpoint carries [`StageMeta`]
//! — the finished trials and where the run stands — so an interrupted run resumes in the
//! right stage.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::metrics::Metrics;
use super::prepare::Prepared;
use super::spec::{higher_is_better, selection_monitor, ResolvedSpec, TrialConfig};
use super::trainer::{
    self, Checkpoint, CheckpointMeta, EpochEvent, Hooks, Outcome, TrainError, Trained,
};

/// Prefix of the best trial's weights inside a checkpoint's weights (the trainer only
/// restores the names its network has, so they ride along untouched).
const BEST_PREFIX: &str = "search_best/";

/// How one trial did, as the job reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrialResult {
    #[serde(flatten)]
    pub config: TrialConfig,
    /// `completed`, `early_stopped`, `time_budget` (stopped when the search's time ran
    /// out; its best epoch competes) or `skipped` (not started: no time left).
    pub outcome: String,
    pub epochs_run: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<u32>,
    /// The selection metric (`monitor`) of the trial's served weights, and its tie-breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie: Option<f64>,
    /// Validation metrics of the trial's served weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Metrics>,
    pub seconds: f64,
    /// The sub-job that ran the trial (server jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The sub-job's final state (`succeeded`, `failed`, `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The replica that ran the sub-job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Why the sub-job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TrialResult {
    /// A trial that did not train: `outcome` is `skipped` (no time left), `failed` or
    /// `cancelled`; it does not compete.
    pub fn without_run(config: TrialConfig, outcome: &str) -> TrialResult {
        TrialResult {
            config,
            outcome: outcome.to_owned(),
            epochs_run: 0,
            best_epoch: None,
            score: None,
            tie: None,
            metrics: None,
            seconds: 0.0,
            job: None,
            state: None,
            replica: None,
            error: None,
        }
    }

    /// How a finished trial run did, judged by `monitor` (and `tie`; see [`selection`]).
    pub fn of_run(
        config: TrialConfig,
        trained: &Trained,
        (monitor, tie): (&str, Option<&str>),
        out_of_time: bool,
        seconds: f64,
    ) -> TrialResult {
        let m = &trained.final_metrics;
        TrialResult {
            outcome: if out_of_time {
                "time_budget".into()
            } else {
                match trained.outcome {
                    Outcome::EarlyStopped => "early_stopped".into(),
                    Outcome::Completed | Outcome::Cancelled => "completed".into(),
                }
            },
            epochs_run: trained.epochs_run,
            best_epoch: trained.best_epoch,
            score: read(m, monitor),
            tie: tie.and_then(|t| read(m, t)),
            metrics: Some(m.clone()),
            seconds,
            ..TrialResult::without_run(config, "completed")
        }
    }
}

/// Where a run of several stages stands (in every checkpoint it writes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageMeta {
    /// The stage running: trials `0..n`, then the refit at `n`.
    pub index: u32,
    /// Epochs the earlier stages recorded.
    pub offset: u32,
    /// Seconds the run has spent (for the search's time budget).
    pub seconds: f64,
    pub trials: Vec<TrialResult>,
    /// Index of the best trial so far.
    pub best: Option<usize>,
    /// A trial sub-job's checkpoint after it ended: its weights are the trial's served
    /// weights and `trials` holds its one result (a restart finishes it from there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

/// A finished multi-stage run: the model to publish and what the stages did.
pub struct Staged {
    pub trained: Trained,
    /// The spec whose network `trained` holds (a trial's), when it is not the job's own.
    pub spec: Option<ResolvedSpec>,
    pub trials: Vec<TrialResult>,
    pub best_trial: Option<u32>,
    /// `(epochs, rows)` of the refit.
    pub refit: Option<(u32, usize)>,
    /// What the winner was chosen by.
    pub monitor: String,
}

/// Trains one trial's spec: the seam for running a trial elsewhere (a sub-job).
pub fn run_trial(
    spec: &ResolvedSpec,
    data: &Prepared,
    resume: Option<Checkpoint>,
    hooks: &mut dyn Hooks,
) -> Result<Trained, TrainError> {
    trainer::train(spec, data, resume, hooks)
}

/// The metric trials are compared by and its tie-breaker: the early-stopping monitor when
/// there is one, else the task's default. A trial's spec gives the same as its search's.
pub fn selection(spec: &ResolvedSpec) -> (String, Option<String>) {
    match spec.spec.training.early_stopping() {
        Some(es) if es.monitor.starts_with("val_") => (es.monitor.clone(), es.tie_breaker.clone()),
        _ => (
            selection_monitor(spec.task()).to_owned(),
            (spec.task() == crate::model::format::Task::Classification)
                .then(|| "val_loss".to_owned()),
        ),
    }
}

/// A validation metric (`val_accuracy`, `val_loss`, …) of final metrics.
fn read(m: &Metrics, name: &str) -> Option<f64> {
    match name.trim_start_matches("val_") {
        "loss" => m.loss,
        "accuracy" => m.accuracy,
        "precision" => m.precision_macro,
        "recall" => m.recall_macro,
        "f1" => m.f1_macro,
        "mae" => m.mae,
        "rmse" => m.rmse,
        "r2" => m.r2,
        _ => None,
    }
}

/// The best of `trials` by `monitor` (the first of equals); `None` when none has a score.
pub fn best_of(monitor: &str, tie_name: Option<&str>, trials: &[TrialResult]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, t) in trials.iter().enumerate() {
        if t.score.is_none() {
            continue;
        }
        if best.is_none_or(|b| beats(monitor, tie_name, t, &trials[b])) {
            best = Some(i);
        }
    }
    best
}

fn beats(monitor: &str, tie_name: Option<&str>, a: &TrialResult, b: &TrialResult) -> bool {
    let (Some(x), Some(y)) = (a.score, b.score) else {
        return a.score.is_some() && b.score.is_none();
    };
    if x != y {
        return if higher_is_better(monitor) {
            x > y
        } else {
            x < y
        };
    }
    match (a.tie, b.tie, tie_name) {
        (Some(s), Some(t), Some(name)) => {
            if higher_is_better(name) {
                s > t
            } else {
                s < t
            }
        }
        _ => false,
    }
}

/// Passes epochs and checkpoints on with the stage's numbering and state added.
struct StageHooks<'a> {
    outer: &'a mut dyn Hooks,
    meta: StageMeta,
    trial: Option<u32>,
    stage: &'static str,
    best_weights: Option<&'a HashMap<String, Tensor>>,
    started: Instant,
    seconds_before: f64,
    /// Seconds of the whole run after which this stage stops.
    deadline: Option<f64>,
    out_of_time: std::cell::Cell<bool>,
}

impl StageHooks<'_> {
    fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }
}

impl Hooks for StageHooks<'_> {
    fn should_stop(&self) -> bool {
        if self.outer.should_stop() {
            return true;
        }
        if self.deadline.is_some_and(|d| self.seconds() >= d) {
            self.out_of_time.set(true);
            return true;
        }
        false
    }

    fn epoch_done(&mut self, event: &EpochEvent, ck: &Checkpoint) -> Result<(), String> {
        let offset = self.meta.offset;
        let mut e = event.clone();
        e.stage_epoch = Some(event.epoch);
        e.epoch += offset;
        e.epochs += offset;
        e.trial = self.trial;
        e.stage = Some(self.stage.to_owned());
        let mut weights = ck.weights.clone();
        for (k, v) in self.best_weights.into_iter().flatten() {
            weights.insert(format!("{BEST_PREFIX}{k}"), v.clone());
        }
        let meta = StageMeta {
            seconds: self.seconds(),
            ..self.meta.clone()
        };
        let ck = Checkpoint {
            epoch: ck.epoch + offset,
            weights,
            optimizer: ck.optimizer.clone(),
            best_weights: ck.best_weights.clone(),
            meta: CheckpointMeta {
                epoch: ck.meta.epoch + offset,
                stage: Some(meta),
                ..ck.meta.clone()
            },
        };
        self.outer.epoch_done(&e, &ck)
    }
}

/// Runs the spec's stages (a plain spec: one call to the trainer), resuming from `resume`.
pub fn run_stages(
    spec: &ResolvedSpec,
    data: &Prepared,
    resume: Option<Checkpoint>,
    hooks: &mut dyn Hooks,
) -> Result<Staged, TrainError> {
    let (monitor, tie_name) = selection(spec);
    let refit = spec.spec.training.refit();
    if spec.trials.is_empty() && !refit {
        let trained = run_trial(spec, data, resume, hooks)?;
        return Ok(Staged {
            trained,
            spec: None,
            trials: Vec::new(),
            best_trial: None,
            refit: None,
            monitor,
        });
    }
    let configs: Vec<TrialConfig> = if spec.trials.is_empty() {
        vec![TrialConfig {
            trial: 0,
            width: None,
            depth: None,
            learning_rate: None,
            dropout: None,
        }]
    } else {
        spec.trials.clone()
    };
    let searching = !spec.trials.is_empty();
    let budget = spec
        .spec
        .search
        .as_ref()
        .and_then(|s| s.time_budget_seconds);
    let mut st = StageMeta::default();
    let mut best_weights: Option<HashMap<String, Tensor>> = None;
    let mut local = None;
    if let Some(ck) = resume {
        let (meta, best, ck) = split_resume(ck);
        if let Some(meta) = meta {
            st = meta;
            best_weights = best;
        }
        local = Some(ck);
    }
    let n = configs.len() as u32;
    while (st.index as usize) < configs.len() {
        let i = st.index as usize;
        let cfg = &configs[i];
        let seconds_before = st.seconds;
        if budget.is_some_and(|b| seconds_before >= b) && st.best.is_some() {
            st.trials
                .push(TrialResult::without_run(cfg.clone(), "skipped"));
            st.index += 1;
            continue;
        }
        let trial_spec = spec.trial_spec(cfg, data.width);
        let mut sh = StageHooks {
            outer: &mut *hooks,
            meta: st.clone(),
            trial: searching.then_some(cfg.trial),
            stage: if searching { "trial" } else { "train" },
            best_weights: best_weights.as_ref(),
            started: Instant::now(),
            seconds_before,
            deadline: budget,
            out_of_time: std::cell::Cell::new(false),
        };
        let trained = run_trial(&trial_spec, data, local.take(), &mut sh)?;
        let out_of_time = sh.out_of_time.get();
        let seconds = sh.seconds();
        if trained.outcome == Outcome::Cancelled && !out_of_time {
            return Ok(Staged {
                trained,
                spec: None,
                trials: st.trials,
                best_trial: None,
                refit: None,
                monitor,
            });
        }
        let result = TrialResult::of_run(
            cfg.clone(),
            &trained,
            (&monitor, tie_name.as_deref()),
            out_of_time,
            seconds - seconds_before,
        );
        let wins = match st.best {
            None => true,
            Some(b) => beats(&monitor, tie_name.as_deref(), &result, &st.trials[b]),
        };
        st.offset += trained.epochs_run;
        st.seconds = seconds;
        st.trials.push(result);
        if wins {
            st.best = Some(i);
            best_weights = Some(trained.weights);
        }
        st.index += 1;
    }
    debug_assert_eq!(st.index, n);
    let trials = if searching {
        st.trials.clone()
    } else {
        Vec::new()
    };
    let b = st.best.expect("the first trial always runs");
    conclude(
        spec,
        data,
        st,
        trials,
        b,
        best_weights,
        local,
        hooks,
        data.width,
    )
}

/// The end of a search (or of a plain run with a refit): publishes the winner `b` of
/// `st.trials` — its weights (`best`) as they are, or refitted on every row when the spec
/// asks for a refit (`best` is then not needed). `report` is what the job reports of the
/// trials (nothing for a plain run); `resume` is a checkpoint of the refit. The server calls
/// this in the search's parent job once every trial sub-job has ended.
#[allow(clippy::too_many_arguments)]
pub fn conclude(
    spec: &ResolvedSpec,
    data: &Prepared,
    st: StageMeta,
    report: Vec<TrialResult>,
    b: usize,
    best: Option<HashMap<String, Tensor>>,
    resume: Option<Checkpoint>,
    hooks: &mut dyn Hooks,
    width: usize,
) -> Result<Staged, TrainError> {
    let (monitor, _) = selection(spec);
    let refit = spec.spec.training.refit();
    let searching = !report.is_empty();
    let mut local = resume;
    let winner = st.trials[b].clone();
    let best_trial = searching.then_some(winner.config.trial);
    let metrics = winner.metrics.clone().unwrap_or_default();
    if !refit {
        let Some(weights) = best else {
            return Err(TrainError::Hook(format!(
                "the weights of the winning trial {} cannot be read",
                winner.config.trial
            )));
        };
        return Ok(Staged {
            trained: Trained {
                outcome: if winner.outcome == "early_stopped" {
                    Outcome::EarlyStopped
                } else {
                    Outcome::Completed
                },
                weights,
                epochs_run: winner.epochs_run,
                best_epoch: winner.best_epoch,
                final_metrics: metrics,
                evaluated_on: "validation",
            },
            spec: Some(spec.trial_spec(&winner.config, width)),
            trials: report,
            best_trial,
            refit: None,
            monitor,
        });
    }
    // The refit: the winner's spec on every row, for the epochs its best weights had.
    let restored = spec
        .spec
        .training
        .early_stopping()
        .is_some_and(|es| es.restore_best);
    let epochs = match (restored, winner.best_epoch) {
        (true, Some(e)) => e,
        _ => winner.epochs_run,
    }
    .max(1);
    let mut refit_spec = spec.trial_spec(&winner.config, width);
    refit_spec.spec.training.epochs = Some(epochs);
    refit_spec.spec.training.early_stopping = Some(None);
    refit_spec.spec.training.refit = Some(false);
    refit_spec.spec.training.validation_split = 0.0;
    let all = data.all_rows();
    let rows = all.n_train();
    let seconds_before = st.seconds;
    let mut sh = StageHooks {
        outer: &mut *hooks,
        meta: st,
        trial: None,
        stage: "refit",
        best_weights: None,
        started: Instant::now(),
        seconds_before,
        deadline: None,
        out_of_time: std::cell::Cell::new(false),
    };
    let refitted = trainer::train(&refit_spec, &all, local.take(), &mut sh)?;
    let outcome = refitted.outcome;
    Ok(Staged {
        trained: Trained {
            outcome,
            weights: refitted.weights,
            epochs_run: refitted.epochs_run,
            best_epoch: None,
            // No row is held out of the refit: the estimate is the chosen run's.
            final_metrics: metrics,
            evaluated_on: "validation_before_refit",
        },
        spec: Some(refit_spec),
        trials: report,
        best_trial,
        refit: Some((epochs, rows)),
        monitor,
    })
}

/// Splits a checkpoint written under [`StageHooks`] into where the run stood, the best
/// trial's weights it carried, and the checkpoint of the stage itself (epochs counted from
/// the stage's start).
pub fn split_resume(
    mut ck: Checkpoint,
) -> (
    Option<StageMeta>,
    Option<HashMap<String, Tensor>>,
    Checkpoint,
) {
    let Some(meta) = ck.meta.stage.take() else {
        return (None, None, ck);
    };
    let best: HashMap<String, Tensor> = ck
        .weights
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(BEST_PREFIX)?.to_owned(), v.clone())))
        .collect();
    ck.weights.retain(|k, _| !k.starts_with(BEST_PREFIX));
    ck.epoch -= meta.offset;
    ck.meta.epoch -= meta.offset;
    (Some(meta), (!best.is_empty()).then_some(best), ck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::prepare::prepare;
    use crate::training::spec::JobSpec;

    /// Records every event; stops (as a shutdown would) after `stop_after` epochs, and keeps
    /// the last checkpoint, its state passed through JSON as a job stores it.
    struct Recorder {
        events: Vec<EpochEvent>,
        stop_after: Option<usize>,
        last: Option<Checkpoint>,
    }

    impl Hooks for Recorder {
        fn should_stop(&self) -> bool {
            self.stop_after.is_some_and(|n| self.events.len() >= n)
        }
        fn epoch_done(&mut self, e: &EpochEvent, ck: &Checkpoint) -> Result<(), String> {
            self.events.push(e.clone());
            let meta = serde_json::to_value(&ck.meta).map_err(|e| e.to_string())?;
            self.last = Some(Checkpoint {
                epoch: ck.epoch,
                weights: ck.weights.clone(),
                optimizer: ck.optimizer.clone(),
                best_weights: ck.best_weights.clone(),
                meta: serde_json::from_value(meta).map_err(|e| e.to_string())?,
            });
            Ok(())
        }
    }

    fn weights_of(t: &Trained) -> Vec<(String, Vec<f32>)> {
        let mut w: Vec<(String, Vec<f32>)> = t
            .weights
            .iter()
            .map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    }

    /// A search with a refit, interrupted in its second trial and resumed from its last
    /// checkpoint, ends exactly as the uninterrupted run: same trials, events and weights.
    #[test]
    fn an_interrupted_search_resumes_in_its_stage_and_ends_the_same() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/iris.csv");
        let table = crate::dataset::read_table(std::path::Path::new(path), None, None).unwrap();
        let spec = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "species",
                 "training": {"epochs": 8, "refit": true, "optimizer": {"type": "adam", "learning_rate": 0.02},
                              "early_stopping": {"monitor": "val_accuracy", "tie_breaker": "val_loss", "patience": 3}},
                 "search": {"width": [8, 16, 32]}}"#,
        )
        .unwrap()
        .resolve(&table)
        .unwrap();
        assert_eq!(spec.trials.len(), 3);
        let data = prepare(&table, &spec, None).unwrap();
        let mut whole = Recorder {
            events: Vec::new(),
            stop_after: None,
            last: None,
        };
        let a = run_stages(&spec, &data, None, &mut whole).unwrap();
        assert_eq!(a.trials.len(), 3);
        let first = a.trials[0].epochs_run as usize;
        // Stop two epochs into the second trial, then resume from its last checkpoint.
        let mut part = Recorder {
            events: Vec::new(),
            stop_after: Some(first + 2),
            last: None,
        };
        let b = run_stages(&spec, &data, None, &mut part).unwrap();
        assert_eq!(b.trained.outcome, Outcome::Cancelled);
        let ck = part.last.take().unwrap();
        assert_eq!(ck.epoch as usize, first + 2);
        let mut rest = Recorder {
            events: Vec::new(),
            stop_after: None,
            last: None,
        };
        let c = run_stages(&spec, &data, Some(ck), &mut rest).unwrap();
        assert_eq!(c.best_trial, a.best_trial);
        assert_eq!(c.refit, a.refit);
        let scores = |s: &Staged| -> Vec<(Option<f64>, u32)> {
            s.trials.iter().map(|t| (t.score, t.epochs_run)).collect()
        };
        assert_eq!(scores(&c), scores(&a));
        assert_eq!(weights_of(&c.trained), weights_of(&a.trained));
        let key = |e: &EpochEvent| (e.epoch, e.trial, e.stage.clone(), e.loss, e.val_loss);
        let resumed: Vec<_> = part.events.iter().chain(&rest.events).map(key).collect();
        let straight: Vec<_> = whole.events.iter().map(key).collect();
        assert_eq!(resumed, straight);
        assert_eq!(whole.events.last().unwrap().stage.as_deref(), Some("refit"));
    }

    /// The time budget: the trial running when it passes stops at its next step and
    /// competes with what it reached; the trials after it are reported `skipped`, and the
    /// search still publishes a model.
    #[test]
    fn a_spent_time_budget_stops_the_running_trial_and_skips_the_rest() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/iris.csv");
        let table = crate::dataset::read_table(std::path::Path::new(path), None, None).unwrap();
        let spec = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "species",
                 "training": {"epochs": 100000, "refit": false, "early_stopping": null},
                 "search": {"width": [8, 16, 32], "time_budget_seconds": 0.05}}"#,
        )
        .unwrap()
        .resolve(&table)
        .unwrap();
        let data = prepare(&table, &spec, None).unwrap();
        let mut hooks = Recorder {
            events: Vec::new(),
            stop_after: None,
            last: None,
        };
        let staged = run_stages(&spec, &data, None, &mut hooks).unwrap();
        let outcomes: Vec<&str> = staged.trials.iter().map(|t| t.outcome.as_str()).collect();
        assert_eq!(outcomes, ["time_budget", "skipped", "skipped"]);
        let first = &staged.trials[0];
        assert!(
            first.epochs_run >= 1 && first.epochs_run < 100_000,
            "{}",
            first.epochs_run
        );
        assert!(first.score.is_some(), "the stopped trial still competes");
        assert_eq!(staged.best_trial, Some(first.config.trial));
        assert_ne!(staged.trained.outcome, Outcome::Cancelled);
    }
}
