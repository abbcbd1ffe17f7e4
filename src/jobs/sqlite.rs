//! [`SqliteJobStore`]: the [`JobStore`] in an embedded SQLite database (`<data>/kiln.db`),
//! so a restarted server shows every job it ever accepted, with nothing to install. One
//! process owns the file. Short statements only, behind one connection.
//!
//! Records are JSON in their TEXT columns (spec, report, metrics, each epoch event) and
//! typed everywhere else. A job's progress is the last row of its history, read with the
//! job, so it cannot disagree with the history after a resume truncates it.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::store::{
    json_column, now_ms, to_json, CancelOutcome, JobEnd, JobFilter, JobRecord, JobState, JobStore,
    NewChild, ParentFilter, RawRecord, StoreError,
};
use crate::preprocess::DataReport;
use crate::training::spec::ResolvedSpec;
use crate::training::trainer::EpochEvent;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(Box::new(e))
    }
}

pub struct SqliteJobStore {
    /// One connection: SQLite serializes writers anyway, and every use is a short statement.
    conn: Mutex<Connection>,
    /// Written on the jobs this process claims (`--replica-id`).
    replica: Option<String>,
}

// `progress` and `checkpoint_epoch` are no longer written (the history and the checkpoint
// files say both); they stay in the table so a database can move between kiln versions.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    progress TEXT,
    report TEXT,
    metrics TEXT,
    version INTEGER,
    error TEXT,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    checkpoint_epoch INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    replica TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs(model);
CREATE TABLE IF NOT EXISTS job_epochs (
    job_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (job_id, epoch)
);
";

/// The schema's versions after the first (`SCHEMA`, with `replica`), in order; the database
/// keeps its version in `PRAGMA user_version`. A version once released never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    2,
    "search trials as child jobs",
    "
ALTER TABLE jobs ADD COLUMN parent TEXT;
ALTER TABLE jobs ADD COLUMN trial INTEGER;
ALTER TABLE jobs ADD COLUMN deadline_ms INTEGER;
ALTER TABLE jobs ADD COLUMN trial_result TEXT;
CREATE INDEX jobs_parent ON jobs(parent, trial) WHERE parent IS NOT NULL;
",
)];

/// A job row with its last epoch event, in the order [`read_row`] reads them.
const SELECT: &str = "SELECT j.id, j.state, j.spec, \
     (SELECT e.event FROM job_epochs e WHERE e.job_id = j.id ORDER BY e.epoch DESC LIMIT 1), \
     j.report, j.metrics, j.version, j.error, j.created_ms, j.started_ms, j.finished_ms, \
     j.cancel_requested, j.replica, j.parent, j.trial, j.deadline_ms, j.trial_result FROM jobs j";

/// Jobs that are not final (children a waiting search job waits for).
const NOT_FINAL: &str = "('queued', 'running', 'waiting')";

fn read_row(r: &rusqlite::Row) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: r.get(0)?,
        state: r.get(1)?,
        spec: r.get(2)?,
        progress: r.get(3)?,
        report: r.get(4)?,
        metrics: r.get(5)?,
        version: r.get(6)?,
        error: r.get(7)?,
        created_ms: r.get(8)?,
        started_ms: r.get(9)?,
        finished_ms: r.get(10)?,
        cancel_requested: r.get::<_, i64>(11)? != 0,
        replica: r.get(12)?,
        parent: r.get(13)?,
        trial: r.get(14)?,
        deadline_ms: r.get(15)?,
        trial_result: r.get(16)?,
    })
}

fn select_one(conn: &Connection, id: &str) -> Result<Option<JobRecord>, StoreError> {
    conn.query_row(&format!("{SELECT} WHERE j.id = ?1"), [id], read_row)
        .optional()?
        .map(RawRecord::decode)
        .transpose()
}

/// Creates or upgrades the schema, in one transaction: version 1 is `SCHEMA` (a database
/// from before `replica` existed gains the column, NULL in old rows), then [`MIGRATIONS`].
/// A database newer than this binary is refused.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.last().map_or(1, |m| m.0);
    if current > latest {
        return Err(StoreError::Database(
            format!(
                "the job database schema is at version {current}, newer than this kiln knows \
                 ({latest}): run a newer kiln"
            )
            .into(),
        ));
    }
    if current < 1 {
        tx.execute_batch(SCHEMA)?;
        let has_replica = tx
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'replica'")?
            .exists([])?;
        if !has_replica {
            tx.execute_batch("ALTER TABLE jobs ADD COLUMN replica TEXT")?;
        }
    }
    for &(version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql)?;
        tracing::info!(version, description, "job database migrated");
    }
    if current < latest {
        tx.pragma_update(None, "user_version", latest)?;
    }
    tx.commit()?;
    Ok(())
}

// === impl SqliteJobStore ===

impl SqliteJobStore {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<SqliteJobStore, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(SqliteJobStore {
            conn: Mutex::new(conn),
            replica: None,
        })
    }

    /// Records `replica` on the jobs this process claims.
    pub fn with_replica(mut self, replica: impl Into<String>) -> SqliteJobStore {
        self.replica = Some(replica.into());
        self
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .expect("no panic while holding the job database")
    }
}

impl JobStore for SqliteJobStore {
    fn insert(&self, id: &str, spec: &ResolvedSpec) -> Result<JobRecord, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO jobs (id, model, state, spec, created_ms) VALUES (?1, ?2, 'queued', ?3, ?4)",
            params![id, spec.spec.model, to_json(spec), now_ms()],
        )?;
        select_one(&conn, id)?.ok_or_else(|| {
            StoreError::Database(format!("job '{id}' is missing right after its insert").into())
        })
    }

    fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        select_one(&self.conn(), id)
    }

    fn list(&self, f: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let before_seq: Option<i64> = match &f.before {
            Some(id) => conn
                .query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .optional()?,
            None => None,
        };
        let mut stmt = conn.prepare(&format!(
            "{SELECT} WHERE (?1 IS NULL OR j.state = ?1) AND (?2 IS NULL OR j.model = ?2) \
             AND (?3 IS NULL OR j.seq < ?3) AND (?5 = 0 OR j.parent IS NULL) \
             AND (?6 IS NULL OR j.parent = ?6) ORDER BY j.seq DESC LIMIT ?4"
        ))?;
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        let (top, parent) = match &f.parent {
            ParentFilter::Any => (false, None),
            ParentFilter::TopLevel => (true, None),
            ParentFilter::Of(p) => (false, Some(p.as_str())),
        };
        let rows = stmt.query_map(
            params![
                f.state.map(JobState::as_str),
                f.model,
                before_seq,
                limit,
                top,
                parent
            ],
            read_row,
        )?;
        rows.map(|r| r?.decode()).collect()
    }

    fn history(&self, id: &str) -> Result<Vec<EpochEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT event FROM job_epochs WHERE job_id = ?1 ORDER BY epoch")?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0))?;
        rows.map(|r| json_column(id, "epoch event", &r?)).collect()
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (s, n) = r?;
            if let Some(state) = JobState::parse(&s) {
                out.push((state, n));
            }
        }
        Ok(out)
    }

    fn claim_next(&self) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT id FROM jobs j WHERE state = 'queued' OR (state = 'waiting' \
                     AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent = j.id \
                     AND c.state IN {NOT_FINAL})) ORDER BY seq LIMIT 1"
                ),
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = 'running', started_ms = COALESCE(started_ms, ?2), \
             replica = ?3 WHERE id = ?1 AND state IN ('queued', 'waiting')",
            params![id, now_ms(), self.replica],
        )?;
        let record = select_one(&tx, &id)?;
        tx.commit()?;
        Ok(record)
    }

    fn spawn_children(&self, parent: &str, children: &[NewChild]) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx.execute(
            "UPDATE jobs SET state = 'waiting' WHERE id = ?1 AND state = 'running' \
             AND cancel_requested = 0",
            [parent],
        )? != 1
        {
            return Ok(false);
        }
        let now = now_ms();
        for c in children {
            tx.execute(
                "INSERT INTO jobs (id, model, state, spec, created_ms, parent, trial, deadline_ms) \
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
                params![
                    c.id,
                    c.spec.spec.model,
                    to_json(&c.spec),
                    now,
                    parent,
                    c.trial,
                    c.deadline_ms
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn children(&self, parent: &str) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT} WHERE j.parent = ?1 ORDER BY j.trial"))?;
        let rows = stmt.query_map([parent], read_row)?;
        rows.map(|r| r?.decode()).collect()
    }

    fn interrupted(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.list(&JobFilter {
            state: Some(JobState::Running),
            limit: usize::MAX,
            ..Default::default()
        })
    }

    fn set_report(&self, id: &str, report: &DataReport) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET report = ?2 WHERE id = ?1",
            params![id, to_json(report)],
        )?;
        Ok(())
    }

    fn record_epoch(&self, id: &str, event: &EpochEvent) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR REPLACE INTO job_epochs (job_id, epoch, event) VALUES (?1, ?2, ?3)",
            params![id, event.epoch, to_json(event)],
        )?;
        let cancel: Option<i64> = conn
            .query_row(
                "SELECT cancel_requested FROM jobs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(cancel.is_some_and(|c| c != 0))
    }

    fn truncate_history(&self, id: &str, epoch: u32) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM job_epochs WHERE job_id = ?1 AND epoch > ?2",
            params![id, epoch],
        )?;
        Ok(())
    }

    fn request_cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = if tx.execute(
            "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_ms = ?2 \
             WHERE id = ?1 AND state IN ('queued', 'waiting')",
            params![id, now_ms()],
        )? == 1
        {
            CancelOutcome::Cancelled
        } else if tx.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running'",
            [id],
        )? == 1
        {
            CancelOutcome::Requested
        } else {
            let state: Option<String> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            match state {
                None => CancelOutcome::NotFound,
                Some(s) => {
                    CancelOutcome::AlreadyFinal(JobState::parse(&s).unwrap_or(JobState::Failed))
                }
            }
        };
        if matches!(outcome, CancelOutcome::Cancelled | CancelOutcome::Requested) {
            tx.execute(
                "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_ms = ?2 \
                 WHERE parent = ?1 AND state = 'queued'",
                params![id, now_ms()],
            )?;
            tx.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE parent = ?1 AND state = 'running'",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(outcome)
    }

    fn finish(&self, id: &str, end: &JobEnd) -> Result<bool, StoreError> {
        let (version, metrics, error, result) = end.columns();
        let changed = self.conn().execute(
            "UPDATE jobs SET state = ?2, version = ?3, metrics = ?4, error = ?5, finished_ms = ?6, \
             trial_result = ?7 WHERE id = ?1 AND state = 'running'",
            params![id, end.state().as_str(), version, metrics, error, now_ms(), result],
        )?;
        Ok(changed == 1)
    }

    fn requeue(&self, id: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET state = 'queued' WHERE id = ?1 AND state = 'running'",
            [id],
        )?;
        Ok(changed == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::format::Metrics;
    use crate::training::prepare::prepare;
    use crate::training::spec::JobSpec;

    fn iris() -> crate::dataset::Table {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/iris.csv");
        crate::dataset::read_table(Path::new(path), None, None).unwrap()
    }

    fn spec(model: &str) -> ResolvedSpec {
        let body = format!(
            r#"{{"model": "{model}", "dataset": "ds_0123456789abcdef", "target": "species",
                "training": {{"epochs": 7, "optimizer": {{"type": "adam", "learning_rate": 0.01}}}}}}"#
        );
        JobSpec::from_json(body.as_bytes())
            .unwrap()
            .resolve(&iris())
            .unwrap()
    }

    fn epoch(n: u32) -> EpochEvent {
        EpochEvent {
            epoch: n,
            epochs: 7,
            loss: 1.0 / f64::from(n),
            val_loss: Some(0.5),
            metrics: BTreeMap::from([
                ("accuracy".to_owned(), 0.75),
                // Not a number: JSON writes null; it must read back.
                ("val_accuracy".to_owned(), f64::NAN),
            ]),
            learning_rate: 0.01,
            samples_per_sec: 1000.0,
            epoch_seconds: 0.1,
            eta_seconds: 0.6,
            trial: None,
            stage: None,
            stage_epoch: None,
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    fn ids(jobs: &[JobRecord]) -> Vec<&str> {
        jobs.iter().map(|j| j.id.as_str()).collect()
    }

    /// Spec, report, epochs and metrics go through their TEXT columns and come back as the
    /// same typed values, across a reopening of the file.
    #[test]
    fn typed_records_round_trip_through_sql() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let table = iris();
        let resolved = spec("iris");
        let report = prepare(&table, &resolved, None).unwrap().report;
        let metrics = Metrics {
            accuracy: Some(0.9),
            confusion_matrix: Some(vec![vec![10, 0], vec![1, 9]]),
            ..Metrics::default()
        };
        {
            let s = SqliteJobStore::open(&path).unwrap();
            let inserted = s.insert("job_a", &resolved).unwrap();
            assert_eq!(inserted.state, JobState::Queued);
            assert_eq!(inserted.model(), "iris");
            assert!(inserted.progress.is_none() && inserted.report.is_none());
            assert_eq!(s.claim_next().unwrap().unwrap().id, "job_a");
            s.set_report("job_a", &report).unwrap();
            assert!(!s.record_epoch("job_a", &epoch(1)).unwrap());
            assert!(!s.record_epoch("job_a", &epoch(2)).unwrap());
            assert!(s
                .finish(
                    "job_a",
                    &JobEnd::Succeeded {
                        version: 3,
                        metrics: metrics.clone()
                    }
                )
                .unwrap());
        }
        let s = SqliteJobStore::open(&path).unwrap();
        let r = s.get("job_a").unwrap().unwrap();
        assert_eq!(json(&r.spec), json(&resolved));
        assert_eq!(r.spec.labels, ["setosa", "versicolor", "virginica"]);
        // serde_json (without its `float_roundtrip` feature) may read a 17-digit number one
        // unit in the last place off what it wrote; the store adds nothing to that.
        let reread: DataReport = serde_json::from_str(&to_json(&report)).unwrap();
        assert_eq!(r.report.as_ref(), Some(&reread));
        assert_eq!(r.metrics.as_ref(), Some(&metrics));
        assert_eq!((r.state, r.version), (JobState::Succeeded, Some(3)));
        assert!(r.started_ms.is_some() && r.finished_ms.is_some());
        // Progress is the last epoch of the history.
        let last = r.progress.unwrap();
        assert_eq!(last.epoch, 2);
        assert!(last.metrics["val_accuracy"].is_nan());
        let history = s.history("job_a").unwrap();
        assert_eq!(history.iter().map(|e| e.epoch).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(json(&history[0]), json(&epoch(1)));
    }

    /// A row the code cannot read is an error naming the job and the column, not a panic
    /// or a silently empty field.
    #[test]
    fn an_unreadable_column_names_the_job_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteJobStore::open(&dir.path().join("kiln.db")).unwrap();
        s.insert("job_a", &spec("iris")).unwrap();
        s.conn()
            .execute("UPDATE jobs SET report = '{\"rows\": \"many\"}'", [])
            .unwrap();
        let err = s.get("job_a").unwrap_err().to_string();
        assert!(err.contains("job_a") && err.contains("report"), "{err}");
    }

    #[test]
    fn transitions_are_conditional_and_a_job_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        let s = SqliteJobStore::open(&path).unwrap();
        for (id, model) in [("job_a", "iris"), ("job_b", "wine"), ("job_c", "iris")] {
            s.insert(id, &spec(model)).unwrap();
        }
        // Oldest first, each once.
        let a = s.claim_next().unwrap().unwrap();
        assert_eq!((a.id.as_str(), a.state), ("job_a", JobState::Running));
        // Cancel: a queued job ends at once, a running one is asked, a final one says so.
        assert_eq!(s.request_cancel("job_b").unwrap(), CancelOutcome::Cancelled);
        assert_eq!(s.get("job_b").unwrap().unwrap().state, JobState::Cancelled);
        assert!(
            !s.requeue("job_b").unwrap(),
            "a cancelled job went back to the queue"
        );
        assert_eq!(s.request_cancel("job_a").unwrap(), CancelOutcome::Requested);
        assert!(s.get("job_a").unwrap().unwrap().cancel_requested);
        // The running job reads the request with its next epoch.
        assert!(s.record_epoch("job_a", &epoch(1)).unwrap());
        assert_eq!(
            s.request_cancel("job_b").unwrap(),
            CancelOutcome::AlreadyFinal(JobState::Cancelled)
        );
        assert_eq!(
            s.request_cancel("job_0000000000000000").unwrap(),
            CancelOutcome::NotFound
        );
        let c = s.claim_next().unwrap().unwrap();
        assert_eq!(c.id, "job_c");
        assert!(s.claim_next().unwrap().is_none(), "a job was claimed twice");
        // Only a running job finishes or goes back to the queue.
        assert!(s.finish("job_a", &JobEnd::Cancelled).unwrap());
        assert!(!s.finish("job_a", &JobEnd::Failed("again".into())).unwrap());
        assert_eq!(s.get("job_a").unwrap().unwrap().state, JobState::Cancelled);
        assert!(!s.finish("job_b", &JobEnd::Cancelled).unwrap());
        drop(s);

        // job_c was running when the process stopped: found again, resumed after its
        // checkpoint's epoch with the later history forgotten.
        let s = SqliteJobStore::open(&path).unwrap();
        let interrupted = s.interrupted().unwrap();
        assert_eq!(ids(&interrupted), ["job_c"]);
        for n in 1..=3 {
            s.record_epoch("job_c", &epoch(n)).unwrap();
        }
        s.truncate_history("job_c", 1).unwrap();
        assert_eq!(s.history("job_c").unwrap().len(), 1);
        assert_eq!(s.get("job_c").unwrap().unwrap().progress.unwrap().epoch, 1);
        assert!(s.requeue("job_c").unwrap());
        assert!(!s.requeue("job_c").unwrap());
        assert_eq!(s.claim_next().unwrap().unwrap().id, "job_c");
        assert!(s
            .finish("job_c", &JobEnd::Failed("diverged".into()))
            .unwrap());
        let c = s.get("job_c").unwrap().unwrap();
        assert_eq!(
            (c.state, c.error.as_deref()),
            (JobState::Failed, Some("diverged"))
        );

        let mut counts = s.count_by_state().unwrap();
        counts.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(counts, [(JobState::Cancelled, 2), (JobState::Failed, 1)]);
    }

    /// A database written before jobs recorded their replica opens, keeps its jobs, and
    /// records the replica from then on.
    #[test]
    fn a_database_from_before_replicas_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        {
            let conn = Connection::open(&path).unwrap();
            let before = SCHEMA.replace(",\n    replica TEXT", "");
            assert!(!before.contains("replica"));
            conn.execute_batch(&before).unwrap();
            conn.execute(
                "INSERT INTO jobs (id, model, state, spec, created_ms) VALUES ('job_old', 'iris', 'queued', ?1, 1)",
                [to_json(&spec("iris"))],
            )
            .unwrap();
        }
        let s = SqliteJobStore::open(&path).unwrap().with_replica("r1");
        let old = s.get("job_old").unwrap().unwrap();
        assert_eq!((old.state, old.replica), (JobState::Queued, None));
        assert_eq!(
            s.claim_next().unwrap().unwrap().replica.as_deref(),
            Some("r1")
        );
        drop(s);
        // Opening again does not add it twice.
        SqliteJobStore::open(&path).unwrap();
    }

    /// A database of schema version 1 (jobs without parents) is migrated once, keeping its
    /// jobs; one newer than this binary is refused, saying so.
    #[test]
    fn versioned_migrations_upgrade_once_and_refuse_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO jobs (id, model, state, spec, created_ms) VALUES ('job_old', 'iris', 'queued', ?1, 1)",
                [to_json(&spec("iris"))],
            )
            .unwrap();
        }
        let s = SqliteJobStore::open(&path).unwrap();
        let old = s.get("job_old").unwrap().unwrap();
        assert_eq!((old.parent, old.trial), (None, None));
        assert!(s.children("job_old").unwrap().is_empty());
        drop(s);
        let version = |p: &Path| -> i32 {
            Connection::open(p)
                .unwrap()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(version(&path), 2);
        SqliteJobStore::open(&path).unwrap();
        assert_eq!(version(&path), 2);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 3)
            .unwrap();
        let err = SqliteJobStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("version 3") && err.contains("newer"), "{err}");
    }

    #[test]
    fn lists_filter_and_page_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteJobStore::open(&dir.path().join("kiln.db")).unwrap();
        for (id, model) in [("job_a", "iris"), ("job_b", "wine"), ("job_c", "iris")] {
            s.insert(id, &spec(model)).unwrap();
        }
        s.claim_next().unwrap();
        let list = |f: JobFilter| s.list(&f).unwrap();
        let page = |limit, before: Option<&str>| {
            list(JobFilter {
                limit,
                before: before.map(str::to_owned),
                ..Default::default()
            })
        };
        assert_eq!(ids(&page(10, None)), ["job_c", "job_b", "job_a"]);
        assert_eq!(ids(&page(2, None)), ["job_c", "job_b"]);
        assert_eq!(ids(&page(2, Some("job_b"))), ["job_a"]);
        let iris = list(JobFilter {
            model: Some("iris".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ids(&iris), ["job_c", "job_a"]);
        let running = list(JobFilter {
            state: Some(JobState::Running),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(ids(&running), ["job_a"]);
        assert!(s.get("job_zzz").unwrap().is_none());
    }
}
