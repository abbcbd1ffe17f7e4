//! The job store: where every job and its epoch history live, and the only place a job's
//! state changes. [`JobStore`] is the trait the manager talks to; [`super::SqliteJobStore`]
//! is the embedded implementation (`<data>/kiln.db`).
//!
//! Records are typed here and in the manager; JSON appears only inside an implementation, at
//! its columns. Every state change is one conditional step in the store (claim: queued →
//! running, or waiting → running once a search's trial jobs have all ended; spawning the
//! trials: running → waiting with the children inserted; cancel: queued or waiting →
//! cancelled, children included; finish and requeue: running → …), so two callers
//! racing on one job — a cancel and the scheduler, or two replicas sharing a database —
//! cannot both win. A store shared by several processes ([`super::PgJobStore`]) implements
//! the same steps with row locks (`FOR UPDATE SKIP LOCKED` for the claim) and ties `running`
//! jobs to the replica that claimed them by a lease, renewed by [`JobStore::heartbeat`] and
//! by [`JobStore::record_epoch`]: a job whose lease ran out is claimable again, and the
//! replica that lost it can no longer write its history or end it.
//!
//! Every method blocks (on the disk, or on the network for a remote database): call them
//! from a blocking thread (`spawn_blocking`, a job thread), never from async code directly.
//! That is why the trait stays synchronous even for PostgreSQL: its callers already run off
//! the runtime, and the PostgreSQL store drives its async driver from them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::preprocess::DataReport;
use crate::training::metrics::Metrics;
use crate::training::search::TrialResult;
use crate::training::spec::ResolvedSpec;
use crate::training::trainer::EpochEvent;

/// A job's lifecycle: queued → running → succeeded | failed | cancelled. A running job goes
/// back to queued when the server stops it (shutdown, crash); a queued one may be cancelled.
/// A search job goes running → waiting when it has queued its trials as child jobs, and is
/// claimable again (waiting → running) once every child has ended: it holds no job slot
/// while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "waiting" => JobState::Waiting,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// One job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    /// The job spec with its defaults filled in.
    pub spec: ResolvedSpec,
    /// The latest epoch (the last of the history).
    pub progress: Option<EpochEvent>,
    /// What preparing the data did (once the job has prepared it).
    pub report: Option<DataReport>,
    /// The final metrics (succeeded jobs).
    pub metrics: Option<Metrics>,
    /// The published model version (succeeded jobs).
    pub version: Option<u64>,
    pub error: Option<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// A cancel was asked for while the job ran; it stops at its next step or epoch.
    pub cancel_requested: bool,
    /// The replica that claimed the job last (`--replica-id`), once one has.
    pub replica: Option<String>,
    /// A search trial's job: the search job it belongs to.
    pub parent: Option<String>,
    /// A search trial's job: its trial number (`TrialConfig::trial`, 1-based).
    pub trial: Option<u32>,
    /// A search trial's job: Unix milliseconds when the search's time budget runs out.
    pub deadline_ms: Option<i64>,
    /// A search trial's job, once ended: how the trial did (what its search compares).
    pub trial_result: Option<TrialResult>,
}

impl JobRecord {
    /// The model the job trains (and publishes a version of).
    pub fn model(&self) -> &str {
        &self.spec.spec.model
    }
}

/// How a running job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    Succeeded {
        version: u64,
        metrics: Metrics,
    },
    Failed(String),
    Cancelled,
    /// A search trial's job ended with a result for its search: `succeeded` (its metrics
    /// are the trial's), or `cancelled` when it was skipped (the time budget ran out first).
    Trial(Box<TrialResult>),
}

/// The error a skipped trial's job records.
pub const SKIPPED: &str = "skipped: the search's time budget ran out before this trial started";

impl JobEnd {
    pub fn state(&self) -> JobState {
        match self {
            JobEnd::Succeeded { .. } => JobState::Succeeded,
            JobEnd::Failed(_) => JobState::Failed,
            JobEnd::Cancelled => JobState::Cancelled,
            JobEnd::Trial(r) if r.outcome == "skipped" => JobState::Cancelled,
            JobEnd::Trial(_) => JobState::Succeeded,
        }
    }

    /// The columns a finish writes: `(version, metrics, error, trial_result)`, JSON as text.
    pub(super) fn columns(&self) -> (Option<i64>, Option<String>, Option<&str>, Option<String>) {
        match self {
            JobEnd::Succeeded { version, metrics } => {
                (Some(*version as i64), Some(to_json(metrics)), None, None)
            }
            JobEnd::Failed(e) => (None, None, Some(e.as_str()), None),
            JobEnd::Cancelled => (None, None, None, None),
            JobEnd::Trial(r) => (
                None,
                r.metrics.as_ref().map(to_json),
                (r.outcome == "skipped").then_some(SKIPPED),
                Some(to_json(r)),
            ),
        }
    }
}

/// A search trial to queue as a child job ([`JobStore::spawn_children`]).
#[derive(Debug, Clone)]
pub struct NewChild {
    pub id: String,
    pub trial: u32,
    /// The trial's own spec (`ResolvedSpec::trial_spec`).
    pub spec: ResolvedSpec,
    pub deadline_ms: Option<i64>,
}

/// Which jobs a list holds, by parent.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum ParentFilter {
    /// Every job, search trials included.
    #[default]
    Any,
    /// Only jobs that are not a search's trials.
    TopLevel,
    /// Only the trials of this search job.
    Of(String),
}

/// What [`JobStore::request_cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job was queued (or waiting for its trials): it is cancelled now.
    Cancelled,
    /// The job is running: it is asked to stop (it reads the request at its next epoch; the
    /// process running it is also told directly when it is this one).
    Requested,
    /// The job had already ended in this state.
    AlreadyFinal(JobState),
    NotFound,
}

/// Filters for listing.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub model: Option<String>,
    pub parent: ParentFilter,
    /// Return jobs created strictly before this job (keyset pagination, newest first).
    pub before: Option<String>,
    pub limit: usize,
}

/// What a heartbeat learned about the jobs this replica runs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Heartbeat {
    /// Jobs asked to cancel (through any replica).
    pub cancel: Vec<String>,
    /// Jobs this replica no longer holds (its lease ran out and it may run elsewhere now):
    /// they stop without ending, keeping their checkpoint.
    pub lost: Vec<String>,
}

/// Why the store could not answer. Implementations convert their driver's errors into
/// [`StoreError::Database`], or [`StoreError::Unavailable`] when the database cannot be
/// reached at all (worth retrying: the API answers 503 with `Retry-After`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database: {0}")]
    Database(Box<dyn std::error::Error + Send + Sync>),
    #[error("job database unavailable: {0}")]
    Unavailable(String),
    /// This replica's lease on a running job ran out: another replica may hold it now.
    #[error("job '{0}' is no longer held by this replica (its lease ran out)")]
    LeaseLost(String),
    #[error("job database: job '{job}' has an unreadable {column}: {source}")]
    Corrupt {
        job: String,
        column: &'static str,
        source: serde_json::Error,
    },
}

/// Where jobs live. See the module doc for the rules every implementation keeps.
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job, `queued`, and returns it.
    fn insert(&self, id: &str, spec: &ResolvedSpec) -> Result<JobRecord, StoreError>;

    fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Jobs matching `filter`, newest first.
    fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;

    /// The epoch history, in order (only up to the checkpoint after a resume, since later
    /// epochs are recomputed).
    fn history(&self, id: &str) -> Result<Vec<EpochEvent>, StoreError>;

    /// Jobs per state.
    fn count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError>;

    /// Takes the oldest queued job — or waiting job whose children have all ended — and marks
    /// it running, in one step: a job is claimed by one caller only.
    fn claim_next(&self) -> Result<Option<JobRecord>, StoreError>;

    /// Queues a search's trials as child jobs and moves the search job from running (held
    /// here, no cancel asked) to waiting, all in one step; `false` (and nothing stored) when
    /// the parent was not in that state.
    fn spawn_children(&self, parent: &str, children: &[NewChild]) -> Result<bool, StoreError>;

    /// A search job's children, by trial.
    fn children(&self, parent: &str) -> Result<Vec<JobRecord>, StoreError>;

    /// Jobs found `running` when the server starts: a crash or a kill stopped them.
    fn interrupted(&self) -> Result<Vec<JobRecord>, StoreError>;

    fn set_report(&self, id: &str, report: &DataReport) -> Result<(), StoreError>;

    /// Records a finished epoch (replacing one of the same number: a resumed job recomputes
    /// the epochs after its checkpoint). Returns whether a cancel has been requested, which
    /// is how a job learns of a cancel that reached another process.
    fn record_epoch(&self, id: &str, event: &EpochEvent) -> Result<bool, StoreError>;

    /// Forgets the epochs after `epoch` (they will be recomputed on resume).
    fn truncate_history(&self, id: &str, epoch: u32) -> Result<(), StoreError>;

    /// Cancels a queued or waiting job at once, or asks a running one to stop; the job's
    /// children (a search's trials) likewise, in the same step.
    fn request_cancel(&self, id: &str) -> Result<CancelOutcome, StoreError>;

    /// Moves a running job to its final state; `false` if it was not running.
    fn finish(&self, id: &str, end: &JobEnd) -> Result<bool, StoreError>;

    /// Puts a running job back in the queue (it resumes from its checkpoint); `false` if it
    /// was not running.
    fn requeue(&self, id: &str) -> Result<bool, StoreError>;

    /// How often [`JobStore::heartbeat`] must run; `None` for a store only this process uses
    /// (no leases to renew).
    fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Renews this replica's lease on `running` (the jobs it runs), and says which of them
    /// were asked to cancel and which it lost. Also how the manager learns whether the
    /// database answers (readiness).
    fn heartbeat(&self, running: &[String]) -> Result<Heartbeat, StoreError> {
        let _ = running;
        Ok(Heartbeat::default())
    }
}

/// A job row as a SQL driver hands it over (JSON columns still text), one shape for every
/// implementation; [`RawRecord::decode`] reads the JSON.
pub(super) struct RawRecord {
    pub id: String,
    pub state: String,
    pub spec: String,
    pub progress: Option<String>,
    pub report: Option<String>,
    pub metrics: Option<String>,
    pub version: Option<i64>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub cancel_requested: bool,
    pub replica: Option<String>,
    pub parent: Option<String>,
    pub trial: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub trial_result: Option<String>,
}

impl RawRecord {
    pub(super) fn decode(self) -> Result<JobRecord, StoreError> {
        let id = self.id;
        fn opt<T: serde::de::DeserializeOwned>(
            id: &str,
            column: &'static str,
            text: Option<String>,
        ) -> Result<Option<T>, StoreError> {
            text.map(|t| json_column(id, column, &t)).transpose()
        }
        Ok(JobRecord {
            state: JobState::parse(&self.state).unwrap_or(JobState::Failed),
            spec: json_column(&id, "spec", &self.spec)?,
            progress: opt(&id, "progress", self.progress)?,
            report: opt(&id, "report", self.report)?,
            metrics: opt(&id, "metrics", self.metrics)?,
            version: self.version.map(|v| v as u64),
            error: self.error,
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            cancel_requested: self.cancel_requested,
            replica: self.replica,
            parent: self.parent,
            trial: self.trial.map(|t| t as u32),
            deadline_ms: self.deadline_ms,
            trial_result: opt(&id, "trial_result", self.trial_result)?,
            id,
        })
    }
}

pub(super) fn json_column<T: serde::de::DeserializeOwned>(
    job: &str,
    column: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        job: job.to_owned(),
        column,
        source,
    })
}

pub(super) fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("job records serialize")
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds as an RFC 3339 UTC timestamp (`2026-11-29T08:31:40.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_940_000_123), "2026-11-29T08:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
