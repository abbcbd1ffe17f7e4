//! The job store: where every job and its epoch history live, and the only place a job's
//! state changes. [`JobStore`] is the trait the manager talks to; [`super::SqliteJobStore`]
//! is the embedded implementation (`<data>/kiln.db`).
//!
//! Records are typed here and in the manager; JSON appears only inside an implementation, at
//! its columns. Every state change is one conditional step in the store (claim: queued →
//! running; cancel: queued → cancelled; finish and requeue: running → …), so two callers
//! racing on one job — a cancel and the scheduler, or two replicas sharing a database —
//! cannot both win. A store shared by several processes (PostgreSQL) implements the same
//! steps with row locks (`FOR UPDATE SKIP LOCKED` for the claim) and ties `running` jobs to a
//! lease renewed by [`JobStore::record_epoch`] and its own heartbeat.
//!
//! Every method blocks (on the disk, or on the network for a remote database): call them
//! from a blocking thread (`spawn_blocking`, a job thread), never from async code directly.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::preprocess::DataReport;
use crate::training::metrics::Metrics;
use crate::training::spec::ResolvedSpec;
use crate::training::trainer::EpochEvent;

/// A job's lifecycle: queued → running → succeeded | failed | cancelled. A running job goes
/// back to queued when the server stops it (shutdown, crash); a queued one may be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
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
    Succeeded { version: u64, metrics: Metrics },
    Failed(String),
    Cancelled,
}

impl JobEnd {
    pub fn state(&self) -> JobState {
        match self {
            JobEnd::Succeeded { .. } => JobState::Succeeded,
            JobEnd::Failed(_) => JobState::Failed,
            JobEnd::Cancelled => JobState::Cancelled,
        }
    }
}

/// What [`JobStore::request_cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job was queued: it is cancelled now.
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
    /// Return jobs created strictly before this job (keyset pagination, newest first).
    pub before: Option<String>,
    pub limit: usize,
}

/// Why the store could not answer. Implementations convert their driver's errors into
/// [`StoreError::Database`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database: {0}")]
    Database(Box<dyn std::error::Error + Send + Sync>),
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

    /// Takes the oldest queued job and marks it running, in one step: a job is claimed by
    /// one caller only.
    fn claim_next(&self) -> Result<Option<JobRecord>, StoreError>;

    /// Jobs found `running` when the server starts: a crash or a kill stopped them.
    fn interrupted(&self) -> Result<Vec<JobRecord>, StoreError>;

    fn set_report(&self, id: &str, report: &DataReport) -> Result<(), StoreError>;

    /// Records a finished epoch (replacing one of the same number: a resumed job recomputes
    /// the epochs after its checkpoint). Returns whether a cancel has been requested, which
    /// is how a job learns of a cancel that reached another process.
    fn record_epoch(&self, id: &str, event: &EpochEvent) -> Result<bool, StoreError>;

    /// Forgets the epochs after `epoch` (they will be recomputed on resume).
    fn truncate_history(&self, id: &str, epoch: u32) -> Result<(), StoreError>;

    /// Cancels a queued job at once, or asks a running one to stop.
    fn request_cancel(&self, id: &str) -> Result<CancelOutcome, StoreError>;

    /// Moves a running job to its final state; `false` if it was not running.
    fn finish(&self, id: &str, end: &JobEnd) -> Result<bool, StoreError>;

    /// Puts a running job back in the queue (it resumes from its checkpoint); `false` if it
    /// was not running.
    fn requeue(&self, id: &str) -> Result<bool, StoreError>;
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
