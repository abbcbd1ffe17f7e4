//! The training loop: Keras' `fit` over prepared matrices, stoppable between steps.
//!
//! Runs on the job's own OS thread (never the async runtime). Everything random — initial
//! weights, shuffles, dropout masks — comes from seeded streams, so a fixed seed reproduces
//! a CPU run exactly, and a checkpoint carries the generators' state so a resumed run
//! continues the same trajectory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::TrainingError;
use super::init::init_model;
use super::losses::{weighted_sparse_categorical_crossentropy, Loss};
use super::metrics::{argmax_rows, classification_metrics, regression_metrics, Metrics};
use super::optim::Optimizer;
use super::prepare::Prepared;
use super::rng::{streams, Rng, RngState};
use super::spec::{MetricName, ResolvedSpec};
use crate::model::format::{Activation, ModelSpec, Task};
use crate::model::layers::{Layer, ParamGrads};
use crate::model::Model;

/// One epoch's numbers: an SSE event, a row of the job's history, a progress-bar line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EpochEvent {
    pub epoch: u32,
    pub epochs: u32,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// `accuracy`, `val_accuracy`, `mae`, … as requested in the spec.
    #[serde(deserialize_with = "null_as_nan")]
    pub metrics: BTreeMap<String, f64>,
    pub learning_rate: f64,
    pub samples_per_sec: f64,
    pub epoch_seconds: f64,
    /// Estimated seconds left (at this epoch's speed).
    pub eta_seconds: f64,
    /// The search trial this epoch belongs to (1-based), in a run with a search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<u32>,
    /// `trial` or `refit`, in a run of several stages; `epoch` then counts across them and
    /// `stage_epoch` is the epoch within the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_epoch: Option<u32>,
}

/// Reads back what JSON wrote for a metric that was not a number (`null`) as NaN, so a
/// stored epoch always reads back.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// Everything needed to continue a run exactly: written after every epoch.
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: u32,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: Vec<(String, Tensor)>,
    pub best_weights: Option<HashMap<String, Tensor>>,
    pub meta: CheckpointMeta,
}

/// The non-tensor part of a checkpoint (stored as JSON beside the tensors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub epoch: u32,
    pub shuffle_rng: RngState,
    pub dropout_rng: RngState,
    pub best: Option<(f64, u32)>,
    /// The tie-breaker's value at the best epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_tie: Option<f64>,
    pub wait: u32,
    /// The epoch whose weights `best_weights` holds when it is not the best one
    /// (`EarlyStopping::prefer_later`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<u32>,
    /// Where a run of several stages (search trials, refit) stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<super::search::StageMeta>,
}

/// How the run ended (defined with the model's training information, which records it).
pub use crate::model::format::Outcome;

/// The trained weights and how they did.
pub struct Trained {
    pub outcome: Outcome,
    /// The served model's tensors (the best epoch's with `restore_best`).
    pub weights: HashMap<String, Tensor>,
    pub epochs_run: u32,
    pub best_epoch: Option<u32>,
    /// Final metrics on the validation split (or the training split without one), in the
    /// target's original units.
    pub final_metrics: Metrics,
    pub evaluated_on: &'static str,
}

/// What the trainer asks of its caller.
pub trait Hooks {
    /// Checked before every step: `true` stops the run (cancel, shutdown).
    fn should_stop(&self) -> bool;
    /// After every epoch, with the state to checkpoint. An error fails the run.
    fn epoch_done(&mut self, event: &EpochEvent, checkpoint: &Checkpoint) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Hook(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Training(TrainingError::Candle(e))
    }
}

/// The layers used for the training forward pass: a final softmax/sigmoid is left out
/// when the loss takes logits (it stays in the served model).
fn training_layers(layers: &[Layer], loss: Loss) -> Vec<Layer> {
    let mut out = layers.to_vec();
    if !loss.takes_logits() {
        return out;
    }
    let is_prob =
        |a: &crate::model::layers::Act| matches!(a.kind, Activation::Softmax | Activation::Sigmoid);
    if let Some(Layer::Activation(a)) = out.last() {
        if is_prob(a) {
            out.pop();
        }
    } else if let Some(Layer::Dense(l, Some(a))) = out.last() {
        if is_prob(a) {
            let l = l.clone();
            *out.last_mut().expect("non-empty") = Layer::Dense(l, None);
        }
    }
    out
}

/// The forward pass. With `sink` (training), dense layers hand their parameter gradients to
/// it during `backward()` (drain it into the `GradStore` afterwards: [`ParamGrads`]).
fn forward(
    layers: &[Layer],
    xs: Tensor,
    train: bool,
    dropout: &mut Rng,
    sink: Option<&Arc<ParamGrads>>,
) -> Result<Tensor, TrainError> {
    let mut x = xs;
    for l in layers {
        // Dropout draws its masks from the seeded stream, not candle's unseeded RNG.
        x = match (l, train, sink) {
            (Layer::Dropout(rate), true, _) => dropout.dropout(&x, f64::from(*rate))?,
            (_, true, Some(sink)) => l.forward_train(&x, sink)?,
            _ => l.forward_t(&x, train)?,
        };
    }
    Ok(x)
}

/// Copies the rows `idx` of a row-major matrix into `buf`.
fn gather(x: &[f32], width: usize, idx: &[usize], buf: &mut Vec<f32>) {
    buf.clear();
    for &i in idx {
        buf.extend_from_slice(&x[i * width..(i + 1) * width]);
    }
}

struct Setup<'a> {
    spec: &'a ResolvedSpec,
    task: Task,
    loss: Loss,
    classes: usize,
    /// Output units per row.
    out: usize,
    device: Device,
    /// `[classes]`: the training loss's class weights (`training.class_weight`).
    class_weights: Option<Tensor>,
}

impl Setup<'_> {
    /// The target tensor of a batch, as the loss wants it.
    fn targets(&self, y: &[f32]) -> Result<Tensor, TrainError> {
        let n = y.len();
        Ok(match self.loss {
            Loss::SparseCategoricalCrossentropy => Tensor::from_slice(y, n, &self.device)?,
            Loss::CategoricalCrossentropy => {
                let mut onehot = vec![0f32; n * self.classes];
                for (i, &c) in y.iter().enumerate() {
                    onehot[i * self.classes + c as usize] = 1.0;
                }
                Tensor::from_vec(onehot, (n, self.classes), &self.device)?
            }
            Loss::BinaryCrossentropy | Loss::Mse | Loss::Mae | Loss::Huber => {
                Tensor::from_slice(y, (n, 1), &self.device)?
            }
        })
    }

    /// Metrics of outputs (logits or values) against targets, in original units.
    fn metrics(
        &self,
        outputs: &[f32],
        y: &[f32],
        target_scale: Option<(f64, f64)>,
    ) -> Result<Metrics, TrainError> {
        Ok(match self.task {
            Task::Classification => {
                let predicted = if self.out == 1 {
                    outputs.iter().map(|&z| usize::from(z > 0.0)).collect()
                } else {
                    argmax_rows(outputs, self.out)
                };
                let actual: Vec<usize> = y.iter().map(|&c| c as usize).collect();
                classification_metrics(&predicted, &actual, self.classes)?
            }
            Task::Regression => {
                let (shift, scale) = target_scale.unwrap_or((0.0, 1.0));
                let un = |v: f32| (f64::from(v) * scale + shift) as f32;
                let p: Vec<f32> = outputs.iter().map(|&v| un(v)).collect();
                let a: Vec<f32> = y.iter().map(|&v| un(v)).collect();
                regression_metrics(&p, &a, 1)?
            }
        })
    }
}

fn pick(metrics: &Metrics, name: MetricName) -> Option<f64> {
    match name {
        MetricName::Accuracy => metrics.accuracy,
        MetricName::Precision => metrics.precision_macro,
        MetricName::Recall => metrics.recall_macro,
        MetricName::F1 => metrics.f1_macro,
        MetricName::Mae => metrics.mae,
        MetricName::Rmse => metrics.rmse,
        MetricName::R2 => metrics.r2,
    }
}

fn metric_key(name: MetricName) -> &'static str {
    match name {
        MetricName::Accuracy => "accuracy",
        MetricName::Precision => "precision",
        MetricName::Recall => "recall",
        MetricName::F1 => "f1",
        MetricName::Mae => "mae",
        MetricName::Rmse => "rmse",
        MetricName::R2 => "r2",
    }
}

fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>, TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn restore(varmap: &VarMap, weights: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    for (k, v) in data.iter() {
        if let Some(t) = weights.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

/// The served model's spec for prepared data: the job's layers on `[width]` inputs.
pub fn model_spec_for(spec: &ResolvedSpec, data: &Prepared) -> ModelSpec {
    spec.model_spec(vec![data.width], Some(data.preprocessing.clone()))
}

/// Runs the training loop (resuming from `resume` when given).
pub fn train(
    spec: &ResolvedSpec,
    data: &Prepared,
    resume: Option<Checkpoint>,
    hooks: &mut dyn Hooks,
) -> Result<Trained, TrainError> {
    let t = &spec.spec.training;
    let device = Device::Cpu;
    let model_spec = model_spec_for(spec, data);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let built = Model::check_and_build(&model_spec, &vb)?;
    init_model(&model_spec, &varmap, t.seed)?;
    let loss = spec.loss();
    let setup = Setup {
        spec,
        task: spec.task(),
        loss,
        classes: spec.labels.len(),
        out: built.output_shape.iter().product(),
        device: device.clone(),
        class_weights: match &t.class_weight {
            Some(cw) => {
                let w = cw.weights(&spec.labels, &data.y_train);
                Some(Tensor::from_vec(w, spec.labels.len(), &device)?)
            }
            None => None,
        },
    };
    let layers = training_layers(&built.layers, loss);
    let mut opt = Optimizer::from_varmap(&varmap, &t.optimizer)?;
    let total_epochs = t.epochs();
    opt.set_schedule(t.schedule.clone(), total_epochs as usize)?;
    let mut shuffle_rng = Rng::with_stream(t.seed, streams::SHUFFLE);
    let mut dropout_rng = Rng::with_stream(t.seed, streams::DROPOUT);
    let mut best: Option<(f64, u32)> = None;
    let mut best_tie: Option<f64> = None;
    let mut wait = 0u32;
    let mut best_weights: Option<HashMap<String, Tensor>> = None;
    let mut served: Option<u32> = None;
    let mut start_epoch = 0u32;
    if let Some(ck) = resume {
        restore(&varmap, &ck.weights)?;
        let state: HashMap<String, Tensor> = ck.optimizer.into_iter().collect();
        opt.load_state(&state)?;
        shuffle_rng = Rng::from_state(ck.meta.shuffle_rng);
        dropout_rng = Rng::from_state(ck.meta.dropout_rng);
        best = ck.meta.best;
        best_tie = ck.meta.best_tie;
        wait = ck.meta.wait;
        best_weights = ck.best_weights;
        served = ck.meta.served;
        start_epoch = ck.meta.epoch;
    }
    let target_scale = data.preprocessing.target.map(|t| (t.shift, t.scale));
    let (n, w) = (data.n_train(), data.width);
    let has_val = data.n_val() > 0;
    let es = t.early_stopping().cloned();
    let mut outcome = Outcome::Completed;
    let mut epochs_run = start_epoch;
    // A checkpoint written by the epoch that triggered early stopping: the run is over.
    let already_stopped = es
        .as_ref()
        .is_some_and(|es| start_epoch > 0 && wait >= es.patience);
    let end_epoch = if already_stopped {
        outcome = Outcome::EarlyStopped;
        start_epoch
    } else {
        total_epochs
    };
    let mut order: Vec<usize> = (0..n).collect();
    let mut ybuf = Vec::with_capacity(t.batch_size);
    let sink = Arc::new(ParamGrads::default());
    let mut train_out = Vec::with_capacity(n * setup.out);
    let mut train_y = Vec::with_capacity(n);
    'epochs: for epoch in start_epoch..end_epoch {
        let started = Instant::now();
        let lr = opt.set_epoch(epoch as usize);
        if t.shuffle {
            order = (0..n).collect();
            shuffle_rng.shuffle(&mut order);
        }
        let mut loss_sum = 0.0f64;
        train_out.clear();
        train_y.clear();
        for idx in order.chunks(t.batch_size) {
            if hooks.should_stop() {
                outcome = Outcome::Cancelled;
                break 'epochs;
            }
            // Gathered straight into the batch tensor's own buffer (no second copy).
            let mut xbuf = Vec::with_capacity(idx.len() * w);
            gather(&data.x_train, w, idx, &mut xbuf);
            ybuf.clear();
            ybuf.extend(idx.iter().map(|&i| data.y_train[i]));
            let xs = Tensor::from_vec(xbuf, (idx.len(), w), &device)?;
            let ys = setup.targets(&ybuf)?;
            let out = forward(&layers, xs, true, &mut dropout_rng, Some(&sink))?;
            let l = match &setup.class_weights {
                Some(w) => weighted_sparse_categorical_crossentropy(&out, &ys, Some(w))?,
                None => loss.compute(&out, &ys)?,
            };
            let mut grads = l.backward().inspect_err(|_| sink.clear())?;
            sink.drain_into(&mut grads)?;
            opt.step(&grads)?;
            let lv = f64::from(l.to_scalar::<f32>()?);
            if !lv.is_finite() {
                return Err(TrainError::Hook(format!("the loss became {lv} in epoch {}: training diverged (try a lower learning rate)", epoch + 1)));
            }
            loss_sum += lv * idx.len() as f64;
            train_out.extend(out.flatten_all()?.to_vec1::<f32>()?);
            train_y.extend_from_slice(&ybuf);
        }
        let train_metrics = setup.metrics(&train_out, &train_y, target_scale)?;
        let mut metrics = BTreeMap::new();
        for m in &t.metrics {
            if let Some(v) = pick(&train_metrics, *m) {
                metrics.insert(metric_key(*m).to_owned(), v);
            }
        }
        let mut val_loss = None;
        if has_val {
            let (vl, vm) = evaluate(&setup, &layers, &data.x_val, &data.y_val, w, target_scale)?;
            val_loss = Some(vl);
            for m in &t.metrics {
                if let Some(v) = pick(&vm, *m) {
                    metrics.insert(format!("val_{}", metric_key(*m)), v);
                }
            }
        }
        let loss_mean = loss_sum / n.max(1) as f64;
        epochs_run = epoch + 1;
        // Early stopping on the monitored value.
        let mut stop = false;
        if let Some(es) = &es {
            let read = |name: &str| match name {
                "loss" => Some(loss_mean),
                "val_loss" => val_loss,
                other => metrics.get(other).copied(),
            };
            if let Some(v) = read(&es.monitor) {
                let tie = es.tie_breaker.as_deref().and_then(read);
                if es.improves(v, tie, best.map(|(b, _)| (b, best_tie))) {
                    best = Some((v, epoch + 1));
                    best_tie = tie;
                    served = None;
                    wait = 0;
                    if es.restore_best {
                        best_weights = Some(snapshot(&varmap)?);
                    }
                } else {
                    wait += 1;
                    stop = wait >= es.patience;
                    if best.is_some_and(|(b, _)| es.close_enough(v, b, data.n_val())) {
                        served = Some(epoch + 1);
                        best_weights = Some(snapshot(&varmap)?);
                    }
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let event = EpochEvent {
            epoch: epoch + 1,
            epochs: total_epochs,
            loss: loss_mean,
            val_loss,
            metrics,
            learning_rate: lr,
            samples_per_sec: n as f64 / secs.max(1e-9),
            epoch_seconds: secs,
            eta_seconds: secs * f64::from(total_epochs - epoch - 1),
            trial: None,
            stage: None,
            stage_epoch: None,
        };
        let checkpoint = Checkpoint {
            epoch: epoch + 1,
            weights: snapshot(&varmap)?,
            optimizer: opt.state()?,
            best_weights: best_weights.clone(),
            meta: CheckpointMeta {
                epoch: epoch + 1,
                shuffle_rng: shuffle_rng.state(),
                dropout_rng: dropout_rng.state(),
                best,
                best_tie,
                wait,
                served,
                stage: None,
            },
        };
        hooks
            .epoch_done(&event, &checkpoint)
            .map_err(TrainError::Hook)?;
        if stop {
            outcome = Outcome::EarlyStopped;
            break;
        }
    }
    if let (Some(es), Some(bw)) = (&es, &best_weights) {
        if es.restore_best {
            restore(&varmap, bw)?;
        }
    }
    let (x_eval, y_eval, evaluated_on) = if has_val {
        (&data.x_val, &data.y_val, "validation")
    } else {
        (&data.x_train, &data.y_train, "training")
    };
    let (eval_loss, mut final_metrics) =
        evaluate(&setup, &layers, x_eval, y_eval, w, target_scale)?;
    final_metrics.loss = Some(eval_loss);
    Ok(Trained {
        outcome,
        weights: snapshot(&varmap)?,
        epochs_run,
        best_epoch: served.or(best.map(|(_, e)| e)),
        final_metrics,
        evaluated_on,
    })
}

/// Mean loss and metrics over a split, in batches, in inference mode.
fn evaluate(
    setup: &Setup,
    layers: &[Layer],
    x: &[f32],
    y: &[f32],
    w: usize,
    target_scale: Option<(f64, f64)>,
) -> Result<(f64, Metrics), TrainError> {
    const CHUNK: usize = 1024;
    let n = y.len();
    let mut outputs = Vec::with_capacity(n * setup.out);
    let mut loss_sum = 0.0;
    let mut unused = Rng::new(0);
    for start in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - start);
        let xs = Tensor::from_slice(&x[start * w..(start + len) * w], (len, w), &setup.device)?;
        let out = forward(layers, xs, false, &mut unused, None)?;
        let ys = setup.targets(&y[start..start + len])?;
        loss_sum += f64::from(setup.loss.compute(&out, &ys)?.to_scalar::<f32>()?) * len as f64;
        outputs.extend(out.flatten_all()?.to_vec1::<f32>()?);
    }
    let _ = setup.spec;
    Ok((
        loss_sum / n.max(1) as f64,
        setup.metrics(&outputs, y, target_scale)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::prepare::prepare;
    use crate::training::spec::JobSpec;

    struct Quiet {
        events: Vec<EpochEvent>,
        stop_after: Option<usize>,
    }

    impl Hooks for Quiet {
        fn should_stop(&self) -> bool {
            self.stop_after.is_some_and(|n| self.events.len() >= n)
        }
        fn epoch_done(&mut self, event: &EpochEvent, _: &Checkpoint) -> Result<(), String> {
            self.events.push(event.clone());
            Ok(())
        }
    }

    fn iris() -> crate::dataset::Table {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/iris.csv");
        crate::dataset::read_table(std::path::Path::new(path), None, None).unwrap()
    }

    fn run(spec: serde_json::Value) -> (Trained, Vec<EpochEvent>) {
        let table = iris();
        let spec = JobSpec::from_json(spec.to_string().as_bytes())
            .unwrap()
            .resolve(&table)
            .unwrap();
        let data = prepare(&table, &spec, None).unwrap();
        let mut hooks = Quiet {
            events: Vec::new(),
            stop_after: None,
        };
        let trained = train(&spec, &data, None, &mut hooks).unwrap();
        (trained, hooks.events)
    }

    #[test]
    fn trains_iris_reproducibly() {
        let spec = serde_json::json!({"model": "iris", "dataset": "ds", "target": "species",
            "training": {"epochs": 40, "optimizer": {"type": "adam", "learning_rate": 0.01},
                         "early_stopping": null}});
        let (a, events) = run(spec.clone());
        assert_eq!(a.outcome, Outcome::Completed);
        assert_eq!(events.len(), 40);
        assert!(
            events[39].loss < events[0].loss,
            "loss did not fall: {:?}",
            events.iter().map(|e| e.loss).collect::<Vec<_>>()
        );
        let acc = a.final_metrics.accuracy.unwrap();
        assert!(acc > 0.85, "validation accuracy {acc}");
        assert!(events[39].metrics.contains_key("val_accuracy"));
        // Same seed, same weights, bit for bit.
        let (b, _) = run(spec);
        for (k, t) in &a.weights {
            let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = b.weights[k].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{k}");
        }
    }

    #[test]
    fn early_stopping_and_cancel() {
        let (t, events) = run(
            serde_json::json!({"model": "iris", "dataset": "ds", "target": "species",
            "training": {"epochs": 500, "optimizer": {"type": "adam", "learning_rate": 0.05},
                         "early_stopping": {"monitor": "val_loss", "patience": 3}}}),
        );
        assert_eq!(t.outcome, Outcome::EarlyStopped);
        assert!(events.len() < 500);
        assert!(t.best_epoch.unwrap() as usize <= events.len());
        let table = iris();
        let spec = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "species", "training": {"epochs": 10}}"#,
        )
        .unwrap()
        .resolve(&table)
        .unwrap();
        let data = prepare(&table, &spec, None).unwrap();
        let mut hooks = Quiet {
            events: Vec::new(),
            stop_after: Some(2),
        };
        let t = train(&spec, &data, None, &mut hooks).unwrap();
        assert_eq!((t.outcome, hooks.events.len()), (Outcome::Cancelled, 2));
    }

    /// Early stopping on validation accuracy, loss breaking ties, serves the best epoch's
    /// weights: the final validation metrics are that epoch's, not the last one's.
    #[test]
    fn early_stopping_restores_the_best_epochs_weights() {
        // A high learning rate so that the validation loss wanders after its best epoch.
        let (t, events) = run(
            serde_json::json!({"model": "iris", "dataset": "ds", "target": "species",
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.05},
                "early_stopping": {"monitor": "val_accuracy", "tie_breaker": "val_loss", "patience": 30}}}),
        );
        assert_eq!(t.outcome, Outcome::EarlyStopped);
        let best = t.best_epoch.unwrap();
        assert!((best as usize) < events.len(), "stopped at its best epoch");
        let e = &events[best as usize - 1];
        assert_eq!(e.epoch, best);
        assert_eq!(Some(e.metrics["val_accuracy"]), t.final_metrics.accuracy);
        assert_eq!(e.val_loss, t.final_metrics.loss);
        // No later epoch beats it by accuracy, nor ties it with a lower loss.
        for later in &events[best as usize..] {
            let acc = later.metrics["val_accuracy"];
            assert!(
                acc < e.metrics["val_accuracy"]
                    || (acc == e.metrics["val_accuracy"] && later.val_loss >= e.val_loss),
                "epoch {} beats the restored epoch {best}",
                later.epoch
            );
        }
        let last = events.last().unwrap();
        assert_ne!(
            (Some(last.metrics["val_accuracy"]), last.val_loss),
            (t.final_metrics.accuracy, t.final_metrics.loss),
            "the test needs a last epoch that differs from the best"
        );
    }

    /// The default (`prefer_later`): the served epoch is the latest one whose validation
    /// accuracy is within one standard error of the best; its metrics are the final ones;
    /// patience counts from the best epoch.
    #[test]
    fn the_default_serves_the_latest_epoch_within_noise_of_the_best() {
        let (t, events) = run(
            serde_json::json!({"model": "iris", "dataset": "ds", "target": "species",
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.05},
                "early_stopping": {"monitor": "val_accuracy", "tie_breaker": "val_loss",
                    "patience": 30, "prefer_later": true},
                "validation_split": 0.4}}),
        );
        assert_eq!(t.outcome, Outcome::EarlyStopped);
        let acc = |e: &EpochEvent| e.metrics["val_accuracy"];
        // The best epoch: the first with the highest accuracy, the lowest loss among those.
        let best = events
            .iter()
            .fold(None::<&EpochEvent>, |b, e| match b {
                Some(b) if acc(e) < acc(b) || (acc(e) == acc(b) && e.val_loss >= b.val_loss) => {
                    Some(b)
                }
                _ => Some(e),
            })
            .unwrap();
        assert_eq!(
            events.len() as u32,
            best.epoch + 30,
            "patience counts from the best"
        );
        let cm = t.final_metrics.confusion_matrix.as_ref().unwrap();
        let n_val = cm.iter().flatten().sum::<u64>() as f64;
        let se = (acc(best) * (1.0 - acc(best)) / n_val).sqrt();
        let served = events
            .iter()
            .rfind(|e| e.epoch >= best.epoch && acc(e) >= acc(best) - se)
            .unwrap();
        assert_eq!(t.best_epoch, Some(served.epoch));
        assert_eq!(Some(acc(served)), t.final_metrics.accuracy);
        assert_eq!(served.val_loss, t.final_metrics.loss);
        assert!(
            events
                .iter()
                .any(|e| e.epoch > best.epoch && acc(e) < acc(best) - se),
            "the test needs a later epoch outside the noise"
        );
    }

    /// A heavy weight on one class makes the trained network predict it more often.
    #[test]
    fn class_weights_tilt_the_training_loss() {
        let predicted = |cw: serde_json::Value| {
            let table = iris();
            let spec = JobSpec::from_json(
                serde_json::json!({"model": "iris", "dataset": "ds", "target": "species",
                    "training": {"epochs": 3, "early_stopping": null, "refit": false,
                                 "validation_split": 0.0, "class_weight": cw}})
                .to_string()
                .as_bytes(),
            )
            .unwrap()
            .resolve(&table)
            .unwrap();
            let data = prepare(&table, &spec, None).unwrap();
            let mut hooks = Quiet {
                events: Vec::new(),
                stop_after: None,
            };
            let t = train(&spec, &data, None, &mut hooks).unwrap();
            let cm = t.final_metrics.confusion_matrix.unwrap();
            let virginica = spec.labels.iter().position(|l| l == "virginica").unwrap();
            // Rows predicted as virginica: the column of the confusion matrix.
            cm.iter().map(|row| row[virginica]).sum::<u64>()
        };
        let plain = predicted(serde_json::Value::Null);
        let tilted = predicted(serde_json::json!({"virginica": 50.0}));
        assert!(
            tilted > plain,
            "virginica predicted {tilted} times, unweighted {plain}"
        );
    }
}
