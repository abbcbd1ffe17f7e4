//! The training job spec: what a client POSTs to `/v1/training-jobs` (and `kiln train
//! --spec` reads). Every field but `model`, `dataset` and `target` has a default;
//! [`JobSpec::resolve`] fills them in from the dataset and checks everything that can be
//! checked before the job is queued, so a bad spec is a 400, not a failed job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::losses::Loss;
use super::optim::{OptimizerConfig, ScheduleConfig};
use crate::dataset::{ColumnType, ColumnValues, Table};
use crate::model::format::{
    Activation, InputDType, InputSignature, LayerSpec, ModelSpec, Task, FORMAT_VERSION,
};
use crate::model::Model;
use crate::preprocess::{Encoding, PreprocessOptions};
use crate::store::valid_model_name;

/// A job spec as sent. Field names are an API: clients script against them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Name of the model to produce (a new version is published under it).
    // The three names may be left out while parsing so that `kiln train` can fill them in
    // from its flags ([`SpecOverrides`]); `from_json` and `check_names` require them.
    #[serde(default)]
    #[schema(required = true)]
    pub model: String,
    /// Dataset id (`ds_…`) to train on.
    #[serde(default)]
    #[schema(required = true)]
    pub dataset: String,
    /// Target column.
    #[serde(default)]
    #[schema(required = true)]
    pub target: String,
    /// A second dataset (`ds_…`, same columns) to validate on instead of a split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_dataset: Option<String>,
    /// Inferred from the target column when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Feature columns; default: every column but the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub preprocessing: PreprocessOptions,
    /// The network; default: an MLP sized for the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerSpec>>,
    #[serde(default)]
    pub training: TrainingOptions,
    /// Candidate networks and learning rates tried one after another on the same split; the
    /// best by validation metric is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSpec>,
    /// A loaded text embedding model (a transformer): the text features are encoded by it
    /// and a classification head is trained on its pooled embeddings; the result is a
    /// transformer version with that head (docs/text-models.md). Server jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// The base model's version; default: the one loaded now (pinned when the job is
    /// queued, so a resumed job encodes with the same weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// What of the encoder trains with the head; default: nothing (frozen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
}

/// How much of a base model's encoder a text job trains.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    /// Top encoder layers unfrozen (0: frozen, the head trains on the pooled embeddings).
    #[serde(default)]
    pub layers: usize,
}

/// Keras' `compile` + `fit` settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingOptions {
    pub optimizer: OptimizerConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleConfig>,
    /// Default: sparse categorical cross-entropy (classification) or MSE (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<Loss>,
    /// Reported every epoch (the final report has them all).
    pub metrics: Vec<MetricName>,
    /// Most epochs (early stopping may end sooner). Default: from the training budget
    /// ([`default_budget`]); the resolved spec always has a number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    pub batch_size: usize,
    /// Fraction held out for validation (stratified for classification); 0 disables it.
    pub validation_split: f64,
    pub seed: u64,
    pub shuffle: bool,
    /// Absent: on whenever there are validation rows ([`default_early_stopping`]); `null`:
    /// off. The resolved spec shows which (`null` when off).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<EarlyStopping>)]
    pub early_stopping: Option<Option<EarlyStopping>>,
    /// After the epoch count is chosen on the validation rows (the best epoch), train a fresh
    /// network on every row (training and validation) for that many epochs and publish it.
    /// Default: on for tables under [`REFIT_BELOW_ROWS`] rows with validation rows to choose
    /// with; the resolved spec always has `true` or `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refit: Option<bool>,
    /// Class weights in the training loss (classification with sparse categorical
    /// cross-entropy): `"balanced"` or weights by label. Off by default: see [`ClassWeight`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_weight: Option<ClassWeight>,
}

/// How much each class's rows count in the training loss (the validation loss and every
/// metric stay unweighted). Opt-in: the defaults reach the references on every measured set
/// without it, and weighting trades accuracy for recall on the rare classes, a choice only
/// the user can make.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ClassWeight {
    /// `"balanced"`: class c weighs n / (k · n_c) over the n training rows of k classes,
    /// scikit-learn's and Keras' convention.
    #[schema(value_type = String, example = "balanced")]
    Balanced(Balanced),
    /// Weights by label (a label left out weighs 1), each positive and finite.
    ByLabel(BTreeMap<String, f64>),
}

/// The one string form of [`ClassWeight`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balanced {
    Balanced,
}

impl<'de> Deserialize<'de> for ClassWeight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        const EXPECTED: &str =
            "class_weight must be \"balanced\" or an object of positive weights by label";
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "balanced" => {
                Ok(ClassWeight::Balanced(Balanced::Balanced))
            }
            serde_json::Value::Object(m) => m
                .into_iter()
                .map(|(label, w)| match w.as_f64() {
                    Some(x) if x > 0.0 && x.is_finite() && x <= 1e6 => Ok((label, x)),
                    _ => Err(D::Error::custom(format!(
                        "class_weight of '{label}' must be a number above 0 and at most 1e6, got {w}"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(ClassWeight::ByLabel),
            other @ (serde_json::Value::Null
            | serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::String(_)
            | serde_json::Value::Array(_)) => {
                Err(D::Error::custom(format!("{EXPECTED}, got {other}")))
            }
        }
    }
}

impl ClassWeight {
    /// The weight of each class (in `labels` order) for training rows of class ids `y`.
    pub fn weights(&self, labels: &[String], y: &[f32]) -> Vec<f32> {
        match self {
            ClassWeight::Balanced(_) => {
                let mut counts = vec![0usize; labels.len()];
                for &c in y {
                    if let Some(n) = counts.get_mut(c as usize) {
                        *n += 1;
                    }
                }
                let (n, k) = (y.len() as f64, labels.len() as f64);
                // A class absent from the training rows has no loss to weigh.
                counts
                    .iter()
                    .map(|&c| {
                        if c == 0 {
                            1.0
                        } else {
                            (n / (k * c as f64)) as f32
                        }
                    })
                    .collect()
            }
            ClassWeight::ByLabel(m) => labels
                .iter()
                .map(|l| m.get(l).map_or(1.0, |&w| w as f32))
                .collect(),
        }
    }
}

impl Default for TrainingOptions {
    fn default() -> Self {
        TrainingOptions {
            optimizer: OptimizerConfig::default(),
            schedule: None,
            loss: None,
            metrics: Vec::new(),
            epochs: None,
            batch_size: 32,
            validation_split: 0.2,
            seed: 42,
            shuffle: true,
            early_stopping: None,
            refit: None,
            class_weight: None,
        }
    }
}

impl TrainingOptions {
    /// The epoch count of a resolved spec.
    pub fn epochs(&self) -> u32 {
        self.epochs.expect("resolved")
    }

    /// Whether a resolved spec refits.
    pub fn refit(&self) -> bool {
        self.refit.unwrap_or(false)
    }

    /// Early stopping of a resolved spec, when on.
    pub fn early_stopping(&self) -> Option<&EarlyStopping> {
        self.early_stopping.as_ref().and_then(Option::as_ref)
    }
}

/// A field that is absent (`None`) differs from one sent as `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    Accuracy,
    Precision,
    Recall,
    F1,
    Mae,
    Rmse,
    R2,
}

impl MetricName {
    fn for_classification(self) -> bool {
        matches!(
            self,
            MetricName::Accuracy | MetricName::Precision | MetricName::Recall | MetricName::F1
        )
    }
}

/// Stop when the monitored value has not improved for `patience` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// `loss`, `val_loss`, or `val_<metric>` / `<metric>` of the reported metrics.
    pub monitor: String,
    pub patience: u32,
    pub restore_best: bool,
    pub min_delta: f64,
    /// Decides between epochs whose monitored value ties (within `min_delta`): a coarse
    /// metric such as accuracy on a few hundred rows ties often, and the lower `val_loss`
    /// then picks the better-calibrated epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_breaker: Option<String>,
    /// With `restore_best`, serve the latest epoch whose monitored accuracy-like score
    /// (accuracy, precision, recall, F1) is within one standard error of the best,
    /// √(p(1−p)/n) on the n validation rows, rather than the best epoch itself: the
    /// validation rows cannot tell those epochs apart, and the longer-trained network
    /// generalizes at least as well (on fashion_mnist784 the best epoch of 400 noisy
    /// validation rows was epoch 3 of 33, and its refit lost 4.6 points: docs/training.md).
    /// Patience still counts from the best epoch.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prefer_later: bool,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: "val_loss".into(),
            patience: 5,
            restore_best: true,
            min_delta: 0.0,
            tie_breaker: None,
            prefer_later: false,
        }
    }
}

/// Losses and errors improve downwards, scores upwards.
pub fn higher_is_better(monitor: &str) -> bool {
    let m = monitor.trim_start_matches("val_");
    matches!(m, "accuracy" | "precision" | "recall" | "f1" | "r2")
}

impl EarlyStopping {
    pub fn higher_is_better(&self) -> bool {
        higher_is_better(&self.monitor)
    }

    /// Whether an epoch that does not beat the best may still be served instead of it
    /// (`prefer_later`): its score `value` is within one standard error of the `best` score
    /// measured on `n_val` rows.
    pub fn close_enough(&self, value: f64, best: f64, n_val: usize) -> bool {
        let score = matches!(
            self.monitor.trim_start_matches("val_"),
            "accuracy" | "precision" | "recall" | "f1"
        );
        if !self.prefer_later || !self.restore_best || !score || n_val == 0 {
            return false;
        }
        let p = best.clamp(0.0, 1.0);
        let se = (p * (1.0 - p) / n_val as f64).sqrt();
        value >= best - se.max(self.min_delta)
    }

    /// Whether `(value, tie)` beats the best so far `(best, best_tie)`.
    pub fn improves(&self, value: f64, tie: Option<f64>, best: Option<(f64, Option<f64>)>) -> bool {
        let Some((b, bt)) = best else {
            return true;
        };
        let up = self.higher_is_better();
        let better = if up {
            value > b + self.min_delta
        } else {
            value < b - self.min_delta
        };
        if better {
            return true;
        }
        let tied = (value - b).abs() <= self.min_delta;
        match (tied, tie, bt, &self.tie_breaker) {
            (true, Some(t), Some(bt), Some(name)) => {
                if higher_is_better(name) {
                    t > bt
                } else {
                    t < bt
                }
            }
            _ => false,
        }
    }
}

/// The optional search: every combination of the listed candidates (an absent list keeps the
/// spec's own value), at most `trials` of them, each trained on the same split with the same
/// seed; the best by the early-stopping monitor (or the task's default metric) wins.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSpec {
    /// Units of the first hidden layer; each further hidden layer has half as many (at least 8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub width: Vec<usize>,
    /// Hidden layers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depth: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learning_rate: Vec<f64>,
    /// Dropout after every hidden layer (0: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropout: Vec<f64>,
    /// Most trials. Default: every combination, up to [`MAX_TRIALS`]; when there are more
    /// combinations than trials, a seeded sample of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trials: Option<u32>,
    /// No trial starts after this many seconds of the search; a trial running when it passes
    /// stops at its next step and competes with its best epoch so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_budget_seconds: Option<f64>,
}

/// Most trials one search may run.
pub const MAX_TRIALS: u32 = 64;

/// One candidate of a search, as the resolved spec lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrialConfig {
    /// 1-based.
    pub trial: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
}

/// A spec with every default filled in and checked against its dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResolvedSpec {
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Classes in output order (classification), as strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What the defaults decided and why, by field (`layers`, `training.epochs`, …), so a
    /// user of the minimal spec sees what was chosen for them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub defaults: BTreeMap<String, String>,
    /// The search's trials, in the order they run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<TrialConfig>,
}

/// Why a spec is refused (answered 400 before the job is queued).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// Most classes a classifier may have (a guard against a continuous target).
const MAX_CLASSES: usize = 1000;

/// Most parameters a network may have: 80 MB of f32 weights, about four times that while
/// training (gradients, Adam's two moments). Training runs in the server's process, so a
/// small spec must not be able to ask for gigabytes.
pub const MAX_PARAMETERS: usize = 20_000_000;

/// Most values one training batch may hold across all layer outputs (`batch_size` times
/// [`Built::activations`](crate::model::layers::Built)): 1 GiB of f32, kept for the backward
/// pass.
pub const MAX_BATCH_ACTIVATIONS: usize = 1 << 28;

/// The class names of a target column, in output order: sorted categories, or sorted
/// distinct numbers printed without a trailing `.0`.
pub fn class_labels(table: &Table, target: &str) -> Vec<String> {
    let Some(col) = table.column(target) else {
        return Vec::new();
    };
    match &col.values {
        ColumnValues::Category { codes, levels } => {
            let mut used = vec![false; levels.len()];
            for &c in codes {
                if let Some(u) = used.get_mut(c as usize) {
                    *u = true;
                }
            }
            levels
                .iter()
                .zip(used)
                .filter(|(_, u)| *u)
                .map(|(l, _)| l.clone())
                .collect()
        }
        ColumnValues::Numeric(v) => {
            let mut xs: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            xs.into_iter()
                .take(MAX_CLASSES + 1)
                .map(number_label)
                .collect()
        }
    }
}

/// A number as a class label: `1`, not `1.0`.
pub fn number_label(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// Values that replace a spec's own: `kiln train`'s flags, applied to the typed spec.
#[derive(Debug, Clone, Default)]
pub struct SpecOverrides {
    pub model: Option<String>,
    /// The model name when neither the spec nor `model` gives one (the data file's stem).
    pub model_default: Option<String>,
    pub dataset: Option<String>,
    pub target: Option<String>,
    pub epochs: Option<u32>,
}

impl JobSpec {
    /// Parses a spec; the error says which field is wrong (serde's message, with position).
    pub fn from_json(bytes: &[u8]) -> Result<JobSpec, SpecError> {
        let spec = Self::parse(bytes)?;
        spec.check_names()?;
        Ok(spec)
    }

    /// Parses a spec that may leave out what `overrides` supplies, then applies them. The
    /// caller checks the result with [`JobSpec::check_names`] (after saying, in its own
    /// terms, what is missing).
    pub fn from_json_with(bytes: &[u8], overrides: &SpecOverrides) -> Result<JobSpec, SpecError> {
        Ok(Self::parse(bytes)?.apply(overrides))
    }

    /// Replaces this spec's values by the overrides'.
    pub fn apply(mut self, o: &SpecOverrides) -> JobSpec {
        match (&o.model, &o.model_default) {
            (Some(m), _) => self.model.clone_from(m),
            (None, Some(d)) if self.model.is_empty() => self.model.clone_from(d),
            _ => {}
        }
        if let Some(d) = &o.dataset {
            self.dataset.clone_from(d);
        }
        if let Some(t) = &o.target {
            self.target.clone_from(t);
        }
        if let Some(n) = o.epochs {
            self.training.epochs = Some(n);
        }
        self
    }

    fn parse(bytes: &[u8]) -> Result<JobSpec, SpecError> {
        serde_json::from_slice(bytes).map_err(|e| SpecError(format!("invalid job spec: {e}")))
    }

    /// `model`, `dataset` and `target` are required (serde lets them be absent: see the
    /// struct).
    pub fn check_names(&self) -> Result<(), SpecError> {
        for (name, value) in [
            ("model", &self.model),
            ("dataset", &self.dataset),
            ("target", &self.target),
        ] {
            if value.is_empty() {
                return bad(format!("invalid job spec: `{name}` is missing or empty"));
            }
        }
        Ok(())
    }

    /// Checks that a validation dataset has the target and every feature column.
    pub fn check_validation_columns(
        &self,
        table: &Table,
        validation: &Table,
    ) -> Result<(), SpecError> {
        let wanted: Vec<&str> = match &self.features {
            Some(f) => f.iter().map(String::as_str).collect(),
            None => table
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| *n != self.target)
                .collect(),
        };
        for name in wanted
            .into_iter()
            .chain(std::iter::once(self.target.as_str()))
        {
            if validation.column(name).is_none() {
                return bad(format!("the validation dataset has no column '{name}'"));
            }
        }
        Ok(())
    }

    /// Fills in the defaults from the dataset and checks the spec against it.
    pub fn resolve(mut self, table: &Table) -> Result<ResolvedSpec, SpecError> {
        if self.base_model.is_some() || self.fine_tune.is_some() || self.base_version.is_some() {
            return bad(
                "base_model: a text job needs the server's loaded models (POST /v1/training-jobs), not this path",
            );
        }
        if !valid_model_name(&self.model) {
            return bad(format!(
                "model name {:?} is invalid: expected 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit",
                self.model
            ));
        }
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let Some(target) = table.column(&self.target) else {
            return bad(format!(
                "target column '{}' is not in the dataset; its columns are {names:?}",
                self.target
            ));
        };
        let features = match self.features.take() {
            Some(f) => {
                if f.is_empty() {
                    return bad("features is empty");
                }
                for (i, name) in f.iter().enumerate() {
                    if table.column(name).is_none() {
                        return bad(format!(
                            "feature '{name}' is not in the dataset; its columns are {names:?}"
                        ));
                    }
                    if *name == self.target {
                        return bad(format!("feature '{name}' is the target column"));
                    }
                    if f[..i].contains(name) {
                        return bad(format!("feature '{name}' is listed twice"));
                    }
                }
                f
            }
            None => names
                .iter()
                .filter(|n| **n != self.target)
                .map(|n| (*n).to_owned())
                .collect(),
        };
        if features.is_empty() {
            return bad("the dataset has no column besides the target");
        }
        let labels = class_labels(table, &self.target);
        let task = match self.task {
            Some(t) => t,
            None => match target.dtype {
                ColumnType::Category | ColumnType::Boolean => Task::Classification,
                ColumnType::Integer if labels.len() <= 20 => Task::Classification,
                ColumnType::Integer | ColumnType::Float => Task::Regression,
            },
        };
        if task == Task::Regression && !target.dtype.is_numeric() {
            return bad(format!(
                "target '{}' is categorical: a regression target must be numeric",
                self.target
            ));
        }
        let labels = match task {
            Task::Classification => labels,
            Task::Regression => Vec::new(),
        };
        if task == Task::Classification {
            if labels.len() < 2 {
                return bad(format!(
                    "target '{}' has {} class(es): a classifier needs at least 2",
                    self.target,
                    labels.len()
                ));
            }
            if labels.len() > MAX_CLASSES {
                return bad(format!(
                    "target '{}' has more than {MAX_CLASSES} distinct values: use task \"regression\"",
                    self.target
                ));
            }
        }
        self.task = Some(task);
        self.features = Some(features);
        if let Some(cw) = &self.training.class_weight {
            if task != Task::Classification {
                return bad("training.class_weight applies to classification only");
            }
            let loss = self
                .training
                .loss
                .unwrap_or(Loss::SparseCategoricalCrossentropy);
            if loss != Loss::SparseCategoricalCrossentropy {
                return bad(format!(
                    "training.class_weight needs the sparse_categorical_crossentropy loss, not {}",
                    loss.as_str()
                ));
            }
            if let ClassWeight::ByLabel(m) = cw {
                if let Some(unknown) = m.keys().find(|l| !labels.contains(l)) {
                    return bad(format!(
                        "training.class_weight names the label '{unknown}', which the target does not have; its labels are {labels:?}"
                    ));
                }
            }
        }
        let mut defaults = BTreeMap::new();
        let has_validation =
            self.validation_dataset.is_some() || self.training.validation_split > 0.0;
        let t = &mut self.training;
        if t.epochs.is_some_and(|e| e == 0 || e > 100_000) {
            return bad("training.epochs must be between 1 and 100000");
        }
        if t.batch_size == 0 || t.batch_size > 1 << 20 {
            return bad("training.batch_size must be between 1 and 1048576");
        }
        if !(0.0..0.9).contains(&t.validation_split) {
            return bad("training.validation_split must be in [0, 0.9)");
        }
        t.optimizer
            .validate()
            .map_err(|e| SpecError(format!("training.optimizer: {e}")))?;
        let loss = t.loss.unwrap_or(match task {
            Task::Classification => Loss::SparseCategoricalCrossentropy,
            Task::Regression => Loss::Mse,
        });
        let loss_ok = match task {
            Task::Classification => matches!(
                loss,
                Loss::SparseCategoricalCrossentropy
                    | Loss::CategoricalCrossentropy
                    | Loss::BinaryCrossentropy
            ),
            Task::Regression => matches!(loss, Loss::Mse | Loss::Mae | Loss::Huber),
        };
        if !loss_ok {
            return bad(format!(
                "training.loss {} does not fit a {} task",
                loss.as_str(),
                task_name(task)
            ));
        }
        if loss == Loss::BinaryCrossentropy && labels.len() != 2 {
            return bad("training.loss binary_crossentropy needs exactly 2 classes");
        }
        t.loss = Some(loss);
        if let Some(m) = t
            .metrics
            .iter()
            .find(|m| m.for_classification() != (task == Task::Classification))
        {
            return bad(format!(
                "training.metrics: {m:?} does not apply to a {} task",
                task_name(task)
            )
            .to_lowercase());
        }
        if t.metrics.is_empty() {
            t.metrics = match task {
                Task::Classification => vec![MetricName::Accuracy],
                Task::Regression => vec![MetricName::Mae],
            };
        }
        // The budget: epochs and patience from the number of optimizer steps an epoch takes.
        let n_train = if self.validation_dataset.is_some() {
            table.n_rows
        } else {
            ((table.n_rows as f64) * (1.0 - t.validation_split)).round() as usize
        };
        let budget = default_budget(n_train, t.batch_size);
        if t.epochs.is_none() {
            t.epochs = Some(budget.epochs);
            defaults.insert("training.epochs".into(), budget.why_epochs.clone());
        }
        if t.early_stopping.is_none() {
            if has_validation {
                let es = default_early_stopping(task, budget.patience);
                defaults.insert(
                    "training.early_stopping".into(),
                    format!(
                        "on: {}{}, patience {}, best epoch restored ({})",
                        es.monitor,
                        es.tie_breaker
                            .as_deref()
                            .map(|t| format!(" (ties broken by {t})"))
                            .unwrap_or_default(),
                        es.patience,
                        budget.why_patience
                    ),
                );
                t.early_stopping = Some(Some(es));
            } else {
                defaults.insert(
                    "training.early_stopping".into(),
                    "off: there are no validation rows to monitor".into(),
                );
                t.early_stopping = Some(None);
            }
        }
        if let Some(es) = t.early_stopping() {
            for (field, name) in std::iter::once(("monitor", &es.monitor))
                .chain(es.tie_breaker.iter().map(|n| ("tie_breaker", n)))
            {
                let m = name.trim_start_matches("val_");
                let known = m == "loss"
                    || serde_json::from_value::<MetricName>(serde_json::Value::from(m)).is_ok();
                if !known {
                    return bad(format!(
                        "training.early_stopping.{field} '{name}' is not loss, val_loss or a metric"
                    ));
                }
                if name.starts_with("val_") && !has_validation {
                    return bad(format!(
                        "training.early_stopping monitors '{name}' but validation_split is 0"
                    ));
                }
            }
        }
        // Early stopping reads the metrics it monitors from the epoch's report: they join it.
        if let Some(es) = t.early_stopping().cloned() {
            for name in std::iter::once(&es.monitor).chain(&es.tie_breaker) {
                let m = name.trim_start_matches("val_");
                if let Ok(m) = serde_json::from_value::<MetricName>(serde_json::Value::from(m)) {
                    if m.for_classification() == (task == Task::Classification)
                        && !t.metrics.contains(&m)
                    {
                        t.metrics.push(m);
                    }
                }
            }
        }
        if t.refit.is_none() {
            let small = table.n_rows < REFIT_BELOW_ROWS;
            let on = small && has_validation && self.validation_dataset.is_none();
            t.refit = Some(on);
            defaults.insert(
                "training.refit".into(),
                if on {
                    format!("on: a table of {} rows (under {REFIT_BELOW_ROWS}) cannot spare its validation rows; the best epoch count is refitted on every row", table.n_rows)
                } else if !small {
                    format!("off: {} rows (at least {REFIT_BELOW_ROWS}); the validation rows cost little", table.n_rows)
                } else {
                    "off: no validation split to choose the epoch count with (or a separate validation dataset)".into()
                },
            );
        }
        if t.refit() && !has_validation {
            return bad("training.refit needs validation rows to choose the epoch count: set training.validation_split above 0");
        }
        let width = self.estimated_width(table);
        let out_units = match (task, loss) {
            (Task::Classification, Loss::BinaryCrossentropy) => 1,
            (Task::Classification, _) => labels.len(),
            (Task::Regression, _) => 1,
        };
        let explicit_layers = self.layers.is_some();
        let layers = match self.layers.take() {
            Some(l) => l,
            None => {
                let hidden = default_hidden(width);
                defaults.insert(
                    "layers".into(),
                    format!(
                        "a relu MLP of {hidden:?} units (about twice the {width} inputs, then half; each between {MIN_WIDTH} and {MAX_WIDTH}) and an output layer for the task"
                    ),
                );
                let mut l = mlp(&hidden, 0.0);
                l.push(output_layer(out_units, task, loss));
                l
            }
        };
        let batch = self.training.batch_size;
        let check = |layers: &[LayerSpec]| check_layers(layers, task, &labels, width, batch);
        // The listed layers' output shape first (built as a model without labels, which
        // checks no output width), then the decision: as listed, refused, or completed.
        let shape = check_layers(&layers, Task::Regression, &[], width, batch)?;
        let layers = if shape == [out_units] {
            check(&layers)?;
            layers
        } else if layers.last().is_some_and(is_output_like) {
            // The model's own check names the classes and units; this one the shapes.
            check(&layers)?;
            return bad(format!(
                "layers: the last layer outputs {shape:?} per instance, but this {} task needs [{out_units}]{}",
                task_name(task),
                match task {
                    Task::Classification => format!(" (one unit per class: {labels:?})"),
                    Task::Regression => String::new(),
                }
            ));
        } else {
            // Only hidden layers were listed (as scikit-learn's `hidden_layer_sizes`): add the
            // output layer the task and loss call for.
            let mut l = layers;
            let mut added = Vec::new();
            if shape.len() > 1 {
                l.push(LayerSpec::Flatten { name: None });
                added.push("flatten".to_owned());
            }
            let out = output_layer(out_units, task, loss);
            added.push(describe_dense(out_units, &out));
            l.push(out);
            check(&l)?;
            defaults.insert(
                "layers.output".into(),
                format!(
                    "added {}: the listed layers end in a hidden layer",
                    added.join(" + ")
                ),
            );
            l
        };
        let mut trials = Vec::new();
        if let Some(search) = &self.search {
            if !has_validation {
                return bad("search needs validation rows to compare its trials: set training.validation_split above 0");
            }
            let builds_mlp =
                !(search.width.is_empty() && search.depth.is_empty() && search.dropout.is_empty());
            if builds_mlp && explicit_layers {
                return bad("search.width, depth and dropout build the network themselves: leave layers out (or search only learning_rate)");
            }
            trials = search.plan(self.training.seed)?;
            for trial in &trials {
                if let Some(l) = trial_layers(trial, width, out_units, task, loss) {
                    check(&l)
                        .map_err(|e| SpecError(format!("search trial {}: {}", trial.trial, e.0)))?;
                }
            }
            defaults.insert(
                "search".into(),
                format!(
                    "{} trial(s), listed in trials; the best by {} is published",
                    trials.len(),
                    self.training
                        .early_stopping()
                        .map_or_else(|| selection_monitor(task).to_owned(), |e| e.monitor.clone())
                ),
            );
        }
        Ok(ResolvedSpec {
            spec: JobSpec {
                layers: Some(layers),
                ..self
            },
            labels,
            defaults,
            trials,
        })
    }

    /// The model input width the preprocessing will produce on the whole dataset (training
    /// fits on its split, which may see fewer categories; dense layers adapt to that).
    fn estimated_width(&self, table: &Table) -> usize {
        let features = self.features.as_deref().unwrap_or_default();
        features
            .iter()
            .filter_map(|f| table.column(f))
            .map(|c| match (&c.values, self.preprocessing.categorical) {
                (ColumnValues::Numeric(_), _)
                | (ColumnValues::Category { .. }, Encoding::Ordinal) => 1,
                (ColumnValues::Category { levels, .. }, Encoding::OneHot) => levels.len(),
            })
            .sum()
    }
}

fn task_name(t: Task) -> &'static str {
    match t {
        Task::Classification => "classification",
        Task::Regression => "regression",
    }
}

/// Narrowest and widest first hidden layer of the default network.
pub const MIN_WIDTH: usize = 64;
pub const MAX_WIDTH: usize = 256;

/// The default hidden layers: about twice the input width, then half of it, the first
/// between [`MIN_WIDTH`] and [`MAX_WIDTH`] — never narrower than the 64-32 MLP that
/// scikit-learn users reach for (16-8 on iris was too small to train reliably).
pub fn default_hidden(width: usize) -> Vec<usize> {
    let h1 = (2 * width).next_power_of_two().clamp(MIN_WIDTH, MAX_WIDTH);
    vec![h1, h1 / 2]
}

/// Relu dense layers of `units`, each followed by dropout when `dropout > 0`.
pub fn mlp(units: &[usize], dropout: f64) -> Vec<LayerSpec> {
    let mut out = Vec::new();
    for &u in units {
        out.push(LayerSpec::Dense {
            units: u,
            activation: Some(Activation::Relu),
            use_bias: true,
            initializer: None,
            name: None,
        });
        if dropout > 0.0 {
            out.push(LayerSpec::Dropout {
                rate: dropout,
                name: None,
            });
        }
    }
    out
}

/// The output layer fitting the task and loss: softmax over the classes, one sigmoid unit
/// (binary cross-entropy) or one linear unit (regression).
pub fn output_layer(out_units: usize, task: Task, loss: Loss) -> LayerSpec {
    let activation = match (task, loss) {
        (Task::Classification, Loss::BinaryCrossentropy) => Some(Activation::Sigmoid),
        (Task::Classification, _) => Some(Activation::Softmax),
        (Task::Regression, _) => None,
    };
    LayerSpec::Dense {
        units: out_units,
        activation,
        use_bias: true,
        initializer: None,
        name: None,
    }
}

/// An MLP sized for the data: [`default_hidden`] and the output layer.
pub fn default_layers(width: usize, out_units: usize, task: Task, loss: Loss) -> Vec<LayerSpec> {
    let mut l = mlp(&default_hidden(width), 0.0);
    l.push(output_layer(out_units, task, loss));
    l
}

/// `dense 3 softmax`, for the resolved spec's notes.
fn describe_dense(units: usize, l: &LayerSpec) -> String {
    let is = |a: Activation| matches!(l, LayerSpec::Dense { activation: Some(x), .. } if *x == a);
    let activation = if is(Activation::Softmax) {
        "softmax"
    } else if is(Activation::Sigmoid) {
        "sigmoid"
    } else {
        "linear"
    };
    format!("dense {units} {activation}")
}

/// A last layer meant as the output: a dense layer without a hidden activation (linear,
/// softmax, sigmoid), or a softmax/sigmoid activation layer. One that does not fit the task
/// is a mistake to report, not a hidden layer to build on.
fn is_output_like(l: &LayerSpec) -> bool {
    let out_act = |a: &Option<Activation>| {
        matches!(
            a,
            None | Some(Activation::Linear | Activation::Softmax | Activation::Sigmoid)
        )
    };
    match l {
        LayerSpec::Dense { activation, .. } => out_act(activation),
        LayerSpec::Activation { activation, .. } => {
            matches!(activation, Activation::Softmax | Activation::Sigmoid)
        }
        LayerSpec::Dropout { .. }
        | LayerSpec::Flatten { .. }
        | LayerSpec::Reshape { .. }
        | LayerSpec::Conv1d { .. }
        | LayerSpec::Conv2d { .. }
        | LayerSpec::MaxPool2d { .. }
        | LayerSpec::AvgPool2d { .. }
        | LayerSpec::BatchNorm { .. }
        | LayerSpec::LayerNorm { .. }
        | LayerSpec::Embedding { .. }
        | LayerSpec::Lstm { .. }
        | LayerSpec::Gru { .. } => false,
    }
}

/// Builds `layers` on `[width]` inputs without allocating weights; every shape and size error
/// surfaces here. Returns the output shape per instance.
fn check_layers(
    layers: &[LayerSpec],
    task: Task,
    labels: &[String],
    width: usize,
    batch: usize,
) -> Result<Vec<usize>, SpecError> {
    let model_spec = ModelSpec {
        format_version: FORMAT_VERSION,
        task,
        input: InputSignature {
            shape: vec![width],
            dtype: InputDType::Float32,
            features: None,
        },
        labels: labels.to_vec(),
        layers: layers.to_vec(),
        preprocessing: None,
        training: None,
    };
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(ParameterCount::default()),
        candle_core::DType::F32,
        candle_core::Device::Cpu,
    );
    let built =
        Model::check_and_build(&model_spec, &vb).map_err(|e| SpecError(format!("layers: {e}")))?;
    if built.activations.saturating_mul(batch) > MAX_BATCH_ACTIVATIONS {
        return bad(format!(
            "layers: a batch of {batch} instances holds {} values per instance across the layers' outputs, more than {MAX_BATCH_ACTIVATIONS} in all: use smaller layers or a smaller training.batch_size",
            built.activations
        ));
    }
    Ok(built.output_shape)
}

/// The training budget the defaults give a run of `n_train` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub epochs: u32,
    pub patience: u32,
    pub why_epochs: String,
    pub why_patience: String,
}

/// Tables smaller than this refit by default: holding out a fifth of a few thousand rows
/// costs accuracy (measured: +1.6 points on wine, +3 on mnist1d with the refit), while an
/// epoch of such a table is cheap enough to train twice.
pub const REFIT_BELOW_ROWS: usize = 10_000;

/// Optimizer steps the default budget allows a run (early stopping usually ends it sooner).
pub const BUDGET_STEPS: u64 = 6_000;
/// Epochs of the default budget: at least this many (large data), at most that many (tiny).
pub const MIN_EPOCHS: u32 = 30;
pub const MAX_EPOCHS: u32 = 1_000;
/// Patience of the default early stopping, in optimizer steps, and its bounds in epochs.
pub const PATIENCE_STEPS: u64 = 600;
pub const MIN_PATIENCE: u32 = 30;
pub const MAX_PATIENCE: u32 = 100;

/// Epochs and patience from the optimizer steps one epoch takes: a tiny table (3 steps an
/// epoch on iris) needs hundreds of epochs to take enough steps, a large one a few passes.
pub fn default_budget(n_train: usize, batch_size: usize) -> Budget {
    let steps = (n_train.max(1).div_ceil(batch_size.max(1))) as u64;
    let epochs = (BUDGET_STEPS.div_ceil(steps) as u32).clamp(MIN_EPOCHS, MAX_EPOCHS);
    let patience = (PATIENCE_STEPS.div_ceil(steps) as u32).clamp(MIN_PATIENCE, MAX_PATIENCE);
    Budget {
        epochs,
        patience,
        why_epochs: format!(
            "{BUDGET_STEPS} optimizer steps at {steps} per epoch (about {n_train} training rows, batch {batch_size}), kept within {MIN_EPOCHS}..{MAX_EPOCHS} epochs"
        ),
        why_patience: format!(
            "{PATIENCE_STEPS} steps, kept within {MIN_PATIENCE}..{MAX_PATIENCE} epochs"
        ),
    }
}

/// The metric a run is judged by when nothing else says: validation accuracy for
/// classification, validation loss for regression.
pub fn selection_monitor(task: Task) -> &'static str {
    match task {
        Task::Classification => "val_accuracy",
        Task::Regression => "val_loss",
    }
}

/// Default early stopping: classification monitors validation accuracy with the validation
/// loss breaking ties — the loss alone stops too early on sets such as mnist1d, where it
/// rises (over-confident wrong answers) while accuracy still improves; regression monitors
/// the validation loss. The best epoch's weights are restored.
pub fn default_early_stopping(task: Task, patience: u32) -> EarlyStopping {
    EarlyStopping {
        monitor: selection_monitor(task).into(),
        patience,
        restore_best: true,
        min_delta: 0.0,
        tie_breaker: (task == Task::Classification).then(|| "val_loss".into()),
        prefer_later: task == Task::Classification,
    }
}

impl SearchSpec {
    /// The trials to run: the combinations of the candidates, all of them or a sample of
    /// `trials` drawn with `seed`, in a fixed order.
    pub fn plan(&self, seed: u64) -> Result<Vec<TrialConfig>, SpecError> {
        if let Some(w) = self.width.iter().find(|&&w| w == 0 || w > 1 << 16) {
            return bad(format!("search.width {w} must be between 1 and 65536"));
        }
        if let Some(d) = self.depth.iter().find(|&&d| d == 0 || d > 16) {
            return bad(format!("search.depth {d} must be between 1 and 16"));
        }
        if let Some(lr) = self
            .learning_rate
            .iter()
            .find(|&&lr| !(lr > 0.0 && lr <= 10.0))
        {
            return bad(format!("search.learning_rate {lr} must be in (0, 10]"));
        }
        if let Some(d) = self.dropout.iter().find(|&&d| !(0.0..1.0).contains(&d)) {
            return bad(format!("search.dropout {d} must be in [0, 1)"));
        }
        if self.trials.is_some_and(|t| t == 0 || t > MAX_TRIALS) {
            return bad(format!("search.trials must be between 1 and {MAX_TRIALS}"));
        }
        if self
            .time_budget_seconds
            .is_some_and(|s| !(s > 0.0 && s.is_finite()))
        {
            return bad("search.time_budget_seconds must be a positive number");
        }
        fn axis<T: Copy>(v: &[T]) -> Vec<Option<T>> {
            if v.is_empty() {
                vec![None]
            } else {
                v.iter().copied().map(Some).collect()
            }
        }
        let mut grid = Vec::new();
        for width in axis(&self.width) {
            for depth in axis(&self.depth) {
                for learning_rate in axis(&self.learning_rate) {
                    for dropout in axis(&self.dropout) {
                        grid.push(TrialConfig {
                            trial: 0,
                            width,
                            depth,
                            learning_rate,
                            dropout,
                        });
                    }
                }
            }
        }
        let most = self.trials.unwrap_or(MAX_TRIALS) as usize;
        if grid.len() > most {
            let mut rng = super::rng::Rng::with_stream(seed, super::rng::streams::SEARCH);
            rng.shuffle(&mut grid);
            grid.truncate(most);
        }
        for (i, t) in grid.iter_mut().enumerate() {
            t.trial = i as u32 + 1;
        }
        Ok(grid)
    }
}

/// The layers of a trial that builds its own MLP (width, depth or dropout given); `None`
/// keeps the spec's layers.
fn trial_layers(
    t: &TrialConfig,
    width: usize,
    out_units: usize,
    task: Task,
    loss: Loss,
) -> Option<Vec<LayerSpec>> {
    if t.width.is_none() && t.depth.is_none() && t.dropout.is_none() {
        return None;
    }
    let default = default_hidden(width);
    let first = t.width.unwrap_or(default[0]);
    let depth = t.depth.unwrap_or(default.len());
    let units: Vec<usize> = (0..depth).map(|i| (first >> i).max(8.min(first))).collect();
    let mut l = mlp(&units, t.dropout.unwrap_or(0.0));
    l.push(output_layer(out_units, task, loss));
    Some(l)
}

fn set_learning_rate(o: &mut OptimizerConfig, lr: f64) {
    match o {
        OptimizerConfig::Sgd(c) => c.learning_rate = lr,
        OptimizerConfig::Adam(c) => c.learning_rate = lr,
        OptimizerConfig::AdamW(c) => c.learning_rate = lr,
        OptimizerConfig::RmsProp(c) => c.learning_rate = lr,
    }
}

impl ResolvedSpec {
    pub fn task(&self) -> Task {
        self.spec.task.expect("resolved")
    }

    pub fn features(&self) -> &[String] {
        self.spec.features.as_deref().expect("resolved")
    }

    pub fn layers(&self) -> &[LayerSpec] {
        self.spec.layers.as_deref().expect("resolved")
    }

    pub fn loss(&self) -> Loss {
        self.spec.training.loss.expect("resolved")
    }

    /// The spec one search trial trains: this spec with the trial's network and learning
    /// rate, no search, no refit. A trial is a complete run of its own (the seam a sub-job
    /// runner calls); `width` is the prepared input width.
    pub fn trial_spec(&self, trial: &TrialConfig, width: usize) -> ResolvedSpec {
        let mut spec = self.spec.clone();
        spec.search = None;
        spec.training.refit = Some(false);
        let out_units = match self.task() {
            Task::Classification if self.loss() == Loss::BinaryCrossentropy => 1,
            Task::Classification => self.labels.len(),
            Task::Regression => 1,
        };
        if let Some(l) = trial_layers(trial, width, out_units, self.task(), self.loss()) {
            spec.layers = Some(l);
        }
        if let Some(lr) = trial.learning_rate {
            set_learning_rate(&mut spec.training.optimizer, lr);
        }
        ResolvedSpec {
            spec,
            labels: self.labels.clone(),
            defaults: BTreeMap::new(),
            trials: Vec::new(),
        }
    }

    /// The served model's description for an input of `shape` (after preprocessing).
    pub fn model_spec(
        &self,
        shape: Vec<usize>,
        preprocessing: Option<crate::preprocess::Preprocessing>,
    ) -> ModelSpec {
        ModelSpec {
            format_version: FORMAT_VERSION,
            task: self.task(),
            input: InputSignature {
                shape,
                dtype: InputDType::Float32,
                // Feature names travel with the preprocessing that consumes them.
                features: preprocessing.as_ref().map(|_| self.features().to_vec()),
            },
            labels: self.labels.clone(),
            layers: self.layers().to_vec(),
            preprocessing,
            training: None,
        }
    }
}

/// A `VarBuilder` backend that hands out zero-size views instead of weights and refuses a
/// network of more than [`MAX_PARAMETERS`] parameters, so a spec asking for a dense layer of
/// 10^12 units is refused before anything is allocated. A tensor fetched twice under one name
/// (the recurrent layers do) counts once.
#[derive(Default)]
struct ParameterCount {
    /// Tensors met so far, and their total size. The builder runs on one thread; the trait
    /// needs `Sync`.
    seen: std::sync::Mutex<(std::collections::HashSet<String>, usize)>,
}

impl candle_nn::var_builder::SimpleBackend for ParameterCount {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        // `layers::get` checked that the size fits in a usize.
        let n = s.elem_count();
        let mut seen = self.seen.lock().expect("a builder never panics holding it");
        if seen.0.insert(name.to_owned()) {
            seen.1 = seen.1.saturating_add(n);
        }
        if seen.1 > MAX_PARAMETERS {
            candle_core::bail!("the network has more than {MAX_PARAMETERS} parameters");
        }
        // A broadcast scalar: the right shape, no storage.
        candle_core::Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: candle_core::DType,
        _: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("tensor '{name}' has no shape to count")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris() -> Table {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/iris.csv");
        crate::dataset::read_table(std::path::Path::new(path), None, None).unwrap()
    }

    fn resolve(layers: &str, batch_size: usize) -> Result<ResolvedSpec, SpecError> {
        let body = format!(
            r#"{{"model": "m", "dataset": "d", "target": "species", "layers": {layers},
                "training": {{"batch_size": {batch_size}}}}}"#
        );
        JobSpec::from_json(body.as_bytes())?.resolve(&iris())
    }

    /// The budget in optimizer steps: tiny tables get many epochs and a long patience, large
    /// ones few; the bounds hold at both ends.
    #[test]
    fn the_default_budget_follows_the_steps_per_epoch() {
        let b = default_budget(95, 32); // iris: 3 steps an epoch
        assert_eq!((b.epochs, b.patience), (MAX_EPOCHS, MAX_PATIENCE));
        let b = default_budget(1600, 32); // 50 steps
        assert_eq!((b.epochs, b.patience), (120, MIN_PATIENCE));
        let b = default_budget(320, 32); // 10 steps
        assert_eq!((b.epochs, b.patience), (600, 60));
        let b = default_budget(1_000_000, 32);
        assert_eq!((b.epochs, b.patience), (MIN_EPOCHS, MIN_PATIENCE));
        assert_eq!(default_hidden(4), [64, 32]);
        assert_eq!(default_hidden(64), [128, 64]);
        assert_eq!(default_hidden(784), [256, 128]);
    }

    /// More combinations than trials: a seeded sample, the same for the same seed.
    #[test]
    fn a_search_plans_every_combination_or_a_seeded_sample() {
        let s: SearchSpec = serde_json::from_str(
            r#"{"width": [32, 64, 128], "depth": [1, 2], "learning_rate": [0.001, 0.01]}"#,
        )
        .unwrap();
        let all = s.plan(1).unwrap();
        assert_eq!(all.len(), 12);
        assert_eq!(
            all.iter().map(|t| t.trial).collect::<Vec<_>>(),
            (1..=12).collect::<Vec<_>>()
        );
        let s = SearchSpec {
            trials: Some(5),
            ..s
        };
        let a = s.plan(1).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a, s.plan(1).unwrap());
        assert_ne!(a, s.plan(2).unwrap());
        for t in &a {
            let same = |x: &TrialConfig| {
                (x.width, x.depth, x.learning_rate) == (t.width, t.depth, t.learning_rate)
            };
            assert!(all.iter().any(same), "{t:?} is not a combination");
        }
    }

    /// The resolved minimal spec: every choice filled in and explained.
    #[test]
    fn the_minimal_spec_resolves_every_choice() {
        let r = JobSpec::from_json(br#"{"model": "m", "dataset": "d", "target": "species"}"#)
            .unwrap()
            .resolve(&iris())
            .unwrap();
        let t = &r.spec.training;
        assert_eq!(t.epochs, Some(MAX_EPOCHS));
        assert_eq!(t.refit, Some(true));
        let es = t.early_stopping().unwrap();
        assert_eq!(
            (
                es.monitor.as_str(),
                es.tie_breaker.as_deref(),
                es.restore_best
            ),
            ("val_accuracy", Some("val_loss"), true)
        );
        for key in [
            "layers",
            "training.epochs",
            "training.early_stopping",
            "training.refit",
        ] {
            assert!(r.defaults.contains_key(key), "{key}: {:?}", r.defaults);
        }
        // Turned off explicitly: `null` stays off, and says nothing.
        let r = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "species", "training": {"early_stopping": null, "refit": false, "epochs": 7}}"#,
        )
        .unwrap()
        .resolve(&iris())
        .unwrap();
        assert!(r.spec.training.early_stopping().is_none());
        assert_eq!(r.spec.training.early_stopping, Some(None));
        assert!(!r.defaults.contains_key("training.early_stopping"));
        assert!(!r.defaults.contains_key("training.epochs"));
        // The stored resolved spec reads back the same (a job resumes from it).
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["training"]["early_stopping"], serde_json::Value::Null);
        let back: ResolvedSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back.spec.training.early_stopping, Some(None));
    }

    /// Layer sizes from a hostile spec: refused with a message, never allocated (a dense
    /// layer of 10^12 units asked the VarMap for 16 TB) nor overflowed (a panic with
    /// overflow checks, a wrong shape without).
    #[test]
    fn networks_too_large_to_train_are_refused_before_allocating() {
        let huge = usize::MAX / 2;
        for (layers, batch, want) in [
            (
                r#"[{"type": "dense", "units": 1000000000000}, {"type": "dense", "units": 3}]"#
                    .to_owned(),
                32,
                "more than 20000000 parameters",
            ),
            (
                format!(
                    r#"[{{"type": "reshape", "shape": [{huge}, 4, 2]}}, {{"type": "flatten"}}, {{"type": "dense", "units": 3}}]"#
                ),
                32,
                "too large",
            ),
            (
                format!(
                    r#"[{{"type": "reshape", "shape": [1, 2, 2]}}, {{"type": "conv2d", "filters": 1, "kernel_size": 1, "padding": {huge}}}, {{"type": "flatten"}}, {{"type": "dense", "units": 3}}]"#
                ),
                32,
                "too large",
            ),
            (
                format!(
                    r#"[{{"type": "reshape", "shape": [4, 1]}}, {{"type": "lstm", "units": {huge}}}, {{"type": "dense", "units": 3}}]"#
                ),
                32,
                "too large",
            ),
            (
                r#"[{"type": "dense", "units": 4000}, {"type": "dense", "units": 3}]"#.to_owned(),
                1 << 20,
                "training.batch_size",
            ),
        ] {
            let err = resolve(&layers, batch).unwrap_err().0;
            assert!(err.contains(want), "{layers}: {err}");
        }
        // The same shapes at a sane size still resolve.
        resolve(
            r#"[{"type": "dense", "units": 4000}, {"type": "dense", "units": 3}]"#,
            32,
        )
        .unwrap();
    }

    #[test]
    fn class_weights_are_checked_and_computed() {
        let with = |cw: &str| {
            JobSpec::from_json(
                format!(r#"{{"model": "m", "dataset": "d", "target": "species", "training": {{"class_weight": {cw}}}}}"#)
                    .as_bytes(),
            )
            .and_then(|s| s.resolve(&iris()))
        };
        let r = with(r#""balanced""#).unwrap();
        assert_eq!(
            r.spec.training.class_weight,
            Some(ClassWeight::Balanced(Balanced::Balanced))
        );
        let text = serde_json::to_value(&r.spec.training).unwrap();
        assert_eq!(text["class_weight"], "balanced");
        let r = with(r#"{"virginica": 2.5}"#).unwrap();
        let cw = r.spec.training.class_weight.clone().unwrap();
        assert_eq!(cw.weights(&r.labels, &[]), [1.0, 1.0, 2.5]);
        for (cw, says) in [
            (r#""heavy""#, "class_weight must be \"balanced\""),
            (
                r#"{"virginica": 0}"#,
                "class_weight of 'virginica' must be a number above 0",
            ),
            (
                r#"{"virginica": "x"}"#,
                "class_weight of 'virginica' must be a number",
            ),
            (r#"{"daisy": 2}"#, "names the label 'daisy'"),
        ] {
            let e = with(cw).unwrap_err().to_string();
            assert!(e.contains(says), "{cw}: {e}");
        }
        let e = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "species", "training": {"class_weight": "balanced", "loss": "categorical_crossentropy"}}"#,
        )
        .unwrap()
        .resolve(&iris())
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("needs the sparse_categorical_crossentropy loss"),
            "{e}"
        );
        let e = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "petal_length", "task": "regression", "training": {"class_weight": "balanced"}}"#,
        )
        .unwrap()
        .resolve(&iris())
        .unwrap_err()
        .to_string();
        assert!(e.contains("classification only"), "{e}");
        // Balanced: n / (k · n_c) on the training rows; an absent class weighs 1.
        let labels = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let y = [0.0, 0.0, 0.0, 1.0];
        assert_eq!(
            ClassWeight::Balanced(Balanced::Balanced).weights(&labels, &y),
            [4.0 / 9.0, 4.0 / 3.0, 1.0]
        );
    }
}
