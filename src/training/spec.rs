//! The training job spec: what a client POSTs to `/v1/training-jobs` (and `kiln train
//! --spec` reads). Every field but `model`, `dataset` and `target` has a default;
//! [`JobSpec::resolve`] fills them in from the dataset and checks everything that can be
//! checked before the job is queued, so a bad spec is a 400, not a failed job.

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
    pub epochs: u32,
    pub batch_size: usize,
    /// Fraction held out for validation (stratified for classification); 0 disables it.
    pub validation_split: f64,
    pub seed: u64,
    pub shuffle: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

impl Default for TrainingOptions {
    fn default() -> Self {
        TrainingOptions {
            optimizer: OptimizerConfig::default(),
            schedule: None,
            loss: None,
            metrics: Vec::new(),
            epochs: 50,
            batch_size: 32,
            validation_split: 0.2,
            seed: 42,
            shuffle: true,
            early_stopping: None,
        }
    }
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// `loss`, `val_loss`, or `val_<metric>` / `<metric>` of the reported metrics.
    pub monitor: String,
    pub patience: u32,
    pub restore_best: bool,
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: "val_loss".into(),
            patience: 5,
            restore_best: true,
            min_delta: 0.0,
        }
    }
}

impl EarlyStopping {
    /// Losses and errors improve downwards, scores upwards.
    pub fn higher_is_better(&self) -> bool {
        let m = self.monitor.trim_start_matches("val_");
        matches!(m, "accuracy" | "precision" | "recall" | "f1" | "r2")
    }
}

/// A spec with every default filled in and checked against its dataset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResolvedSpec {
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Classes in output order (classification), as strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
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
            self.training.epochs = n;
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
        let t = &mut self.training;
        if t.epochs == 0 || t.epochs > 100_000 {
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
        if let Some(es) = &t.early_stopping {
            let m = es.monitor.trim_start_matches("val_");
            let known = m == "loss"
                || serde_json::from_value::<MetricName>(serde_json::Value::from(m)).is_ok();
            if !known {
                return bad(format!(
                    "training.early_stopping.monitor '{}' is not loss, val_loss or a metric",
                    es.monitor
                ));
            }
            if es.monitor.starts_with("val_") && t.validation_split == 0.0 {
                return bad(format!(
                    "training.early_stopping monitors '{}' but validation_split is 0",
                    es.monitor
                ));
            }
        }
        let width = self.estimated_width(table);
        let out_units = match (task, loss) {
            (Task::Classification, Loss::BinaryCrossentropy) => 1,
            (Task::Classification, _) => labels.len(),
            (Task::Regression, _) => 1,
        };
        let layers = match self.layers.take() {
            Some(l) => l,
            None => default_layers(width, out_units, task, loss),
        };
        let resolved = ResolvedSpec {
            spec: JobSpec {
                layers: Some(layers),
                ..self
            },
            labels,
        };
        // Build the network once on the estimated input: every shape error surfaces now. The
        // weights are counted, not allocated.
        let model_spec = resolved.model_spec(vec![width], None);
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(ParameterCount::default()),
            candle_core::DType::F32,
            candle_core::Device::Cpu,
        );
        let built = Model::check_and_build(&model_spec, &vb)
            .map_err(|e| SpecError(format!("layers: {e}")))?;
        let batch = resolved.spec.training.batch_size;
        if built.activations.saturating_mul(batch) > MAX_BATCH_ACTIVATIONS {
            return bad(format!(
                "layers: a batch of {batch} instances holds {} values per instance across the layers' outputs, more than {MAX_BATCH_ACTIVATIONS} in all: use smaller layers or a smaller training.batch_size",
                built.activations
            ));
        }
        let out: usize = built.output_shape.iter().product();
        if built.output_shape.len() != 1 || out != out_units {
            return bad(format!(
                "layers: the last layer outputs {:?} per instance, but this {} task needs [{out_units}]{}",
                built.output_shape,
                task_name(task),
                match task {
                    Task::Classification => format!(" (one unit per class: {:?})", resolved.labels),
                    Task::Regression => String::new(),
                }
            ));
        }
        Ok(resolved)
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

/// An MLP sized for the data: two relu layers (about twice the input width, then half of
/// it, between 16 and 256 units) and an output layer fitting the task and loss.
pub fn default_layers(width: usize, out_units: usize, task: Task, loss: Loss) -> Vec<LayerSpec> {
    let h1 = (2 * width).next_power_of_two().clamp(16, 256);
    let h2 = (h1 / 2).max(8);
    let dense = |units, activation| LayerSpec::Dense {
        units,
        activation,
        use_bias: true,
        initializer: None,
        name: None,
    };
    let out_act = match (task, loss) {
        (Task::Classification, Loss::BinaryCrossentropy) => Some(Activation::Sigmoid),
        (Task::Classification, _) => Some(Activation::Softmax),
        (Task::Regression, _) => None,
    };
    vec![
        dense(h1, Some(Activation::Relu)),
        dense(h2, Some(Activation::Relu)),
        dense(out_units, out_act),
    ]
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
}
