//! Datasets shared by replicas (`--object-store` with a `postgres://` database): the file in
//! object storage (`<prefix>/datasets/<id>/data`), the metadata and profile as a row of
//! `kiln_datasets`. The local datasets directory becomes this replica's cache: the same
//! layout, filled on first use.
//!
//! - **Upload**: the chunks go to the local file (under the byte limit, as before) and, as
//!   they arrive, to a multipart upload; at the end the file is parsed and profiled, the
//!   multipart upload completed, and the row inserted: the dataset exists from that insert
//!   on. A failure anywhere (the limit, a bad file, the store, the database) aborts the
//!   multipart upload or removes the object, so nothing half-written is ever visible.
//! - **Read** (a job, an evaluation, on any replica): the row, then the file from the cache,
//!   downloaded first when missing.
//! - **Delete**: the object first, then the row (a failure leaves the dataset whole and the
//!   DELETE can be retried), then the cached copy.
//!
//! [`DatasetStore`](super::DatasetStore)'s methods block; these calls run the async clients
//! on the server's runtime from the blocking thread they are called on.

use std::future::Future;
use std::path::Path;

use deadpool_postgres::Pool;

use super::store::DatasetInfo;
use super::DatasetError;
use crate::remote::objects::Multipart;
use crate::remote::pg::{self, PgError};
use crate::remote::{ObjectError, Objects};

/// The shared half of a dataset store.
#[derive(Clone)]
pub struct RemoteDatasets {
    objects: Objects,
    pool: Pool,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RemoteDatasets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteDatasets({})", self.objects.url())
    }
}

fn from_pg(e: PgError) -> DatasetError {
    match e {
        PgError::Unavailable(m) => DatasetError::Unavailable(format!("the dataset catalog: {m}")),
        PgError::Database(m) => DatasetError::Internal(format!("the dataset catalog: {m}")),
    }
}

fn from_objects(e: ObjectError) -> DatasetError {
    DatasetError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl RemoteDatasets {
    /// Must be called within the server's runtime.
    pub fn new(objects: Objects, pool: Pool) -> Self {
        RemoteDatasets {
            objects,
            pool,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Runs `f` on the runtime from this blocking thread (`block_in_place` makes a call
    /// from a runtime worker safe too).
    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }

    /// The object of a dataset: its file as uploaded, whatever its format.
    pub(super) fn key(id: &str) -> String {
        format!("datasets/{id}/data")
    }

    pub(super) fn begin(&self, id: &str) -> Result<RemoteUpload, DatasetError> {
        let key = Self::key(id);
        let upload = self
            .block(self.objects.multipart(&key))
            .map_err(from_objects)?;
        Ok(RemoteUpload {
            remote: self.clone(),
            key,
            upload: Some(upload),
        })
    }

    pub(super) fn get(&self, id: &str) -> Result<Option<DatasetInfo>, DatasetError> {
        let row = self
            .block(pg::with_client(&self.pool, async |c| {
                c.query_opt("SELECT info FROM kiln_datasets WHERE id = $1", &[&id])
                    .await
                    .map_err(pg::pg_error)
            }))
            .map_err(from_pg)?;
        row.map(|r| decode(&r.get::<_, String>(0))).transpose()
    }

    pub(super) fn list(&self) -> Result<Vec<DatasetInfo>, DatasetError> {
        let rows = self
            .block(pg::with_client(&self.pool, async |c| {
                c.query(
                    "SELECT info FROM kiln_datasets ORDER BY created_ms, id",
                    &[],
                )
                .await
                .map_err(pg::pg_error)
            }))
            .map_err(from_pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            match decode(&r.get::<_, String>(0)) {
                Ok(info) => out.push(info),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable dataset row"),
            }
        }
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    /// Inserts the row that makes an uploaded dataset exist.
    pub(super) fn commit(&self, info: &DatasetInfo) -> Result<(), DatasetError> {
        let json = serde_json::to_string(info)
            .map_err(|e| DatasetError::Internal(format!("serializing a dataset's row: {e}")))?;
        self.block(pg::with_client(&self.pool, async |c| {
            c.execute(
                "INSERT INTO kiln_datasets (id, info, created_ms) VALUES ($1, $2, $3)",
                &[&info.id, &json, &now_ms()],
            )
            .await
            .map(|_| ())
            .map_err(pg::pg_error)
        }))
        .map_err(from_pg)
    }

    /// Removes the object, then the row. `false` when there was no row.
    pub(super) fn delete(&self, id: &str) -> Result<bool, DatasetError> {
        self.block(self.objects.delete(&Self::key(id)))
            .map_err(from_objects)?;
        let n = self
            .block(pg::with_client(&self.pool, async |c| {
                c.execute("DELETE FROM kiln_datasets WHERE id = $1", &[&id])
                    .await
                    .map_err(pg::pg_error)
            }))
            .map_err(from_pg)?;
        Ok(n > 0)
    }

    /// Removes an object of an upload that did not become a dataset.
    pub(super) fn remove_object(&self, id: &str) {
        if let Err(e) = self.block(self.objects.delete(&Self::key(id))) {
            tracing::warn!(dataset = id, error = %e, "cannot remove the object of a failed upload");
        }
    }

    /// Downloads the dataset's file to `to` (through a temporary name beside it).
    pub(super) fn download(&self, id: &str, to: &Path) -> Result<(), DatasetError> {
        let bytes = self
            .block(self.objects.get(&Self::key(id)))
            .map_err(from_objects)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // A name of its own: two jobs of this replica may download the same dataset at once.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = to.with_extension(format!("download-{}-{n}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(DatasetError::io(&tmp))?;
        std::fs::rename(&tmp, to).map_err(DatasetError::io(to))
    }
}

fn decode(json: &str) -> Result<DatasetInfo, DatasetError> {
    serde_json::from_str(json)
        .map_err(|e| DatasetError::Internal(format!("a dataset row cannot be read: {e}")))
}

/// The object half of an upload in progress. Dropped without [`RemoteUpload::finish`], the
/// multipart upload is aborted: no object appears.
pub(super) struct RemoteUpload {
    remote: RemoteDatasets,
    key: String,
    upload: Option<Multipart>,
}

impl std::fmt::Debug for RemoteUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteUpload({})", self.key)
    }
}

impl RemoteUpload {
    pub(super) fn write(&mut self, chunk: &[u8]) -> Result<(), DatasetError> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| DatasetError::Internal("the upload has already ended".into()))?;
        let remote = self.remote.clone();
        remote.block(upload.write(chunk)).map_err(from_objects)
    }

    /// Completes the object (visible from now on, but listed only once its row exists).
    pub(super) fn finish(mut self) -> Result<(), DatasetError> {
        let upload = self
            .upload
            .take()
            .ok_or_else(|| DatasetError::Internal("the upload has already ended".into()))?;
        self.remote.block(upload.finish()).map_err(from_objects)
    }
}

impl Drop for RemoteUpload {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.remote.block(upload.abort());
        }
    }
}
