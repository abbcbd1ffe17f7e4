//! `JobManager`: accepts training jobs, runs them on a bounded pool of job threads, and
//! makes every state change through the [`JobStore`], so nothing is lost across restarts.
//!
//! - `submit` (async, on the request's task) resolves the spec against its dataset — a bad
//!   spec is refused before anything is stored — then inserts a `queued` job.
//! - The scheduler task claims up to `max_concurrent_jobs` jobs from the store and runs each
//!   on its own OS thread (never the async runtime): prepare → train (checkpoint every
//!   epoch) → publish.
//! - Progress goes to the store (the history) and to a broadcast channel per running job,
//!   which `GET …/events` turns into server-sent events.
//! - After a crash, jobs left `running` are queued again and resume from their checkpoint.
//! - A spec with a `search` runs as a parent job and one child job per trial: the parent
//!   prepares the data, queues the trials ([`JobStore::spawn_children`]) and goes to
//!   `waiting`, which frees its job slot; every scheduler (of any replica sharing the store)
//!   claims the children like any job. Once they have all ended the parent is claimable
//!   again: it picks the winner ([`search::conclude`]), refits it if asked, and publishes.
//! - With a shared store (PostgreSQL), a heartbeat task renews the leases of the jobs
//!   running here, passes on cancels made through other replicas, stops jobs whose lease
//!   was lost (they run elsewhere now), and tells readiness whether the database answers.
//!
//! The store decides every transition; the map of running jobs holds only what a job thread
//! needs from outside (its stop signals and event sender) while it runs here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Notify, Semaphore};

use super::checkpoint;
use super::error::JobError;
use super::store::{
    now_ms, CancelOutcome, JobEnd, JobFilter, JobRecord, JobState, JobStore, NewChild, StoreError,
};
use crate::config::TrainingConfig;
use crate::dataset::DatasetStore;
use crate::registry::{Registry, VersionState};
use crate::store::{validate_and_publish, ModelFiles, ModelStore};
use crate::training::prepare::Prepared;
use crate::training::run;
use crate::training::search::{self, StageMeta, TrialResult};
use crate::training::spec::{JobSpec, ResolvedSpec};
use crate::training::trainer::{Checkpoint, EpochEvent, Hooks, Outcome};

/// A message on a running job's event stream.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// An epoch ended (and is in the history).
    Epoch(Arc<EpochEvent>),
    /// The job thread ended; the store has the job's new state.
    Ended,
}

/// How a running job is told to stop; read before every step.
struct StopFlags {
    /// A cancel was requested (here, or in the store: see `JobHooks::epoch_done`).
    cancel: AtomicBool,
    /// The server is shutting down: stop and go back to the queue.
    shutdown: AtomicBool,
    /// This replica's lease ran out (another may run the job now): stop, change nothing.
    lost: AtomicBool,
}

/// What outside code reaches of a job this process runs.
struct Running {
    flags: Arc<StopFlags>,
    events: broadcast::Sender<JobEvent>,
}

struct Inner {
    store: Arc<dyn JobStore>,
    datasets: Arc<DatasetStore>,
    models: Arc<dyn ModelStore>,
    checkpoints: PathBuf,
    /// With shared object storage: every checkpoint uploaded there too.
    mirror: Option<checkpoint::Mirror>,
    registry: Arc<Registry>,
    runtime: tokio::runtime::Handle,
    /// Jobs running in this process. A `std` mutex: held only to insert, remove or look up.
    running: Mutex<HashMap<String, Running>>,
    /// Wakes the scheduler when a job is queued or a slot frees up.
    wake: Notify,
    shutting_down: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// Why the last heartbeat could not reach the store (`None`: it answered).
    store_down: Mutex<Option<String>>,
    /// `--replica-id`, in the log lines of the jobs that run here.
    replica: String,
}

/// Cheap to clone; lives in `AppState`.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

/// What the API shows of a job.
pub struct JobDetails {
    pub record: JobRecord,
    pub history: Vec<EpochEvent>,
    /// A search job's trials, as child jobs (once it has queued them), by trial.
    pub children: Vec<JobRecord>,
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

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobError::Internal(e.to_string()))?
}

// === impl JobManager ===

/// What a `JobManager` works with, besides its configuration.
pub struct JobParts {
    pub store: Arc<dyn JobStore>,
    pub datasets: Arc<DatasetStore>,
    /// Loads the version a finished job publishes.
    pub registry: Arc<Registry>,
    /// Where finished jobs publish their models.
    pub models: Arc<dyn ModelStore>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Shared object storage for checkpoints (`None`: the data directory only).
    pub checkpoint_store: Option<crate::remote::Objects>,
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
            checkpoint_store,
        } = parts;
        let checkpoints = config.data_dir.join("checkpoints");
        recover_interrupted(store.as_ref(), &checkpoints)?;
        let inner = Arc::new(Inner {
            store,
            datasets,
            models,
            checkpoints,
            mirror: checkpoint_store.map(checkpoint::Mirror::new),
            registry,
            runtime: tokio::runtime::Handle::current(),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutting_down: AtomicBool::new(false),
            metrics,
            store_down: Mutex::new(None),
            replica: config.replica_id.clone(),
        });
        if let Some(every) = inner.store.heartbeat_interval() {
            tokio::spawn(heartbeat(Arc::downgrade(&inner), every));
        }
        if config.max_concurrent_jobs > 0 {
            tokio::spawn(scheduler(inner.clone(), config.max_concurrent_jobs));
        } else {
            tracing::info!(
                "max_concurrent_jobs = 0: this replica runs no jobs, other replicas claim them"
            );
        }
        Ok(JobManager { inner })
    }

    /// Validates and queues a job spec.
    pub async fn submit(&self, body: &[u8]) -> Result<JobRecord, JobError> {
        let spec = JobSpec::from_json(body).map_err(|e| JobError::InvalidSpec(e.0))?;
        let inner = self.inner.clone();
        let record = blocking(move || {
            let dataset = spec.dataset.clone();
            // Kept for the job's start: parsing a large upload twice would double it.
            let table = inner
                .datasets
                .load_and_keep(&dataset)
                .map_err(|e| JobError::from_dataset(e, || JobError::DatasetNotFound(dataset)))?;
            if let Some(v) = &spec.validation_dataset {
                let vt = inner.datasets.load_table(v).map_err(|e| {
                    JobError::from_dataset(e, || {
                        JobError::InvalidSpec(format!("validation_dataset '{v}' not found"))
                    })
                })?;
                spec.check_validation_columns(&table, &vt)
                    .map_err(|e| JobError::InvalidSpec(e.0))?;
            }
            let base_model = spec.base_model.clone();
            let resolved = match &base_model {
                // A text job: resolved against the loaded base model.
                Some(base) => {
                    let lv = inner
                        .registry
                        .get(base, spec.base_version)
                        .map_err(|e| JobError::InvalidSpec(format!("base_model: {e}")))?;
                    let text = lv.text().map_err(|_| {
                        JobError::InvalidSpec(format!(
                            "base_model '{base}' is not a text model (a transformer version)"
                        ))
                    })?;
                    let b = crate::training::text::Base {
                        name: base,
                        version: lv.version,
                        model: &text.model,
                    };
                    crate::training::text::resolve(spec.clone(), &table, &b)
                }
                None => spec.resolve(&table),
            }
            .map_err(|e| JobError::InvalidSpec(e.0))?;
            Ok(inner.store.insert(&new_job_id(), &resolved)?)
        })
        .await?;
        tracing::info!(job = %record.id, model = %record.model(), "training job queued");
        self.inner.wake.notify_one();
        Ok(record)
    }

    pub async fn get(&self, id: &str) -> Result<JobDetails, JobError> {
        if !valid_job_id(id) {
            return Err(JobError::NotFound(id.to_owned()));
        }
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || {
            let record = inner
                .store
                .get(&id)?
                .ok_or(JobError::NotFound(id.clone()))?;
            let history = inner.store.history(&id)?;
            let children = if record.spec.trials.is_empty() {
                Vec::new()
            } else {
                inner.store.children(&id)?
            };
            Ok(JobDetails {
                record,
                history,
                children,
            })
        })
        .await
    }

    pub async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, JobError> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.store.list(&filter)?)).await
    }

    /// Cancels a queued job at once, or asks a running one to stop (within one step when it
    /// runs here, else at its next epoch). A search job's trials are cancelled with it.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        if !valid_job_id(id) {
            return Err(JobError::NotFound(id.to_owned()));
        }
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || {
            match inner.store.request_cancel(&id)? {
                CancelOutcome::NotFound => return Err(JobError::NotFound(id)),
                CancelOutcome::AlreadyFinal(state) => {
                    return Err(JobError::Conflict(format!(
                        "training job '{id}' is already {}",
                        state.as_str()
                    )))
                }
                CancelOutcome::Cancelled => {
                    tracing::info!(job = %id, "queued training job cancelled");
                }
                CancelOutcome::Requested => {
                    if let Some(r) = inner.running.lock().expect("job map lock").get(&id) {
                        r.flags.cancel.store(true, Ordering::Release);
                    }
                }
            }
            let children = inner.store.children(&id)?;
            let map = inner.running.lock().expect("job map lock");
            for child in &children {
                if let Some(r) = map.get(&child.id) {
                    r.flags.cancel.store(true, Ordering::Release);
                } else if child.state.is_final() {
                    // A finished trial's weights, kept for its search: not needed now.
                    checkpoint::remove(&inner.checkpoints.join(&child.id));
                }
            }
            drop(map);
            inner.store.get(&id)?.ok_or(JobError::NotFound(id))
        })
        .await
    }

    /// A live event stream of a job running here (`None` when it is not running here).
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
        blocking(move || Ok(inner.store.count_by_state()?))
            .await
            .unwrap_or_default()
    }

    /// True while any job thread is still running.
    pub fn busy(&self) -> bool {
        !self.inner.running.lock().expect("job map lock").is_empty()
    }

    /// Why the job store cannot be reached, when its last heartbeat failed (readiness).
    pub fn store_unavailable(&self) -> Option<String> {
        self.inner
            .store_down
            .lock()
            .expect("store state lock")
            .clone()
    }
}

/// Renews the leases of the jobs running here every `every`, and acts on what the store
/// says of them. Ends with the manager.
async fn heartbeat(inner: std::sync::Weak<Inner>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let running: Vec<String> = inner
            .running
            .lock()
            .expect("job map lock")
            .keys()
            .cloned()
            .collect();
        let store = inner.store.clone();
        let beat = tokio::task::spawn_blocking(move || store.heartbeat(&running))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let beat = match beat {
            Ok(beat) => beat,
            Err(e) => {
                let mut down = inner.store_down.lock().expect("store state lock");
                if down.is_none() {
                    tracing::warn!(error = %e, "the job store cannot be reached: job routes answer 503 until it can");
                }
                *down = Some(e);
                continue;
            }
        };
        if inner
            .store_down
            .lock()
            .expect("store state lock")
            .take()
            .is_some()
        {
            tracing::info!("the job store answers again");
        }
        let map = inner.running.lock().expect("job map lock");
        for id in &beat.cancel {
            if let Some(r) = map.get(id) {
                r.flags.cancel.store(true, Ordering::Release);
            }
        }
        for id in &beat.lost {
            if let Some(r) = map.get(id) {
                tracing::warn!(job = %id, "this replica lost the job's lease; stopping it here");
                r.flags.lost.store(true, Ordering::Release);
            }
        }
    }
}

/// Queues again the jobs a crash or kill left running, to resume from their checkpoint (or
/// from the start when none was written yet); fails those whose checkpoint is unreadable.
fn recover_interrupted(store: &dyn JobStore, checkpoints: &Path) -> Result<(), JobError> {
    for job in store.interrupted()? {
        match checkpoint::load(&checkpoints.join(&job.id)) {
            Ok(c) => {
                let epoch = c.as_ref().map_or(0, |c| c.epoch);
                rewind_history(store, &job.id, &checkpoints.join(&job.id), epoch)?;
                store.requeue(&job.id)?;
                if c.is_some() {
                    tracing::info!(job = %job.id, epoch, "job interrupted by a restart: resuming from its checkpoint");
                } else {
                    tracing::info!(job = %job.id, "job interrupted before its first checkpoint: starting it again");
                }
            }
            Err(e) => {
                store.finish(
                    &job.id,
                    &JobEnd::Failed(format!(
                        "interrupted by a restart, and its checkpoint cannot be read: {e}"
                    )),
                )?;
            }
        }
    }
    Ok(())
}

/// The history as the checkpoint left it: epochs after the checkpoint's are dropped (they
/// are computed again), and the checkpoint's own epoch is there even when a crash came
/// between writing the checkpoint and recording the epoch.
fn rewind_history(
    store: &dyn JobStore,
    id: &str,
    ckdir: &Path,
    epoch: u32,
) -> Result<(), JobError> {
    store.truncate_history(id, epoch)?;
    if let Some(event) = checkpoint::load_event(ckdir).filter(|e| e.epoch == epoch) {
        store.record_epoch(id, &event)?;
    }
    Ok(())
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
        let store = inner.store.clone();
        let claimed = tokio::task::spawn_blocking(move || store.claim_next())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let job = match claimed {
            Ok(Some(job)) => Some(job),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a queued job");
                None
            }
        };
        let Some(job) = job else {
            drop(permit);
            // Woken by a submit or a finished job; the timeout is a safety net.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), inner.wake.notified())
                .await;
            continue;
        };
        if inner
            .running
            .lock()
            .expect("job map lock")
            .contains_key(&job.id)
        {
            // Its lease ran out while the database was away, and nobody else took it: the
            // claim renewed it, and its thread here goes on.
            drop(permit);
            continue;
        }
        let flags = Arc::new(StopFlags {
            cancel: AtomicBool::new(job.cancel_requested),
            shutdown: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        });
        let (tx, _) = broadcast::channel(256);
        inner.running.lock().expect("job map lock").insert(
            job.id.clone(),
            Running {
                flags: flags.clone(),
                events: tx.clone(),
            },
        );
        // A shutdown that went through the map just before this job entered it.
        if inner.shutting_down.load(Ordering::Acquire) {
            flags.shutdown.store(true, Ordering::Release);
        }
        let id = job.id.clone();
        let inner2 = inner.clone();
        // One compute thread per job, on a rayon pool of its own so candle's rayon-split ops
        // (conv, for one) stay on it instead of going through the global pool and back.
        let spawned = crate::device::spawn_compute(format!("kiln-{}", job.id), 1, move || {
            run_job(&inner2, job, &flags, &tx);
            drop(permit);
            inner2.wake.notify_one();
        });
        if let Err(e) = spawned {
            tracing::error!(job = %id, error = %e, "cannot start a job thread; the job goes back to the queue");
            inner.running.lock().expect("job map lock").remove(&id);
            let store = inner.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.requeue(&id)).await;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
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
        self.flags.cancel.load(Ordering::Relaxed)
            || self.flags.shutdown.load(Ordering::Relaxed)
            || self.flags.lost.load(Ordering::Relaxed)
    }

    fn epoch_done(&mut self, event: &EpochEvent, ck: &Checkpoint) -> Result<(), String> {
        // The checkpoint (with this epoch's entry) first, then the history row: an epoch a
        // client has seen in the history is always in a checkpoint, so a crash never takes
        // it back; a crash between the two is repaired from the checkpoint's entry.
        self.inner
            .metrics
            .epoch_seconds
            .observe(event.epoch_seconds);
        checkpoint::save(&self.ckdir, ck, event)?;
        if let Some(mirror) = &self.inner.mirror {
            mirror.upload(self.id, &self.ckdir, event.epoch)?;
        }
        let cancel = match self.inner.store.record_epoch(self.id, event) {
            Ok(cancel) => cancel,
            Err(StoreError::LeaseLost(_)) => {
                // Another replica runs the job now: stop before the next step, quietly.
                self.flags.lost.store(true, Ordering::Release);
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        if cancel {
            self.flags.cancel.store(true, Ordering::Release);
        }
        let _ = self.events.send(JobEvent::Epoch(Arc::new(event.clone())));
        Ok(())
    }
}

/// How a job thread ended.
enum Ending {
    Done(JobEnd),
    /// Stopped by a shutdown: back to the queue, to resume from its checkpoint.
    Requeued,
    /// Its lease ran out: the job is another replica's now, and nothing here changes it.
    Lost,
    /// A search job queued its trials and waits for them (the store has it `waiting`).
    Waiting(usize),
}

fn run_job(inner: &Inner, job: JobRecord, flags: &StopFlags, events: &broadcast::Sender<JobEvent>) {
    let id = job.id.clone();
    tracing::info!(job = %id, replica = %inner.replica, model = %job.model(), "training job started");
    let ckdir = inner.checkpoints.join(&id);
    let ending = execute(inner, &job, flags, events, &ckdir);
    let stored = match &ending {
        Ending::Done(end) => inner.store.finish(&id, end),
        Ending::Requeued => inner.store.requeue(&id),
        Ending::Lost | Ending::Waiting(_) => Ok(false),
    };
    let ended_here = match stored {
        Ok(true) => true,
        Ok(false) if matches!(ending, Ending::Lost | Ending::Waiting(_)) => false,
        Ok(false) => {
            tracing::error!(job = %id, "the job was no longer running here in the store (its lease ran out?)");
            false
        }
        Err(e) => {
            tracing::error!(job = %id, error = %e, "cannot record the job's end");
            false
        }
    };
    let replica = &inner.replica;
    match &ending {
        Ending::Done(JobEnd::Succeeded { version, .. }) => {
            tracing::info!(job = %id, %replica, model = %job.model(), version, "training job succeeded");
        }
        Ending::Done(JobEnd::Cancelled) => {
            tracing::info!(job = %id, %replica, "training job cancelled");
        }
        Ending::Done(JobEnd::Failed(e)) => {
            tracing::warn!(job = %id, %replica, error = %e, "training job failed");
        }
        Ending::Done(JobEnd::Trial(r)) => {
            let parent = job.parent.as_deref().unwrap_or("?");
            tracing::info!(job = %id, %replica, parent, trial = r.config.trial, outcome = %r.outcome, score = ?r.score, "search trial ended");
        }
        Ending::Waiting(n) => {
            tracing::info!(job = %id, %replica, trials = n, "search job queued its trials and waits for them");
        }
        Ending::Requeued => {
            tracing::info!(job = %id, "training job stopped by shutdown; it resumes at the next start");
        }
        Ending::Lost => {
            tracing::warn!(job = %id, "training job stopped here: its lease ran out and another replica may run it");
        }
    }
    // The checkpoint goes only with a job that ended here: one that runs elsewhere now
    // (lost lease) may resume from it. A trial that succeeded keeps its (final weights) for
    // its search, which removes it when it ends; a search takes its trials' with its own.
    let keep = if let Ending::Done(JobEnd::Trial(r)) = &ending {
        r.outcome != "skipped"
            && job
                .parent
                .as_deref()
                .and_then(|p| inner.store.get(p).ok().flatten())
                .is_none_or(|p| !p.state.is_final())
    } else {
        false
    };
    if ended_here && matches!(ending, Ending::Done(_)) && !keep {
        checkpoint::remove(&ckdir);
        if let Some(mirror) = &inner.mirror {
            mirror.remove(&id);
        }
        if !job.spec.trials.is_empty() {
            for child in inner.store.children(&id).unwrap_or_default() {
                checkpoint::remove(&inner.checkpoints.join(&child.id));
                if let Some(mirror) = &inner.mirror {
                    mirror.remove(&child.id);
                }
            }
        }
    }
    let _ = events.send(JobEvent::Ended);
    inner.running.lock().expect("job map lock").remove(&id);
}

/// With object storage: the job's last checkpoint brought here first (it may have been
/// written on another replica).
fn fetch_checkpoint(inner: &Inner, id: &str, dir: &Path) -> Result<(), String> {
    match &inner.mirror {
        Some(mirror) => mirror.fetch(id, dir),
        None => Ok(()),
    }
}

fn execute(
    inner: &Inner,
    job: &JobRecord,
    flags: &StopFlags,
    events: &broadcast::Sender<JobEvent>,
    ckdir: &Path,
) -> Ending {
    let fail = |m: String| Ending::Done(JobEnd::Failed(m));
    let (data, text_job) = match load_data(inner, job) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    // A text job trains with its derived spec (the embedding columns as features).
    let spec = text_job.as_ref().map_or(&job.spec, |tj| &tj.derived);
    if job.parent.is_some() {
        return execute_trial(inner, job, &data, flags, events, ckdir);
    }
    if !spec.trials.is_empty() {
        return execute_search(inner, job, &data, flags, events, ckdir);
    }
    if let Err(e) = fetch_checkpoint(inner, &job.id, ckdir) {
        return fail(format!("cannot resume: {e}"));
    }
    let resume = match checkpoint::load(ckdir) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot resume: {e}")),
    };
    // The history as far as the checkpoint (all of it gone without one): a job taken over
    // from a replica that died recomputes the epochs after it, and none counts twice.
    let from = resume.as_ref().map_or(0, |c| c.epoch);
    if let Err(e) = rewind_history(inner.store.as_ref(), &job.id, ckdir, from) {
        return fail(e.to_string());
    }
    let mut hooks = JobHooks {
        inner,
        id: &job.id,
        flags,
        events,
        ckdir: ckdir.to_owned(),
    };
    let result = match run::train_and_package(spec, &data, resume, &mut hooks, Some(&job.id)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if flags.lost.load(Ordering::Acquire) || result.trained.outcome == Outcome::Cancelled {
        return stopped(flags);
    }
    publish(inner, job, &result, text_job.as_ref())
}

/// The job's dataset (and validation dataset), prepared; the report goes to the store.
fn load_data(
    inner: &Inner,
    job: &JobRecord,
) -> Result<(Prepared, Option<crate::training::text::TextJob>), String> {
    let spec = &job.spec;
    let dataset = &spec.spec.dataset;
    let table = inner
        .datasets
        .take_table(dataset)
        .map_err(|e| format!("dataset '{dataset}': {e}"))?;
    let validation = match &spec.spec.validation_dataset {
        None => None,
        Some(v) => Some(
            inner
                .datasets
                .load_table(v)
                .map_err(|e| format!("validation dataset '{v}': {e}"))?,
        ),
    };
    // A text job: the base model encodes the texts; the head trains on the embeddings.
    let text_job = text_job(inner, spec)?;
    let data = match &text_job {
        Some(tj) => {
            let table = tj.embed(&table)?;
            let validation = validation.as_ref().map(|v| tj.embed(v)).transpose()?;
            run::prepare_data(&table, &tj.derived, validation.as_ref())?
        }
        None => run::prepare_data(&table, spec, validation.as_ref())?,
    };
    inner
        .store
        .set_report(&job.id, &data.report)
        .map_err(|e| e.to_string())?;
    Ok((data, text_job))
}

/// The base model of a text job (`base_model`), read from the model store at the version
/// pinned when the job was queued; `None` for other jobs.
fn text_job(
    inner: &Inner,
    spec: &crate::training::spec::ResolvedSpec,
) -> Result<Option<crate::training::text::TextJob>, String> {
    let Some(base) = &spec.spec.base_model else {
        return Ok(None);
    };
    let version = spec
        .spec
        .base_version
        .ok_or("the job's base_version is missing")?;
    let stored = inner
        .runtime
        .block_on(inner.models.read(base, version))
        .map_err(|e| format!("base_model '{base}' version {version}: {e}"))?;
    crate::training::text::TextJob::open(spec, stored.files, &stored.location).map(Some)
}

/// Publishes a finished run's model and ends the job with its version.
fn publish(
    inner: &Inner,
    job: &JobRecord,
    result: &run::RunResult,
    text_job: Option<&crate::training::text::TextJob>,
) -> Ending {
    let fail = |m: String| Ending::Done(JobEnd::Failed(m));
    let spec = &job.spec;
    // Published, then loaded into the registry (this version only) before the job counts
    // as succeeded: a client that sees `succeeded` can predict at once.
    let name = &spec.spec.model;
    let files = match text_job {
        Some(tj) => tj.package(result, Some(&job.id)),
        None => ModelFiles::trained(&result.model_spec, &result.weights).map_err(|e| e.to_string()),
    };
    let files = match files {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
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
    Ending::Done(JobEnd::Succeeded {
        version,
        metrics: result.metrics().clone(),
    })
}

/// How a job stopped without finishing its run: by a shutdown (back to the queue), a lost
/// lease, or a cancel.
fn stopped(flags: &StopFlags) -> Ending {
    if flags.lost.load(Ordering::Acquire) {
        Ending::Lost
    } else if flags.shutdown.load(Ordering::Acquire) && !flags.cancel.load(Ordering::Acquire) {
        Ending::Requeued
    } else {
        Ending::Done(JobEnd::Cancelled)
    }
}

/// A search job: the first time, queues its trials as child jobs and waits; once they have
/// all ended, picks the winner, refits it if the spec asks (checkpointed and resumable like
/// any run), and publishes.
fn execute_search(
    inner: &Inner,
    job: &JobRecord,
    data: &Prepared,
    flags: &StopFlags,
    events: &broadcast::Sender<JobEvent>,
    ckdir: &Path,
) -> Ending {
    let fail = |m: String| Ending::Done(JobEnd::Failed(m));
    let spec = &job.spec;
    let children = match inner.store.children(&job.id) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if children.is_empty() {
        let deadline_ms = spec
            .spec
            .search
            .as_ref()
            .and_then(|s| s.time_budget_seconds)
            .map(|b| now_ms().saturating_add((b * 1000.0).ceil() as i64));
        let planned: Vec<NewChild> = spec
            .trials
            .iter()
            .map(|cfg| NewChild {
                id: new_job_id(),
                trial: cfg.trial,
                spec: spec.trial_spec(cfg, data.width),
                deadline_ms,
            })
            .collect();
        return match inner.store.spawn_children(&job.id, &planned) {
            Ok(true) => Ending::Waiting(planned.len()),
            Ok(false) if flags.lost.load(Ordering::Acquire) => Ending::Lost,
            // Not running here any more: a cancel came first (or the lease went).
            Ok(false) => match inner.store.get(&job.id) {
                Ok(Some(r)) if r.cancel_requested => Ending::Done(JobEnd::Cancelled),
                _ => Ending::Lost,
            },
            Err(e) => fail(e.to_string()),
        };
    }
    // Every trial has ended: what each did, in trial order.
    let (monitor, tie) = search::selection(spec);
    let mut trials: Vec<TrialResult> = Vec::with_capacity(children.len());
    for child in &children {
        let Some(cfg) = spec
            .trials
            .iter()
            .find(|c| Some(c.trial) == child.trial)
            .cloned()
        else {
            return fail(format!("trial job '{}' has no planned trial", child.id));
        };
        let mut r = match (&child.trial_result, child.state) {
            (Some(r), _) => r.clone(),
            (None, JobState::Failed) => TrialResult::without_run(cfg.clone(), "failed"),
            (None, _) => TrialResult::without_run(cfg.clone(), "cancelled"),
        };
        r.config = cfg;
        r.job = Some(child.id.clone());
        r.state = Some(child.state.as_str().to_owned());
        r.replica = child.replica.clone();
        r.error = child.error.clone().filter(|e| e != super::store::SKIPPED);
        trials.push(r);
    }
    let Some(b) = search::best_of(&monitor, tie.as_deref(), &trials) else {
        let why: Vec<String> = trials
            .iter()
            .map(|t| {
                let error = t
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                format!("trial {} {}{error}", t.config.trial, t.outcome)
            })
            .collect();
        return fail(format!(
            "no trial of the search finished: {}",
            why.join("; ")
        ));
    };
    // The winner's served weights, from its checkpoint (only needed without a refit).
    let winner = &children[b];
    let best = if spec.spec.training.refit() {
        None
    } else {
        let dir = inner.checkpoints.join(&winner.id);
        if let Err(e) = fetch_checkpoint(inner, &winner.id, &dir) {
            return fail(format!("the winning trial's weights: {e}"));
        }
        match checkpoint::load(&dir) {
            Ok(Some(ck)) if ck.meta.stage.as_ref().is_some_and(|s| s.done) => Some(ck.weights),
            Ok(_) => {
                return fail(format!(
                    "the weights of the winning trial {} (job '{}') are not in {}: replicas \
                     that share neither the data directory nor an object store need \"refit\": true",
                    trials[b].config.trial,
                    winner.id,
                    inner.checkpoints.display()
                ))
            }
            Err(e) => return fail(format!("the winning trial's weights: {e}")),
        }
    };
    // A refit resumes from the parent's own checkpoint.
    if let Err(e) = fetch_checkpoint(inner, &job.id, ckdir) {
        return fail(format!("cannot resume: {e}"));
    }
    let resume = match checkpoint::load(ckdir) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot resume: {e}")),
    };
    let from = resume.as_ref().map_or(0, |c| c.epoch);
    if let Err(e) = rewind_history(inner.store.as_ref(), &job.id, ckdir, from) {
        return fail(e.to_string());
    }
    let resume = resume.map(|ck| search::split_resume(ck).2);
    let st = StageMeta {
        index: trials.len() as u32,
        offset: 0,
        seconds: 0.0,
        trials: trials.clone(),
        best: Some(b),
        done: false,
    };
    let mut hooks = JobHooks {
        inner,
        id: &job.id,
        flags,
        events,
        ckdir: ckdir.to_owned(),
    };
    let staged = match search::conclude(
        spec, data, st, trials, b, best, resume, &mut hooks, data.width,
    ) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    if staged.trained.outcome == Outcome::Cancelled {
        return stopped(flags);
    }
    let result = run::package(spec, data, staged, Some(&job.id));
    publish(inner, job, &result, None)
}

/// What a trial's job tells its hooks besides the job's own: the search's deadline.
struct TrialHooks<'a> {
    job: JobHooks<'a>,
    trial: u32,
    deadline_ms: Option<i64>,
    out_of_time: std::cell::Cell<bool>,
    /// The last epoch's event and checkpoint state (the result checkpoint reuses them).
    last: Option<(EpochEvent, crate::training::trainer::CheckpointMeta)>,
}

impl Hooks for TrialHooks<'_> {
    fn should_stop(&self) -> bool {
        if self.job.should_stop() {
            return true;
        }
        if self.deadline_ms.is_some_and(|d| now_ms() >= d) {
            self.out_of_time.set(true);
            return true;
        }
        false
    }

    fn epoch_done(&mut self, event: &EpochEvent, ck: &Checkpoint) -> Result<(), String> {
        let mut e = event.clone();
        e.trial = Some(self.trial);
        e.stage = Some("trial".to_owned());
        e.stage_epoch = Some(event.epoch);
        self.job.epoch_done(&e, ck)?;
        self.last = Some((e, ck.meta.clone()));
        Ok(())
    }
}

/// A search trial's job: trains its trial spec on the search's split (stopped by the
/// search's deadline), keeps its served weights in its checkpoint for the search, and ends
/// with its result. Not started before the deadline: skipped (but trial 1 always runs, so a
/// search always has a trial to publish).
fn execute_trial(
    inner: &Inner,
    job: &JobRecord,
    data: &Prepared,
    flags: &StopFlags,
    events: &broadcast::Sender<JobEvent>,
    ckdir: &Path,
) -> Ending {
    let fail = |m: String| Ending::Done(JobEnd::Failed(m));
    let spec: &ResolvedSpec = &job.spec;
    let trial = job.trial.unwrap_or(1);
    let config = crate::training::spec::TrialConfig {
        trial,
        width: None,
        depth: None,
        learning_rate: None,
        dropout: None,
    };
    if let Err(e) = fetch_checkpoint(inner, &job.id, ckdir) {
        return fail(format!("cannot resume: {e}"));
    }
    let resume = match checkpoint::load(ckdir) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot resume: {e}")),
    };
    // Ended before a restart came between its result checkpoint and the store.
    if let Some(stage) = resume.as_ref().and_then(|ck| ck.meta.stage.as_ref()) {
        if let (true, Some(r)) = (stage.done, stage.trials.first()) {
            return Ending::Done(JobEnd::Trial(Box::new(r.clone())));
        }
    }
    if resume.is_none() && trial > 1 && job.deadline_ms.is_some_and(|d| now_ms() >= d) {
        return Ending::Done(JobEnd::Trial(Box::new(TrialResult::without_run(
            config, "skipped",
        ))));
    }
    let from = resume.as_ref().map_or(0, |c| c.epoch);
    if let Err(e) = rewind_history(inner.store.as_ref(), &job.id, ckdir, from) {
        return fail(e.to_string());
    }
    let mut hooks = TrialHooks {
        job: JobHooks {
            inner,
            id: &job.id,
            flags,
            events,
            ckdir: ckdir.to_owned(),
        },
        trial,
        deadline_ms: job.deadline_ms,
        out_of_time: std::cell::Cell::new(false),
        last: None,
    };
    let started = std::time::Instant::now();
    let trained = match search::run_trial(spec, data, resume, &mut hooks) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let out_of_time = hooks.out_of_time.get();
    if flags.lost.load(Ordering::Acquire) || (trained.outcome == Outcome::Cancelled && !out_of_time)
    {
        return stopped(flags);
    }
    let (monitor, tie) = search::selection(spec);
    let result = TrialResult::of_run(
        config,
        &trained,
        (&monitor, tie.as_deref()),
        out_of_time,
        started.elapsed().as_secs_f64(),
    );
    // The served weights, for the search to publish (a checkpoint marked `done`).
    if let Some((event, mut meta)) = hooks.last.take() {
        meta.stage = Some(StageMeta {
            index: 1,
            trials: vec![result.clone()],
            best: Some(0),
            done: true,
            ..StageMeta::default()
        });
        let ck = Checkpoint {
            epoch: event.epoch,
            weights: trained.weights,
            optimizer: Vec::new(),
            best_weights: None,
            meta,
        };
        if let Err(e) = checkpoint::save(ckdir, &ck, &event) {
            return fail(format!("keeping the trial's weights: {e}"));
        }
        if let Some(mirror) = &inner.mirror {
            if let Err(e) = mirror.upload(&job.id, ckdir, event.epoch) {
                return fail(format!("keeping the trial's weights: {e}"));
            }
        }
    }
    Ending::Done(JobEnd::Trial(Box::new(result)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::jobs::SqliteJobStore;

    /// A cancel that reaches only the store (as one made through another replica would)
    /// stops the running job at its next epoch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_written_to_the_store_stops_the_running_job() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::default();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let models: Arc<dyn ModelStore> =
            Arc::new(crate::store::LocalDir::open(dir.path().join("models")));
        let registry = Arc::new(Registry::new(
            config.registry,
            models.clone(),
            candle_core::Device::Cpu,
            metrics.clone(),
        ));
        let datasets = Arc::new(DatasetStore::open(dir.path()).unwrap());
        let csv = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/data/iris.csv"
        ))
        .unwrap();
        let mut upload = datasets.begin_upload(Default::default()).unwrap();
        upload.write_chunk(&csv).unwrap();
        let dataset = upload.finish().unwrap().id;
        let store = Arc::new(SqliteJobStore::open(&dir.path().join("kiln.db")).unwrap());
        let training = crate::config::TrainingConfig {
            data_dir: dir.path().to_owned(),
            ..config.training
        };
        let parts = JobParts {
            store: store.clone(),
            datasets,
            registry,
            models,
            metrics,
            checkpoint_store: None,
        };
        let jobs = JobManager::start(&training, parts).unwrap();
        let spec = format!(
            r#"{{"model": "long", "dataset": "{dataset}", "target": "species",
                "training": {{"epochs": 100000, "batch_size": 1}}}}"#
        );
        let id = jobs.submit(spec.as_bytes()).await.unwrap().id;
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = |want: fn(&JobRecord) -> bool| {
            let jobs = jobs.clone();
            let id = id.clone();
            async move {
                loop {
                    let r = jobs.get(&id).await.unwrap().record;
                    if want(&r) {
                        return r;
                    }
                    assert!(Instant::now() < deadline, "{:?}", r.state);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        state(|r| r.progress.is_some()).await;
        let s = store.clone();
        let i = id.clone();
        let asked = tokio::task::spawn_blocking(move || s.request_cancel(&i))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(asked, CancelOutcome::Requested);
        let done = state(|r| r.state.is_final()).await;
        assert_eq!(done.state, JobState::Cancelled);
        // The thread is gone and its checkpoints with it.
        let ended = Instant::now() + Duration::from_secs(10);
        while jobs.busy() {
            assert!(Instant::now() < ended, "the job thread did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!dir.path().join("checkpoints").join(&id).exists());
    }
}
