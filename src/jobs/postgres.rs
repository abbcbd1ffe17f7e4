//! [`PgJobStore`]: the [`JobStore`] in PostgreSQL (`--database postgres://…`), shared by
//! every replica of a fleet. The same rows as the SQLite store (JSON in TEXT columns, the
//! epoch history in `job_epochs`), plus who holds a running job and until when:
//!
//! - **Claim**: the oldest job that is queued, or running under a lease that ran out, is
//!   taken with `FOR UPDATE SKIP LOCKED` — replicas claiming at once each get a different
//!   job, and none waits on another's lock.
//! - **Lease**: a claim writes `replica` and `lease_until` (the database's clock, so the
//!   replicas' clocks do not matter). The running replica renews it with every epoch and
//!   with a heartbeat (a third of the lease). A replica that dies stops renewing; once the
//!   lease has run out another replica claims the job and resumes it from its checkpoint.
//! - **Fencing**: recording an epoch, finishing and requeueing check that this replica still
//!   holds the job, so a replica that lost its lease (a long pause, a partition) cannot add
//!   to the history of a job that now runs elsewhere.
//! - **Migrations**: versioned (`kiln_schema_migrations`), run at connect inside one
//!   transaction that first takes an advisory lock: replicas starting at once apply them one
//!   after the other, the later ones finding nothing to do.
//!
//! Cancel, status, list and the event stream read and write these rows, so they work through
//! any replica; the event stream of a job running elsewhere follows its history rows.
//!
//! The trait is synchronous and called from blocking threads (see [`super::store`]); each
//! call runs the async driver on the server's runtime (`Handle::block_on`) with a deadline,
//! so a database that stops answering fails the call with [`StoreError::Unavailable`]
//! instead of hanging a job thread or a request.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::store::{
    now_ms, to_json, CancelOutcome, Heartbeat, JobEnd, JobFilter, JobRecord, JobState, JobStore,
    NewChild, ParentFilter, RawRecord, StoreError,
};
use crate::preprocess::DataReport;
use crate::remote::pg::{self, PgError};
use crate::training::spec::ResolvedSpec;
use crate::training::trainer::EpochEvent;

/// How long a claim holds a job without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The longest one store call may take (waiting for a connection included).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_SIZE: usize = 8;
/// The advisory lock that serializes migrations ("kilnjobs" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e_6a6f_6273;

/// The job tables' schema, migrated at startup (`remote::pg::migrate`).
const SCHEMA: pg::Schema = pg::Schema {
    table: "kiln_schema_migrations",
    lock: MIGRATION_LOCK,
    migrations: MIGRATIONS,
    what: "job database",
};

/// The schema, one entry per version; a version once released never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "jobs, their epoch history and leases",
        "
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    report TEXT,
    metrics TEXT,
    version BIGINT,
    error TEXT,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    replica TEXT,
    lease_until TIMESTAMPTZ
);
CREATE INDEX jobs_claimable ON jobs (seq) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE INDEX jobs_model ON jobs (model, seq);
CREATE TABLE job_epochs (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (job_id, epoch)
);
",
    ),
    (
        2,
        "search trials as child jobs",
        "
ALTER TABLE jobs
    ADD COLUMN parent TEXT REFERENCES jobs (id) ON DELETE CASCADE,
    ADD COLUMN trial INTEGER,
    ADD COLUMN deadline_ms BIGINT,
    ADD COLUMN trial_result TEXT;
CREATE INDEX jobs_parent ON jobs (parent, trial) WHERE parent IS NOT NULL;
CREATE INDEX jobs_waiting ON jobs (seq) WHERE state = 'waiting';
",
    ),
];

/// A job row with its last epoch event, in the order [`read_row`] reads them.
const SELECT: &str = "SELECT j.id, j.state, j.spec, \
     (SELECT e.event FROM job_epochs e WHERE e.job_id = j.id ORDER BY e.epoch DESC LIMIT 1), \
     j.report, j.metrics, j.version, j.error, j.created_ms, j.started_ms, j.finished_ms, \
     j.cancel_requested, j.replica, j.parent, j.trial, j.deadline_ms, j.trial_result \
     FROM jobs j";

/// Jobs that are not final (children a waiting search job waits for).
const NOT_FINAL: &str = "('queued', 'running', 'waiting')";

fn read_row(r: &Row) -> Result<RawRecord, tokio_postgres::Error> {
    Ok(RawRecord {
        id: r.try_get(0)?,
        state: r.try_get(1)?,
        spec: r.try_get(2)?,
        progress: r.try_get(3)?,
        report: r.try_get(4)?,
        metrics: r.try_get(5)?,
        version: r.try_get(6)?,
        error: r.try_get(7)?,
        created_ms: r.try_get(8)?,
        started_ms: r.try_get(9)?,
        finished_ms: r.try_get(10)?,
        cancel_requested: r.try_get(11)?,
        replica: r.try_get(12)?,
        parent: r.try_get(13)?,
        trial: r.try_get::<_, Option<i32>>(14)?.map(i64::from),
        deadline_ms: r.try_get(15)?,
        trial_result: r.try_get(16)?,
    })
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        match e {
            PgError::Unavailable(m) => StoreError::Unavailable(m),
            PgError::Database(m) => StoreError::Database(m.into()),
        }
    }
}

/// The driver's error, as unavailable when the database could not be reached or went away.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    pg::pg_error(e).into()
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    pg::pool_error(e).into()
}

pub struct PgJobStore {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    /// Written on the jobs this replica claims; its leases are checked against it.
    replica: String,
    lease: Duration,
}

impl PgJobStore {
    /// Connects to `url` (`postgres://…`; TLS when it says `sslmode=require`), runs the
    /// schema migrations, and checks the database answers. Errors never hold the URL (it
    /// may hold a password): the caller names it, masked (`config::Database::shown`).
    /// `replica` is this process's `--replica-id`.
    pub async fn connect(url: &str, replica: &str) -> Result<PgJobStore, StoreError> {
        let pool = pg::pool(url, POOL_SIZE)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        pg::migrate(&mut client, &SCHEMA).await?;
        drop(client);
        Ok(PgJobStore {
            pool,
            runtime: tokio::runtime::Handle::current(),
            replica: replica.to_owned(),
            lease: DEFAULT_LEASE,
        })
    }

    /// How long a claim holds a job without renewal (tests shorten it).
    pub fn with_lease(mut self, lease: Duration) -> PgJobStore {
        self.lease = lease;
        self
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Runs `f` with a pooled connection on the runtime, from this blocking thread, within
    /// [`CALL_TIMEOUT`]. `block_in_place` makes a call from a runtime worker (the manager's
    /// recovery at startup) safe too; on a blocking or plain thread it does nothing.
    fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        tokio::task::block_in_place(|| self.block_on(f))
    }

    fn block_on<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.runtime.block_on(async {
            let work = async {
                let mut client = self.pool.get().await.map_err(pool_error)?;
                f(&mut client).await
            };
            tokio::time::timeout(CALL_TIMEOUT, work)
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "no answer within {} s",
                        CALL_TIMEOUT.as_secs()
                    ))
                })?
        })
    }

    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }
}

async fn select_one(
    client: &deadpool_postgres::Client,
    id: &str,
) -> Result<Option<JobRecord>, StoreError> {
    let row = client
        .query_opt(&format!("{SELECT} WHERE j.id = $1"), &[&id])
        .await
        .map_err(pg_error)?;
    row.map(|r| read_row(&r).map_err(pg_error)?.decode())
        .transpose()
}

impl JobStore for PgJobStore {
    fn insert(&self, id: &str, spec: &ResolvedSpec) -> Result<JobRecord, StoreError> {
        self.call(async |c| {
            c.execute(
                "INSERT INTO jobs (id, model, state, spec, created_ms) \
                 VALUES ($1, $2, 'queued', $3, $4)",
                &[&id, &spec.spec.model, &to_json(spec), &now_ms()],
            )
            .await
            .map_err(pg_error)?;
            select_one(c, id).await?.ok_or_else(|| {
                StoreError::Database(format!("job '{id}' is missing right after its insert").into())
            })
        })
    }

    fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.call(async |c| select_one(c, id).await)
    }

    fn list(&self, f: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.call(async |c| {
            let before_seq: Option<i64> = match &f.before {
                Some(id) => c
                    .query_opt("SELECT seq FROM jobs WHERE id = $1", &[id])
                    .await
                    .map_err(pg_error)?
                    .map(|r| r.get(0)),
                None => None,
            };
            let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
            let (top, parent) = match &f.parent {
                ParentFilter::Any => (false, None),
                ParentFilter::TopLevel => (true, None),
                ParentFilter::Of(p) => (false, Some(p.as_str())),
            };
            let rows = c
                .query(
                    &format!(
                        "{SELECT} WHERE ($1::text IS NULL OR j.state = $1) \
                         AND ($2::text IS NULL OR j.model = $2) \
                         AND ($3::bigint IS NULL OR j.seq < $3) \
                         AND (NOT $5 OR j.parent IS NULL) \
                         AND ($6::text IS NULL OR j.parent = $6) ORDER BY j.seq DESC LIMIT $4"
                    ),
                    &[
                        &f.state.map(JobState::as_str),
                        &f.model,
                        &before_seq,
                        &limit,
                        &top,
                        &parent,
                    ],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| read_row(r).map_err(pg_error)?.decode())
                .collect()
        })
    }

    fn history(&self, id: &str) -> Result<Vec<EpochEvent>, StoreError> {
        self.call(async |c| {
            let rows = c
                .query(
                    "SELECT event FROM job_epochs WHERE job_id = $1 ORDER BY epoch",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| super::store::json_column(id, "epoch event", r.get(0)))
                .collect()
        })
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        self.call(async |c| {
            let rows = c
                .query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[])
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .filter_map(|r| Some((JobState::parse(r.get(0))?, r.get::<_, i64>(1))))
                .collect())
        })
    }

    fn claim_next(&self) -> Result<Option<JobRecord>, StoreError> {
        self.call(async |c| {
            let claimed = c
                .query_opt(
                    &format!("UPDATE jobs j SET state = 'running', \
                        started_ms = COALESCE(j.started_ms, $2), replica = $1, \
                        lease_until = now() + make_interval(secs => $3) \
                     FROM (SELECT id, state, replica FROM jobs p \
                           WHERE state = 'queued' OR (state = 'running' AND lease_until < now()) \
                              OR (state = 'waiting' AND NOT EXISTS (SELECT 1 FROM jobs c \
                                  WHERE c.parent = p.id AND c.state IN {NOT_FINAL})) \
                           ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) next \
                     WHERE j.id = next.id RETURNING j.id, next.state, next.replica"),
                    &[&self.replica, &now_ms(), &self.lease_secs()],
                )
                .await
                .map_err(pg_error)?;
            let Some(row) = claimed else {
                return Ok(None);
            };
            let id: String = row.get(0);
            let previous: String = row.get(1);
            if previous == "running" {
                let from: Option<String> = row.get(2);
                tracing::warn!(job = %id, from = from.as_deref().unwrap_or("?"), "took over a job whose replica stopped renewing its lease");
            }
            select_one(c, &id).await
        })
    }

    fn spawn_children(&self, parent: &str, children: &[NewChild]) -> Result<bool, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let moved = tx
                .execute(
                    "UPDATE jobs SET state = 'waiting', lease_until = NULL \
                     WHERE id = $1 AND state = 'running' AND replica = $2 \
                     AND NOT cancel_requested",
                    &[&parent, &self.replica],
                )
                .await
                .map_err(pg_error)?;
            if moved != 1 {
                return Ok(false);
            }
            let now = now_ms();
            for child in children {
                let trial = i32::try_from(child.trial).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO jobs (id, model, state, spec, created_ms, parent, trial, deadline_ms) \
                     VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7)",
                    &[
                        &child.id,
                        &child.spec.spec.model,
                        &to_json(&child.spec),
                        &now,
                        &parent,
                        &trial,
                        &child.deadline_ms,
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(true)
        })
    }

    fn children(&self, parent: &str) -> Result<Vec<JobRecord>, StoreError> {
        self.call(async |c| {
            let rows = c
                .query(
                    &format!("{SELECT} WHERE j.parent = $1 ORDER BY j.trial"),
                    &[&parent],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| read_row(r).map_err(pg_error)?.decode())
                .collect()
        })
    }

    fn interrupted(&self) -> Result<Vec<JobRecord>, StoreError> {
        // Only this replica's own (a restart under the same --replica-id): another
        // replica's running jobs are its to finish, or to lose with their lease.
        self.call(async |c| {
            let rows = c
                .query(
                    &format!(
                        "{SELECT} WHERE j.state = 'running' AND j.replica = $1 ORDER BY j.seq DESC"
                    ),
                    &[&self.replica],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| read_row(r).map_err(pg_error)?.decode())
                .collect()
        })
    }

    fn set_report(&self, id: &str, report: &DataReport) -> Result<(), StoreError> {
        self.call(async |c| {
            c.execute(
                "UPDATE jobs SET report = $2 WHERE id = $1",
                &[&id, &to_json(report)],
            )
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn record_epoch(&self, id: &str, event: &EpochEvent) -> Result<bool, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            // Renews the lease and locks the row: a replica that lost the job writes nothing.
            let held = tx
                .query_opt(
                    "UPDATE jobs SET lease_until = now() + make_interval(secs => $3) \
                     WHERE id = $1 AND state = 'running' AND replica = $2 \
                     RETURNING cancel_requested",
                    &[&id, &self.replica, &self.lease_secs()],
                )
                .await
                .map_err(pg_error)?;
            let Some(held) = held else {
                return Err(StoreError::LeaseLost(id.to_owned()));
            };
            let epoch = i32::try_from(event.epoch).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO job_epochs (job_id, epoch, event) VALUES ($1, $2, $3) \
                 ON CONFLICT (job_id, epoch) DO UPDATE SET event = EXCLUDED.event",
                &[&id, &epoch, &to_json(event)],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(held.get(0))
        })
    }

    fn truncate_history(&self, id: &str, epoch: u32) -> Result<(), StoreError> {
        let epoch = i32::try_from(epoch).unwrap_or(i32::MAX);
        self.call(async |c| {
            c.execute(
                "DELETE FROM job_epochs WHERE job_id = $1 AND epoch > $2",
                &[&id, &epoch],
            )
            .await
            .map_err(pg_error)?;
            Ok(())
        })
    }

    fn request_cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let outcome = if tx
                .execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = TRUE, \
                     finished_ms = $2, lease_until = NULL \
                     WHERE id = $1 AND state IN ('queued', 'waiting')",
                    &[&id, &now_ms()],
                )
                .await
                .map_err(pg_error)?
                == 1
            {
                CancelOutcome::Cancelled
            } else if tx
                .execute(
                    "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND state = 'running'",
                    &[&id],
                )
                .await
                .map_err(pg_error)?
                == 1
            {
                CancelOutcome::Requested
            } else {
                let state = tx
                    .query_opt("SELECT state FROM jobs WHERE id = $1", &[&id])
                    .await
                    .map_err(pg_error)?;
                match state {
                    None => CancelOutcome::NotFound,
                    Some(r) => CancelOutcome::AlreadyFinal(
                        JobState::parse(r.get(0)).unwrap_or(JobState::Failed),
                    ),
                }
            };
            if matches!(outcome, CancelOutcome::Cancelled | CancelOutcome::Requested) {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = TRUE, \
                     finished_ms = $2, lease_until = NULL WHERE parent = $1 AND state = 'queued'",
                    &[&id, &now_ms()],
                )
                .await
                .map_err(pg_error)?;
                tx.execute(
                    "UPDATE jobs SET cancel_requested = TRUE WHERE parent = $1 AND state = 'running'",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(outcome)
        })
    }

    fn finish(&self, id: &str, end: &JobEnd) -> Result<bool, StoreError> {
        let (version, metrics, error, result) = end.columns();
        self.call(async |c| {
            let changed = c
                .execute(
                    "UPDATE jobs SET state = $3, version = $4, metrics = $5, error = $6, \
                     finished_ms = $7, lease_until = NULL, trial_result = $8 \
                     WHERE id = $1 AND state = 'running' AND replica = $2",
                    &[
                        &id,
                        &self.replica,
                        &end.state().as_str(),
                        &version,
                        &metrics,
                        &error,
                        &now_ms(),
                        &result,
                    ],
                )
                .await
                .map_err(pg_error)?;
            Ok(changed == 1)
        })
    }

    fn requeue(&self, id: &str) -> Result<bool, StoreError> {
        self.call(async |c| {
            let changed = c
                .execute(
                    "UPDATE jobs SET state = 'queued', lease_until = NULL \
                     WHERE id = $1 AND state = 'running' AND replica = $2",
                    &[&id, &self.replica],
                )
                .await
                .map_err(pg_error)?;
            Ok(changed == 1)
        })
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.lease / 3)
    }

    fn heartbeat(&self, running: &[String]) -> Result<Heartbeat, StoreError> {
        self.call(async |c| {
            // Also the readiness probe: it runs (and reaches the database) with no job here.
            let rows = c
                .query(
                    "UPDATE jobs SET lease_until = now() + make_interval(secs => $3) \
                     WHERE id = ANY($2) AND state = 'running' AND replica = $1 \
                     RETURNING id, cancel_requested",
                    &[&self.replica, &running, &self.lease_secs()],
                )
                .await
                .map_err(pg_error)?;
            let mut beat = Heartbeat::default();
            let held: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            for r in &rows {
                if r.get::<_, bool>(1) {
                    beat.cancel.push(r.get(0));
                }
            }
            beat.lost = running
                .iter()
                .filter(|id| !held.contains(id))
                .cloned()
                .collect();
            Ok(beat)
        })
    }
}
