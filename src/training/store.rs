//! `JobStore`: training jobs as rows of an embedded SQLite database (`<data>/kiln.db`), so a
//! restarted server shows every job it ever accepted. Short transactions only; callers on
//! the async runtime wrap calls in `spawn_blocking` when they may wait on the disk.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A job's lifecycle: queued → running → succeeded | failed | cancelled.
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
    pub model: String,
    pub state: JobState,
    /// The job spec with its defaults filled in.
    pub spec: Value,
    /// The latest progress (the last epoch event).
    pub progress: Option<Value>,
    pub report: Option<Value>,
    pub metrics: Option<Value>,
    pub version: Option<u64>,
    pub error: Option<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Epochs completed and checkpointed (resume starts after it).
    pub checkpoint_epoch: Option<u32>,
    pub cancel_requested: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("job database: corrupt JSON in a job row: {0}")]
    Json(#[from] serde_json::Error),
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

pub struct JobStore {
    /// One connection: SQLite serializes writers anyway, and every use is a short statement.
    conn: Mutex<Connection>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
    cancel_requested INTEGER NOT NULL DEFAULT 0
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

const COLUMNS: &str = "id, model, state, spec, progress, report, metrics, version, error, created_ms, started_ms, finished_ms, checkpoint_epoch, cancel_requested";

fn json_opt(v: Option<String>) -> Result<Option<Value>, serde_json::Error> {
    v.map(|s| serde_json::from_str(&s)).transpose()
}

fn row_to_record(
    row: &rusqlite::Row,
) -> rusqlite::Result<(JobRecord, [Option<String>; 3], String, String)> {
    let state: String = row.get(2)?;
    let spec: String = row.get(3)?;
    let rec = JobRecord {
        id: row.get(0)?,
        model: row.get(1)?,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        spec: Value::Null,
        progress: None,
        report: None,
        metrics: None,
        version: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        error: row.get(8)?,
        created_ms: row.get(9)?,
        started_ms: row.get(10)?,
        finished_ms: row.get(11)?,
        checkpoint_epoch: row.get::<_, Option<i64>>(12)?.map(|v| v as u32),
        cancel_requested: row.get::<_, i64>(13)? != 0,
    };
    Ok((rec, [row.get(4)?, row.get(5)?, row.get(6)?], spec, state))
}

impl JobStore {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<JobStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(JobStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .expect("no panic while holding the job database")
    }

    pub fn insert(&self, id: &str, model: &str, spec: &Value) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO jobs (id, model, state, spec, created_ms) VALUES (?1, ?2, 'queued', ?3, ?4)",
            params![id, model, spec.to_string(), now_ms()],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                row_to_record,
            )
            .optional()?;
        found.map(finish_record).transpose()
    }

    pub fn list(&self, f: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let before_seq: Option<i64> = match &f.before {
            Some(id) => conn
                .query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .optional()?,
            None => None,
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR model = ?2) \
             AND (?3 IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![
                f.state.map(JobState::as_str),
                f.model,
                before_seq,
                f.limit as i64
            ],
            row_to_record,
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(finish_record(r?)?);
        }
        Ok(out)
    }

    /// Jobs to run: queued ones, oldest first.
    pub fn queued(&self) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY seq"
        ))?;
        let rows = stmt.query_map([], row_to_record)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(finish_record(r?)?);
        }
        Ok(out)
    }

    /// Jobs left `running` by a crash.
    pub fn interrupted(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.list(&JobFilter {
            state: Some(JobState::Running),
            limit: usize::MAX >> 2,
            ..Default::default()
        })
    }

    pub fn set_running(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET state = 'running', started_ms = COALESCE(started_ms, ?2) WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Puts an interrupted job back in the queue (it resumes from its checkpoint).
    pub fn requeue(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE jobs SET state = 'queued' WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn set_report(&self, id: &str, report: &Value) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET report = ?2 WHERE id = ?1",
            params![id, report.to_string()],
        )?;
        Ok(())
    }

    /// Records a finished epoch and its checkpoint, in one transaction.
    pub fn record_epoch(
        &self,
        id: &str,
        epoch: u32,
        event: &Value,
        checkpointed: bool,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO job_epochs (job_id, epoch, event) VALUES (?1, ?2, ?3)",
            params![id, epoch, event.to_string()],
        )?;
        tx.execute(
            "UPDATE jobs SET progress = ?2, checkpoint_epoch = CASE WHEN ?3 THEN ?4 ELSE checkpoint_epoch END WHERE id = ?1",
            params![id, event.to_string(), checkpointed, epoch],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs per state.
    pub fn count_by_state(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
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

    /// Notes that the checkpoint of `epoch` is on disk.
    pub fn mark_checkpoint(&self, id: &str, epoch: u32) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE jobs SET checkpoint_epoch = ?2 WHERE id = ?1",
            params![id, epoch],
        )?;
        Ok(())
    }

    /// The metric history: one event per epoch, in order (only up to the checkpoint after a
    /// resume, since later epochs are recomputed).
    pub fn history(&self, id: &str) -> Result<Vec<Value>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT event FROM job_epochs WHERE job_id = ?1 ORDER BY epoch")?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    /// Forgets epochs after `epoch` (they will be recomputed on resume).
    pub fn truncate_history(&self, id: &str, epoch: u32) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM job_epochs WHERE job_id = ?1 AND epoch > ?2",
            params![id, epoch],
        )?;
        Ok(())
    }

    pub fn request_cancel(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Moves a job to a final state.
    pub fn finish(
        &self,
        id: &str,
        state: JobState,
        version: Option<u64>,
        metrics: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        debug_assert!(state.is_final());
        self.conn().execute(
            "UPDATE jobs SET state = ?2, version = ?3, metrics = ?4, error = ?5, finished_ms = ?6 WHERE id = ?1",
            params![id, state.as_str(), version.map(|v| v as i64), metrics.map(Value::to_string), error, now_ms()],
        )?;
        Ok(())
    }
}

fn finish_record(
    (mut rec, [progress, report, metrics], spec, _): (
        JobRecord,
        [Option<String>; 3],
        String,
        String,
    ),
) -> Result<JobRecord, StoreError> {
    rec.spec = serde_json::from_str(&spec)?;
    rec.progress = json_opt(progress)?;
    rec.report = json_opt(report)?;
    rec.metrics = json_opt(metrics)?;
    Ok(rec)
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
    fn lifecycle_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        {
            let s = JobStore::open(&path).unwrap();
            s.insert("job_a", "iris", &serde_json::json!({"model": "iris"}))
                .unwrap();
            s.insert("job_b", "wine", &serde_json::json!({"model": "wine"}))
                .unwrap();
            s.set_running("job_a").unwrap();
            s.record_epoch(
                "job_a",
                1,
                &serde_json::json!({"epoch": 1, "loss": 0.5}),
                true,
            )
            .unwrap();
            s.record_epoch(
                "job_a",
                2,
                &serde_json::json!({"epoch": 2, "loss": 0.4}),
                false,
            )
            .unwrap();
        }
        let s = JobStore::open(&path).unwrap();
        let interrupted = s.interrupted().unwrap();
        assert_eq!(interrupted.len(), 1);
        let a = &interrupted[0];
        assert_eq!((a.id.as_str(), a.checkpoint_epoch), ("job_a", Some(1)));
        assert_eq!(a.progress.as_ref().unwrap()["epoch"], 2);
        s.truncate_history("job_a", 1).unwrap();
        assert_eq!(s.history("job_a").unwrap().len(), 1);
        s.requeue("job_a").unwrap();
        assert_eq!(
            s.queued()
                .unwrap()
                .iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>(),
            ["job_a", "job_b"]
        );
        s.finish(
            "job_a",
            JobState::Succeeded,
            Some(3),
            Some(&serde_json::json!({"accuracy": 1.0})),
            None,
        )
        .unwrap();
        let a = s.get("job_a").unwrap().unwrap();
        assert_eq!((a.state, a.version), (JobState::Succeeded, Some(3)));
        assert!(a.finished_ms.is_some());
        // Filters and keyset pagination (newest first).
        let all = s
            .list(&JobFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            all.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["job_b", "job_a"]
        );
        let page2 = s
            .list(&JobFilter {
                limit: 10,
                before: Some("job_b".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page2.len(), 1);
        let wine = s
            .list(&JobFilter {
                limit: 10,
                model: Some("wine".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(wine.len(), 1);
        let done = s
            .list(&JobFilter {
                limit: 10,
                state: Some(JobState::Succeeded),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(done[0].id, "job_a");
        assert!(s.get("job_zzz").unwrap().is_none());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_940_000_123), "2026-11-29T08:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
