//! `JobManager`: accepts training jobs, runs them on a bounded pool of job threads, and
//! keeps every state change in the `JobStore` so nothing is lost across restarts.
//!
//! - `submit` (async, on the request's task) resolves the spec against its dataset — a bad
//!   spec is refused before anything is stored — then inserts a `queued` row.
//! - The scheduler task starts up to `max_concurrent_jobs` jobs, each on its own OS thread
//!   (never the async runtime): prepare → train (checkpoint every epoch) → publish.
//! - Progress goes to the store (history, last event) and to a broadcast channel per
//!   running job, which `GET …/events` turns into server-sent events.
//! - After a crash, jobs left `running` are queued again and resume from their checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify, Semaphore};

use super::checkpoint;
use super::run;
use super::spec::{JobSpec, ResolvedSpec};
use super::store::{JobFilter, JobRecord, JobState, JobStore};
use super::trainer::{Checkpoint, EpochEvent, Hooks, Outcome};
use crate::config::TrainingConfig;
use crate::dataset::{DatasetError, DatasetStore};
use crate::registry::{Registry, VersionState};
use crate::store::{validate_and_publish, ModelFiles, ModelStore};

/// Errors of the job API (mapped to HTTP by `api::error`).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("training job '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("dataset '{0}' not found")]
    DatasetNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<super::store::StoreError> for JobError {
    fn from(e: super::store::StoreError) -> Self {
        JobError::Internal(e.to_string())
    }
}

/// A message on a job's event stream.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// `epoch` or `end`.
    pub kind: &'static str,
    pub data: Arc<str>,
}

struct StopFlags {
    cancel: AtomicBool,
    /// The server is shutting down: stop and go back to the queue.
    shutdown: AtomicBool,
}

struct Running {
    flags: Arc<StopFlags>,
    events: broadcast::Sender<JobEvent>,
}

struct Inner {
    store: JobStore,
    datasets: Arc<DatasetStore>,
    models: Arc<dyn ModelStore>,
    checkpoints: PathBuf,
    registry: Arc<Registry>,
    runtime: tokio::runtime::Handle,
    running: Mutex<HashMap<String, Running>>,
    /// Wakes the scheduler when a job is queued or a slot frees up.
    wake: Notify,
    shutting_down: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// The table the last submit parsed (dataset id, table): its job usually starts right
    /// after, and parsing a large upload twice would double the job's start-up time.
    last_table: Mutex<Option<(String, Arc<crate::dataset::Table>)>>,
}

/// Cheap to clone; lives in `AppState`.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

/// What the API shows of a job.
pub struct JobDetails {
    pub record: JobRecord,
    pub history: Vec<Value>,
}

fn new_job_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    format!(
        "job_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Job ids are `job_` + 16 lowercase hex digits.
pub fn valid_job_id(id: &str) -> bool {
    id.strip_prefix("job_").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// What a `JobManager` works with, besides its configuration.
pub struct JobParts {
    pub store: JobStore,
    pub datasets: Arc<DatasetStore>,
    /// Synced after a job publishes a model.
    pub registry: Arc<Registry>,
    /// Where finished jobs publish their models.
    pub models: Arc<dyn ModelStore>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl JobManager {
    /// Opens the manager over its store, requeues jobs a crash left running, and starts the
    /// scheduler. Must be called inside a tokio runtime.
    pub fn start(config: &TrainingConfig, parts: JobParts) -> Result<JobManager, JobError> {
        let JobParts {
            store,
            datasets,
            registry,
            models,
            metrics,
        } = parts;
        let data_dir = &config.data_dir;
        for job in store.interrupted()? {
            // Resume from the checkpoint (or from the start when none was written yet).
            let ck = checkpoint::load(&data_dir.join("checkpoints").join(&job.id));
            match ck {
                Ok(Some(c)) => {
                    store.truncate_history(&job.id, c.epoch)?;
                    store.requeue(&job.id)?;
                    tracing::info!(job = %job.id, epoch = c.epoch, "job interrupted by a restart: resuming from its checkpoint");
                }
                Ok(None) => {
                    store.truncate_history(&job.id, 0)?;
                    store.requeue(&job.id)?;
                    tracing::info!(job = %job.id, "job interrupted before its first checkpoint: starting it again");
                }
                Err(e) => {
                    store.finish(
                        &job.id,
                        JobState::Failed,
                        None,
                        None,
                        Some(&format!(
                            "interrupted by a restart, and its checkpoint cannot be read: {e}"
                        )),
                    )?;
                }
            }
        }
        let inner = Arc::new(Inner {
            store,
            datasets,
            models,
            checkpoints: data_dir.join("checkpoints"),
            registry,
            runtime: tokio::runtime::Handle::current(),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutting_down: AtomicBool::new(false),
            metrics,
            last_table: Mutex::new(None),
        });
        tokio::spawn(scheduler(inner.clone(), config.max_concurrent_jobs.max(1)));
        Ok(JobManager { inner })
    }

    /// Validates and queues a job spec.
    pub async fn submit(&self, body: &[u8]) -> Result<JobRecord, JobError> {
        let spec = JobSpec::from_json(body).map_err(|e| JobError::InvalidSpec(e.0))?;
        let dataset = spec.dataset.clone();
        let inner = self.inner.clone();
        let record = tokio::task::spawn_blocking(move || -> Result<JobRecord, JobError> {
            let table = inner.datasets.load_table(&dataset).map_err(|e| match e {
                DatasetError::NotFound(_) | DatasetError::InvalidId(_) => {
                    JobError::DatasetNotFound(dataset.clone())
                }
                e @ (DatasetError::Invalid(_)
                | DatasetError::TooLarge { .. }
                | DatasetError::Io { .. }
                | DatasetError::Corrupt { .. }
                | DatasetError::Internal(_)) => JobError::Internal(e.to_string()),
            })?;
            if let Some(v) = &spec.validation_dataset {
                let vt = inner.datasets.load_table(v).map_err(|e| match e {
                    DatasetError::NotFound(_) | DatasetError::InvalidId(_) => {
                        JobError::InvalidSpec(format!("validation_dataset '{v}' not found"))
                    }
                    e @ (DatasetError::Invalid(_)
                    | DatasetError::TooLarge { .. }
                    | DatasetError::Io { .. }
                    | DatasetError::Corrupt { .. }
                    | DatasetError::Internal(_)) => JobError::Internal(e.to_string()),
                })?;
                spec.check_validation_columns(&table, &vt)
                    .map_err(|e| JobError::InvalidSpec(e.0))?;
            }
            let resolved = spec
                .resolve(&table)
                .map_err(|e| JobError::InvalidSpec(e.0))?;
            *inner.last_table.lock().expect("table cache lock") =
                Some((dataset.clone(), Arc::new(table)));
            let id = new_job_id();
            let spec_json = serde_json::to_value(&resolved).expect("specs serialize");
            inner.store.insert(&id, &resolved.spec.model, &spec_json)?;
            inner
                .store
                .get(&id)?
                .ok_or_else(|| JobError::Internal("the job vanished after insert".into()))
        })
        .await
        .map_err(|e| JobError::Internal(e.to_string()))??;
        tracing::info!(job = %record.id, model = %record.model, "training job queued");
        self.inner.wake.notify_one();
        Ok(record)
    }

    pub async fn get(&self, id: &str) -> Result<JobDetails, JobError> {
        if !valid_job_id(id) {
            return Err(JobError::NotFound(id.to_owned()));
        }
        let inner = self.inner.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let record = inner
                .store
                .get(&id)?
                .ok_or(JobError::NotFound(id.clone()))?;
            let history = inner.store.history(&id)?;
            Ok(JobDetails { record, history })
        })
        .await
        .map_err(|e| JobError::Internal(e.to_string()))?
    }

    pub async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, JobError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || Ok(inner.store.list(&filter)?))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))?
    }

    /// Cancels a queued job at once, or asks a running one to stop (within one step).
    pub async fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        let details = self.get(id).await?;
        let state = details.record.state;
        if state.is_final() {
            return Err(JobError::Conflict(format!(
                "training job '{id}' is already {}",
                state.as_str()
            )));
        }
        let inner = self.inner.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<JobRecord, JobError> {
            inner.store.request_cancel(&id)?;
            let running = inner.running.lock().expect("job map lock");
            if let Some(r) = running.get(&id) {
                r.flags.cancel.store(true, Ordering::Release);
            } else {
                drop(running);
                // Not started: cancelled right here (unless it started meanwhile and will
                // see the flag in the store).
                let rec = inner
                    .store
                    .get(&id)?
                    .ok_or(JobError::NotFound(id.clone()))?;
                if rec.state == JobState::Queued {
                    inner
                        .store
                        .finish(&id, JobState::Cancelled, None, None, None)?;
                }
            }
            inner.store.get(&id)?.ok_or(JobError::NotFound(id))
        })
        .await
        .map_err(|e| JobError::Internal(e.to_string()))?
    }

    /// A live event stream of a running job (`None` once it has finished).
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<JobEvent>> {
        self.inner
            .running
            .lock()
            .expect("job map lock")
            .get(id)
            .map(|r| r.events.subscribe())
    }

    /// Asks running jobs to stop at the next step and return to the queue (their last
    /// checkpoint is kept), and starts no new ones.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        for r in self.inner.running.lock().expect("job map lock").values() {
            r.flags.shutdown.store(true, Ordering::Release);
        }
    }

    /// Jobs per state, for `/metrics`.
    pub async fn count_by_state(&self) -> Vec<(JobState, i64)> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.store.count_by_state().unwrap_or_default())
            .await
            .unwrap_or_default()
    }

    /// Drops a cached table (its dataset was deleted: the data is the user's).
    pub fn forget_table(&self, dataset: &str) {
        let mut slot = self.inner.last_table.lock().expect("table cache lock");
        if slot.as_ref().is_some_and(|(id, _)| id == dataset) {
            *slot = None;
        }
    }

    /// True while any job thread is still running.
    pub fn busy(&self) -> bool {
        !self.inner.running.lock().expect("job map lock").is_empty()
    }
}

async fn scheduler(inner: Arc<Inner>, slots: usize) {
    let slots = Arc::new(Semaphore::new(slots));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the job semaphore is never closed");
        if inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let i2 = inner.clone();
        let next = tokio::task::spawn_blocking(move || {
            let queued = i2.store.queued().unwrap_or_default();
            let running = i2.running.lock().expect("job map lock");
            queued.into_iter().find(|j| !running.contains_key(&j.id))
        })
        .await
        .ok()
        .flatten();
        let Some(job) = next else {
            drop(permit);
            // Woken by a submit or a finished job; the timeout is a safety net.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), inner.wake.notified())
                .await;
            continue;
        };
        let flags = Arc::new(StopFlags {
            cancel: AtomicBool::new(job.cancel_requested),
            shutdown: AtomicBool::new(false),
        });
        let (tx, _) = broadcast::channel(256);
        inner.running.lock().expect("job map lock").insert(
            job.id.clone(),
            Running {
                flags: flags.clone(),
                events: tx.clone(),
            },
        );
        let inner2 = inner.clone();
        // One compute thread per job, on a rayon pool of its own so candle's rayon-split ops
        // (conv, for one) stay on it instead of going through the global pool and back.
        let spawned = crate::device::spawn_compute(format!("kiln-{}", job.id), 1, move || {
            run_job(&inner2, job, &flags, &tx);
            drop(permit);
            inner2.wake.notify_one();
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a job thread");
        }
    }
}

struct JobHooks<'a> {
    inner: &'a Inner,
    id: &'a str,
    flags: &'a StopFlags,
    events: &'a broadcast::Sender<JobEvent>,
    ckdir: PathBuf,
}

impl Hooks for JobHooks<'_> {
    fn should_stop(&self) -> bool {
        self.flags.cancel.load(Ordering::Relaxed) || self.flags.shutdown.load(Ordering::Relaxed)
    }

    fn epoch_done(&mut self, event: &EpochEvent, ck: &Checkpoint) -> Result<(), String> {
        // History first, then the checkpoint files, then the mark: a crash between any two
        // steps resumes from the files' epoch and recomputes (and re-records) what follows,
        // so the history never has a gap.
        self.inner
            .metrics
            .epoch_seconds
            .observe(event.epoch_seconds);
        let value = serde_json::to_value(event).expect("events serialize");
        let store = &self.inner.store;
        store
            .record_epoch(self.id, event.epoch, &value, false)
            .map_err(|e| e.to_string())?;
        checkpoint::save(&self.ckdir, ck)?;
        store
            .mark_checkpoint(self.id, event.epoch)
            .map_err(|e| e.to_string())?;
        let _ = self.events.send(JobEvent {
            kind: "epoch",
            data: value.to_string().into(),
        });
        Ok(())
    }
}

/// How a job thread ended.
enum Ending {
    Succeeded { version: u64, metrics: Value },
    Cancelled,
    Requeued,
    Failed(String),
}

fn run_job(inner: &Inner, job: JobRecord, flags: &StopFlags, events: &broadcast::Sender<JobEvent>) {
    let id = job.id.clone();
    let ckdir = inner.checkpoints.join(&id);
    let ending = execute(inner, &job, flags, events, &ckdir);
    let (state, version, metrics, error) = match &ending {
        Ending::Succeeded { version, metrics } => (
            Some(JobState::Succeeded),
            Some(*version),
            Some(metrics),
            None,
        ),
        Ending::Cancelled => (Some(JobState::Cancelled), None, None, None),
        Ending::Failed(e) => (Some(JobState::Failed), None, None, Some(e.as_str())),
        Ending::Requeued => (None, None, None, None),
    };
    let stored = match state {
        Some(s) => inner.store.finish(&id, s, version, metrics, error),
        None => inner.store.requeue(&id),
    };
    if let Err(e) = stored {
        tracing::error!(job = %id, error = %e, "cannot record the job's end");
    }
    match &ending {
        Ending::Succeeded { version, .. } => {
            tracing::info!(job = %id, model = %job.model, version, "training job succeeded")
        }
        Ending::Cancelled => tracing::info!(job = %id, "training job cancelled"),
        Ending::Requeued => {
            tracing::info!(job = %id, "training job stopped by shutdown; it resumes at the next start")
        }
        Ending::Failed(e) => tracing::warn!(job = %id, error = %e, "training job failed"),
    }
    if state.is_some() {
        checkpoint::remove(&ckdir);
    }
    let end = json!({
        "state": state.map_or("queued", JobState::as_str),
        "model": job.model,
        "version": version,
        "metrics": metrics,
        "error": error,
    });
    let _ = events.send(JobEvent {
        kind: "end",
        data: end.to_string().into(),
    });
    inner.running.lock().expect("job map lock").remove(&id);
}

fn execute(
    inner: &Inner,
    job: &JobRecord,
    flags: &StopFlags,
    events: &broadcast::Sender<JobEvent>,
    ckdir: &std::path::Path,
) -> Ending {
    let fail = |m: String| Ending::Failed(m);
    if let Err(e) = inner.store.set_running(&job.id) {
        return fail(e.to_string());
    }
    let resolved: ResolvedSpec = match serde_json::from_value(job.spec.clone()) {
        Ok(s) => s,
        Err(e) => return fail(format!("the stored spec cannot be read: {e}")),
    };
    let cached = {
        let mut slot = inner.last_table.lock().expect("table cache lock");
        match slot.take() {
            Some((id, t)) if id == resolved.spec.dataset => Some(t),
            other => {
                *slot = other;
                None
            }
        }
    };
    let table = match cached {
        Some(t) => t,
        None => match inner.datasets.load_table(&resolved.spec.dataset) {
            Ok(t) => Arc::new(t),
            Err(e) => return fail(format!("dataset '{}': {e}", resolved.spec.dataset)),
        },
    };
    let validation = match &resolved.spec.validation_dataset {
        None => None,
        Some(v) => match inner.datasets.load_table(v) {
            Ok(t) => Some(t),
            Err(e) => return fail(format!("validation dataset '{v}': {e}")),
        },
    };
    let (data, report) = match run::prepare_data(&table, &resolved, validation.as_ref()) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    drop((table, validation));
    if let Err(e) = inner.store.set_report(&job.id, &report) {
        return fail(e.to_string());
    }
    let resume = match checkpoint::load(ckdir) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot resume: {e}")),
    };
    if let Some(c) = &resume {
        let _ = inner.store.truncate_history(&job.id, c.epoch);
    }
    let mut hooks = JobHooks {
        inner,
        id: &job.id,
        flags,
        events,
        ckdir: ckdir.to_owned(),
    };
    let result =
        match run::train_and_package(&resolved, &data, report, resume, &mut hooks, Some(&job.id)) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
    if result.trained.outcome == Outcome::Cancelled {
        return if flags.shutdown.load(Ordering::Acquire) && !flags.cancel.load(Ordering::Acquire) {
            Ending::Requeued
        } else {
            Ending::Cancelled
        };
    }
    let name = &resolved.spec.model;
    let files = match ModelFiles::trained(&result.model_spec, &result.weights) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    // Published, then loaded into the registry (this version only) before the job counts
    // as succeeded: a client that sees `succeeded` can predict at once.
    let published = inner.runtime.block_on(async {
        let published = validate_and_publish(&*inner.models, name, files).await?;
        let loaded = inner.registry.load_version(name, published.version).await;
        Ok::<_, crate::store::StoreError>((published.version, loaded))
    });
    let version = match published {
        Ok((version, loaded)) => {
            match loaded {
                Ok(VersionState::Failed(e)) => {
                    tracing::error!(job = %job.id, model = %name, version, error = %e, "the published version failed to load")
                }
                Err(e) => {
                    tracing::error!(job = %job.id, model = %name, version, error = %e, "the published version cannot be loaded")
                }
                Ok(_) => {}
            }
            version
        }
        Err(e) => return fail(format!("publishing the model: {e}")),
    };
    Ending::Succeeded {
        version,
        metrics: result.metrics,
    }
}
