//! The job system: training runs as server jobs — queued, run on job threads, checkpointed,
//! resumed after a restart, followed as events — on top of [`crate::training`], which does
//! one run.
//!
//! - [`JobManager`] (`manager`): accepts jobs, schedules them on a bounded pool of job
//!   threads (never the async runtime), streams their epochs, cancels and stops them.
//! - [`JobStore`] (`store`): the trait every state change goes through, the one source of
//!   truth about a job; [`SqliteJobStore`] (`sqlite`) keeps it in `<data>/kiln.db`,
//!   [`PgJobStore`] (`postgres`) in PostgreSQL for replicas sharing their jobs (leases).
//! - `checkpoint`: a job's resumable state on disk, replaced atomically after every epoch.
//!
//! What else holds a job lives only as long as its thread and decides nothing: the
//! manager's map of the jobs this process runs (their stop signals and event senders).

pub mod checkpoint;
pub mod error;
pub mod manager;
pub mod postgres;
pub mod sqlite;
pub mod store;

pub use error::JobError;
pub use manager::{JobDetails, JobEvent, JobManager, JobParts};
pub use postgres::PgJobStore;
pub use sqlite::SqliteJobStore;
pub use store::{Heartbeat, JobEnd, JobFilter, JobRecord, JobState, JobStore, StoreError};
