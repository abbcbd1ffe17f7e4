//! Explanations: the serving core's call for `:explain`, from decoded rows to one
//! [`Attribution`] per instance (Integrated Gradients, see `model::explain`).
//!
//! Checks what a client asked for (steps, target, baseline width, the rows × steps bound),
//! then runs the model's one forward/backward pass on a compute thread of its own
//! (`device::spawn_compute`), never on the runtime; the request's task awaits the answer.
//! At most [`slots`] explanations compute at once; the next ones wait for a slot until
//! their deadline (504 then), and past [`WAITING_PER_SLOT`] waiting per slot a request is
//! answered 503 at once, as a full batcher queue is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Rows, Serving};
use crate::error::Error;
use crate::model::explain::{Attribution, Target};
use crate::model::format::{Task, TrainingBlock};
use crate::model::Model;
use crate::registry::LoadedVersion;

/// Quadrature nodes when a request names none (Captum's default is 50 too); rows whose
/// relative residual is then over [`TOLERANCE`] are computed again with twice the nodes,
/// within [`MAX_STEPS`] and the points limit.
pub const DEFAULT_STEPS: usize = 50;
/// The relative completeness residual the default steps refine to (see
/// `Attribution::relative_residual`).
pub const TOLERANCE: f32 = 1e-3;
/// The most nodes a request may ask for: Gauss–Legendre of 1024 nodes is exact far beyond
/// what f32 gradients resolve.
pub const MAX_STEPS: usize = 1024;

/// What a client asked to explain, decoded: the rows (model input, as for a prediction),
/// an optional baseline (one instance of model input), target and steps as sent.
#[derive(Debug)]
pub struct ExplainInput {
    pub rows: Rows,
    pub baseline: Option<Vec<f32>>,
    pub target: Option<String>,
    pub steps: Option<u64>,
}

/// The limits of explanations, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ExplainLimits {
    /// Most interpolation points (rows × steps) in one request (`max_explain_points`).
    pub max_points: usize,
    /// candle's intra-op threads for the computation (the registry's `threads`).
    pub threads: usize,
}

/// Explanations at once, process-wide: one per core. Each holds a compute thread and the
/// activations of up to `max_explain_points` points, so more would only share the cores
/// and multiply the memory.
pub fn slots() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

static RUNNING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(slots())));

/// Explanations waiting for a slot, process-wide. A request waits (up to its deadline) while
/// fewer than [`WAITING_PER_SLOT`] × slots wait; beyond that it is refused at once with
/// `queue_full`, as a full prediction queue is.
static WAITING: AtomicUsize = AtomicUsize::new(0);
const WAITING_PER_SLOT: usize = 16;

/// A version's explanations of one request.
#[derive(Debug)]
pub struct Explanations<'m> {
    model: &'m Model,
    rows: Vec<Attribution>,
    /// Where the integral started: `request` (the request gave a baseline),
    /// `training_mean` (the mean input training stored), `zero_embedding` (token models)
    /// or `zero` (model-input zeros: models trained elsewhere).
    pub baseline: &'static str,
    /// The forward and backward pass, on the compute thread.
    pub compute: Duration,
}

impl<'m> Explanations<'m> {
    pub fn rows(&self) -> &[Attribution] {
        &self.rows
    }

    /// What an attribution's target is called: a classifier's label, a regression output's
    /// name (see [`target_names`]).
    pub fn target_name(&self, a: &Attribution) -> String {
        target_names(self.model)
            .into_iter()
            .nth(a.target)
            .unwrap_or_else(|| a.target.to_string())
    }

    /// The column names attributions are given by, when the model names its inputs one by
    /// one (every tabular model); `None`: attributions come in [`Self::shape`].
    pub fn columns(&self) -> Option<&'m [String]> {
        self.model
            .signature()
            .features
            .filter(|f| [f.len()] == self.model.attribution_shape()[..])
    }

    /// The shape of one instance's attributions.
    pub fn shape(&self) -> Vec<usize> {
        self.model.attribution_shape()
    }
}

/// The names a request's `target` may take: a classifier's labels; a regression model's
/// outputs, by index ("0", "1", …), the single output also by the target column it was
/// trained on.
pub fn target_names(model: &Model) -> Vec<String> {
    match model.task() {
        Task::Classification => model.labels().to_vec(),
        Task::Regression => match (&model.spec().training, model.output_len()) {
            (Some(TrainingBlock::Kiln(info)), 1) => vec![info.target.clone()],
            (Some(TrainingBlock::Other(_)) | None, _) | (Some(TrainingBlock::Kiln(_)), _) => {
                (0..model.output_len()).map(|i| i.to_string()).collect()
            }
        },
    }
}

fn resolve_target(model: &Model, target: Option<&str>) -> Result<Target, Error> {
    let Some(name) = target else {
        return Ok(Target::Predicted);
    };
    let names = target_names(model);
    let index = names.iter().position(|n| n == name).or_else(|| {
        // A regression output may always be named by its index.
        (model.task() == Task::Regression)
            .then(|| name.parse::<usize>().ok())
            .flatten()
            .filter(|&i| i < model.output_len())
    });
    match (index, model.task()) {
        (Some(k), Task::Classification) => Ok(Target::Class(k)),
        (Some(k), Task::Regression) => Ok(Target::Output(k)),
        (None, Task::Classification) => Err(Error::InvalidInput(format!(
            "target: unknown label {name:?}; this model's labels are {names:?}"
        ))),
        (None, Task::Regression) => Err(Error::InvalidInput(format!(
            "target: unknown output {name:?}; this model's outputs are {names:?}"
        ))),
    }
}

impl Serving<'_> {
    /// Explains a request's rows on its version: validates steps, target and baseline and
    /// the rows × steps bound ([`Error::TooManyPoints`]), then computes on a compute thread,
    /// by `timeout` (the version's `request_timeout` when `None`).
    pub async fn explain<'v>(
        &self,
        lv: &'v LoadedVersion,
        input: ExplainInput,
        limits: ExplainLimits,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Explanations<'v>, Error> {
        let layers = lv.layers()?;
        let model = &layers.model;
        span.record("model", lv.name.as_str());
        span.record("version", lv.version);
        let (steps, refine) = match input.steps {
            None => (DEFAULT_STEPS, true),
            Some(s @ 1..) if s <= MAX_STEPS as u64 => (s as usize, false),
            Some(s) => {
                return Err(Error::InvalidInput(format!(
                    "steps: {s} is out of range; give 1 to {MAX_STEPS} (default {DEFAULT_STEPS})"
                )))
            }
        };
        let n = input.rows.n_rows;
        let points = n.saturating_mul(steps);
        if points > limits.max_points {
            return Err(Error::TooManyPoints {
                rows: n,
                steps,
                limit: limits.max_points,
            });
        }
        let target = resolve_target(model, input.target.as_deref())?;
        if let Some(b) = &input.baseline {
            debug_assert_eq!(b.len(), model.signature().row_len, "decoded as one row");
        }
        let timeout = timeout.unwrap_or(layers.batcher.config().request_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let permit = match RUNNING.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let capacity = slots() * WAITING_PER_SLOT;
                if WAITING.fetch_add(1, Ordering::Relaxed) >= capacity {
                    WAITING.fetch_sub(1, Ordering::Relaxed);
                    return Err(Error::QueueFull {
                        name: lv.name.clone(),
                        version: lv.version,
                        capacity,
                    });
                }
                let waited =
                    tokio::time::timeout_at(deadline, RUNNING.clone().acquire_owned()).await;
                WAITING.fetch_sub(1, Ordering::Relaxed);
                match waited {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => {
                        return Err(Error::Internal("the explanation slots closed".into()))
                    }
                    Err(_) => return Err(Error::DeadlineExceeded(timeout)),
                }
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work_model = Arc::clone(model);
        let work_span = span.clone();
        let baseline_kind = match &input.baseline {
            Some(_) => "request",
            None if model.signature().vocab.is_some() => "zero_embedding",
            None if model.has_input_mean() => "training_mean",
            None => "zero",
        };
        let rows = input.rows.data;
        let baseline = input.baseline;
        let max_points = limits.max_points;
        crate::device::spawn_compute("kiln-explain".into(), limits.threads, move || {
            let _permit = permit;
            let _entered = work_span.enter();
            let started = Instant::now();
            // A panic inside candle must not take the thread down without an answer.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let baseline = baseline.as_deref();
                if refine {
                    let bounds = (MAX_STEPS, max_points);
                    work_model.integrated_gradients_refined(
                        &rows, n, baseline, target, steps, TOLERANCE, bounds,
                    )
                } else {
                    work_model.integrated_gradients(&rows, n, baseline, target, steps)
                }
            }));
            let result = match result {
                Ok(Ok(rows)) => Ok((rows, started.elapsed())),
                Ok(Err(e)) => Err(Error::Forward(format!("explanation: {e}"))),
                Err(_) => Err(Error::Forward("the explanation panicked".into())),
            };
            // The client may have left: nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|e| Error::Internal(format!("starting an explanation thread: {e}")))?;
        let (rows, compute) = tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| Error::DeadlineExceeded(timeout))?
            .map_err(|_| Error::Forward("the explanation thread stopped".into()))??;
        Ok(Explanations {
            model,
            rows,
            baseline: baseline_kind,
            compute,
        })
    }
}
