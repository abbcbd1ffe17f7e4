//! The dataset store: `<data_dir>/datasets/<id>/` holds the uploaded file (`data.csv` or
//! `data.json`) and `meta.json` ([`DatasetInfo`]: id, name, format, created, size, profile).
//!
//! Every method blocks on the file system; from async code call them through
//! [`DatasetStore::run_blocking`] (or `spawn_blocking`). A dataset is immutable once its
//! `meta.json` exists, uploads write under a temporary name (`<id>.tmp`) and only the final
//! rename of `meta.json` makes a dataset visible, so concurrent readers see a dataset whole
//! or not at all. One process owns a data directory: [`DatasetStore::open`] removes what an
//! interrupted upload left behind.
//!
//! The only state in memory is one parsed table kept between a job's submit, which parses
//! its dataset to check the spec, and the job's start ([`DatasetStore::load_and_keep`],
//! [`DatasetStore::take_table`]); deleting the dataset drops it.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::profile::Profile;
use super::remote::RemoteDatasets;
use super::table::{Source, Table};
use super::upload::UploadOptions;
use super::{DatasetError, Delimiter, Format};

/// The default upload limit: 100 MiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;

const META: &str = "meta.json";

/// A handle on the datasets directory; cheap to clone.
#[derive(Debug, Clone)]
pub struct DatasetStore {
    /// `<data_dir>/datasets`.
    dir: PathBuf,
    max_upload_bytes: u64,
    /// The last table [`DatasetStore::load_and_keep`] parsed, and its dataset: parsing a
    /// large upload takes seconds, and a job usually starts right after its submit parsed
    /// the same file. One slot, emptied by the job that takes it. Shared by the clones; a
    /// `std` mutex, held only to swap the slot.
    kept: Arc<Mutex<Option<KeptTable>>>,
    /// Shared by replicas: the files in object storage, the metadata in PostgreSQL, and
    /// `dir` only a cache (see [`super::remote`]). `None`: this directory is the store.
    remote: Option<Arc<RemoteDatasets>>,
}

/// A dataset id and its parsed table.
type KeptTable = (String, Arc<Table>);

/// What `meta.json` holds about a stored dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub format: Format,
    /// The CSV delimiter (given or detected); absent for JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<Delimiter>,
    /// When the upload finished: RFC 3339, UTC, milliseconds (`2026-05-01T12:00:00.000Z`).
    pub created: String,
    /// Bytes of the stored file, as uploaded.
    pub size: u64,
    pub profile: Profile,
}

// === impl DatasetStore ===

impl DatasetStore {
    /// Opens (creating it if needed) `<data_dir>/datasets`, removing leftovers of uploads that
    /// were interrupted: `*.tmp` files and dataset directories without `meta.json`.
    pub fn open(data_dir: &Path) -> Result<DatasetStore, DatasetError> {
        let dir = data_dir.join("datasets");
        fs::create_dir_all(&dir).map_err(DatasetError::io(&dir))?;
        for entry in fs::read_dir(&dir).map_err(DatasetError::io(&dir))? {
            let entry = entry.map_err(DatasetError::io(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let leftover = if let Some(id) = name.strip_suffix(".tmp") {
                valid_id(id) && path.is_file()
            } else {
                valid_id(&name) && path.is_dir() && !path.join(META).exists()
            };
            if leftover {
                tracing::warn!(path = %path.display(), "removing what an interrupted upload left");
                let removed = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(DatasetError::io(&path))?;
            }
        }
        Ok(DatasetStore {
            dir,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            kept: Arc::default(),
            remote: None,
        })
    }

    /// Shares the datasets through object storage and PostgreSQL; the directory becomes
    /// this replica's cache.
    pub fn with_remote(mut self, remote: RemoteDatasets) -> DatasetStore {
        self.remote = Some(Arc::new(remote));
        self
    }

    pub(super) fn remote(&self) -> Option<&RemoteDatasets> {
        self.remote.as_deref()
    }

    /// Sets the largest upload accepted, in bytes.
    pub fn with_max_upload_bytes(mut self, limit: u64) -> DatasetStore {
        self.max_upload_bytes = limit;
        self
    }

    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// `<data_dir>/datasets`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` with a clone of the store on tokio's blocking pool: the way async code calls
    /// [`get`](Self::get), [`list`](Self::list), [`delete`](Self::delete) and
    /// [`load_table`](Self::load_table).
    ///
    /// ```text
    /// let info = store.run_blocking(move |s| s.get(&id)).await?;
    /// ```
    pub async fn run_blocking<T, F>(&self, f: F) -> Result<T, DatasetError>
    where
        F: FnOnce(&DatasetStore) -> Result<T, DatasetError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| DatasetError::Internal(format!("a dataset task failed: {e}")))?
    }

    /// Every stored dataset, oldest first. A dataset whose `meta.json` cannot be read is
    /// logged and left out.
    pub fn list(&self) -> Result<Vec<DatasetInfo>, DatasetError> {
        if let Some(remote) = &self.remote {
            return remote.list();
        }
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(DatasetError::io(&self.dir))? {
            let entry = entry.map_err(DatasetError::io(&self.dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().filter(|n| valid_id(n)) else {
                continue;
            };
            match self.read_meta(id) {
                Ok(info) => out.push(info),
                // Being written right now, or deleted meanwhile.
                Err(DatasetError::NotFound(_)) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable dataset"),
            }
        }
        out.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<DatasetInfo, DatasetError> {
        check_id(id)?;
        match &self.remote {
            Some(remote) => remote
                .get(id)?
                .ok_or_else(|| DatasetError::NotFound(id.into())),
            None => self.read_meta(id),
        }
    }

    /// Removes the dataset's directory and files.
    pub fn delete(&self, id: &str) -> Result<(), DatasetError> {
        check_id(id)?;
        // The data is the user's: no parsed copy outlives it.
        self.forget_kept(id);
        let dir = self.dir.join(id);
        if let Some(remote) = &self.remote {
            self.get(id)?;
            if !remote.delete(id)? {
                return Err(DatasetError::NotFound(id.into()));
            }
            // The cached copy, if this replica has one.
            let _ = fs::remove_dir_all(&dir);
            tracing::info!(dataset = id, "dataset deleted from the object store");
            return Ok(());
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dataset = id, "dataset deleted");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Err(DatasetError::NotFound(id.into())),
            Err(e) => Err(DatasetError::Io {
                path: dir,
                source: e,
            }),
        }
    }

    /// The path of the dataset's stored file (for a download).
    pub fn data_path(&self, id: &str) -> Result<PathBuf, DatasetError> {
        let info = self.get(id)?;
        self.local_file(&info)
    }

    /// The dataset's file on this machine: with shared storage, downloaded into the cache
    /// first when this replica has no copy yet.
    fn local_file(&self, info: &DatasetInfo) -> Result<PathBuf, DatasetError> {
        let dir = self.dir.join(&info.id);
        let path = dir.join(info.format.file_name());
        if let Some(remote) = &self.remote {
            if !path.is_file() {
                fs::create_dir_all(&dir).map_err(DatasetError::io(&dir))?;
                remote.download(&info.id, &path)?;
                // The cache keeps the local layout (a directory without it is a leftover).
                let json = serde_json::to_vec_pretty(info)
                    .map_err(|e| DatasetError::Internal(format!("serializing meta.json: {e}")))?;
                let meta = dir.join(META);
                fs::write(&meta, json).map_err(DatasetError::io(&meta))?;
                tracing::info!(dataset = %info.id, bytes = info.size, "dataset downloaded from the object store");
            }
        }
        Ok(path)
    }

    /// Reads the dataset's file into a typed table (parsing it again; seconds for 100 MB).
    pub fn load_table(&self, id: &str) -> Result<Table, DatasetError> {
        let info = self.get(id)?;
        let path = self.local_file(&info)?;
        Source::open(&path, Some(info.format), info.delimiter)?.read_table()
    }

    /// Parses the dataset like [`Self::load_table`] and keeps the table for the next
    /// [`Self::take_table`] of this dataset (replacing the one kept before).
    pub fn load_and_keep(&self, id: &str) -> Result<Arc<Table>, DatasetError> {
        let table = Arc::new(self.load_table(id)?);
        *self.kept.lock().expect("the slot is only swapped") = Some((id.to_owned(), table.clone()));
        Ok(table)
    }

    /// The dataset's table: the kept one when it is this dataset's (emptying the slot), else
    /// parsed now. A kept table is used only while the dataset still exists.
    pub fn take_table(&self, id: &str) -> Result<Arc<Table>, DatasetError> {
        let kept = {
            let mut slot = self.kept.lock().expect("the slot is only swapped");
            match slot.take() {
                Some((kept_id, t)) if kept_id == id => Some(t),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        match kept {
            Some(t) => {
                self.get(id)?;
                Ok(t)
            }
            None => self.load_table(id).map(Arc::new),
        }
    }

    fn forget_kept(&self, id: &str) {
        let mut slot = self.kept.lock().expect("the slot is only swapped");
        if slot.as_ref().is_some_and(|(kept, _)| kept == id) {
            *slot = None;
        }
    }

    fn read_meta(&self, id: &str) -> Result<DatasetInfo, DatasetError> {
        let path = self.dir.join(id).join(META);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(DatasetError::NotFound(id.into()))
            }
            Err(e) => return Err(DatasetError::Io { path, source: e }),
        };
        let info: DatasetInfo =
            serde_json::from_slice(&bytes).map_err(|e| DatasetError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if info.id != id {
            return Err(DatasetError::Corrupt {
                path,
                message: format!("it names dataset {}", info.id),
            });
        }
        Ok(info)
    }

    /// Where an upload writes before it is parsed.
    pub(super) fn temp_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tmp"))
    }

    pub(super) fn exists(&self, id: &str) -> bool {
        self.dir.join(id).exists()
    }

    /// Parses and profiles a complete upload at `temp`, then moves it into place and writes
    /// `meta.json`. On error nothing of the dataset's directory remains (the caller removes
    /// `temp`).
    pub(super) fn ingest(
        &self,
        temp: &Path,
        id: &str,
        options: &UploadOptions,
        size: u64,
    ) -> Result<DatasetInfo, DatasetError> {
        let source = Source::open(temp, options.format, options.delimiter)?;
        let profile = source.read_table()?.profile();
        let dir = self.dir.join(id);
        fs::create_dir(&dir).map_err(DatasetError::io(&dir))?;
        let info = DatasetInfo {
            id: id.to_owned(),
            name: options.name.clone(),
            format: source.format,
            delimiter: source.delimiter,
            created: rfc3339(SystemTime::now()),
            size,
            profile,
        };
        let placed = (|| {
            let data = dir.join(info.format.file_name());
            fs::rename(temp, &data).map_err(DatasetError::io(&data))?;
            let meta_tmp = dir.join("meta.json.tmp");
            let json = serde_json::to_vec_pretty(&info)
                .map_err(|e| DatasetError::Internal(format!("serializing meta.json: {e}")))?;
            fs::write(&meta_tmp, json).map_err(DatasetError::io(&meta_tmp))?;
            let meta = dir.join(META);
            // The rename is what makes the dataset visible.
            fs::rename(&meta_tmp, &meta).map_err(DatasetError::io(&meta))
        })();
        if let Err(e) = placed {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        if let Some(remote) = &self.remote {
            // The object is complete (the caller finished it); the row makes it a dataset.
            if let Err(e) = remote.commit(&info) {
                let _ = fs::remove_dir_all(&dir);
                remote.remove_object(id);
                return Err(e);
            }
        }
        tracing::info!(
            dataset = id,
            rows = info.profile.rows,
            columns = info.profile.columns.len(),
            bytes = size,
            "dataset stored"
        );
        Ok(info)
    }
}

/// `ds_` followed by 16 lowercase hex digits.
pub(super) fn valid_id(id: &str) -> bool {
    id.len() == 19
        && id.starts_with("ds_")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_id(id: &str) -> Result<(), DatasetError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(DatasetError::InvalidId(id.into()))
    }
}

pub(super) fn new_id() -> String {
    format!("ds_{:016x}", rand::rng().random::<u64>())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::table::tests::shared_dataset;
    use super::super::{ColumnType, UploadOptions};
    use super::*;

    /// Names in the datasets directory, sorted.
    fn entries(store: &DatasetStore) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn formats_times() {
        let at = |s| rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn ids() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert_ne!(id, new_id());
        for bad in [
            "",
            "ds_",
            "ds_0123456789abcdeF",
            "ds_0123456789abcdef0",
            "DS_0123456789abcdef",
            "../../etc/passwd",
            "ds_0123456789abcde/",
            "ds_..3456789abcdef",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_ids_are_refused_before_the_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        for bad in [
            "../datasets",
            "ds_ABCDEF0123456789",
            "x",
            "ds_0123456789abcdef/..",
        ] {
            assert!(
                matches!(store.get(bad), Err(DatasetError::InvalidId(_))),
                "{bad}"
            );
            assert!(matches!(store.delete(bad), Err(DatasetError::InvalidId(_))));
            assert!(matches!(
                store.load_table(bad),
                Err(DatasetError::InvalidId(_))
            ));
        }
        let absent = "ds_0123456789abcdef";
        assert!(matches!(store.get(absent), Err(DatasetError::NotFound(_))));
        assert!(matches!(
            store.delete(absent),
            Err(DatasetError::NotFound(_))
        ));
        assert_eq!(
            store.get("nope").unwrap_err().to_string(),
            "invalid dataset id \"nope\": expected ds_ followed by 16 lowercase hex digits"
        );
    }

    /// The table a submit parsed goes to the next job on that dataset, once; a delete drops
    /// it, and a job never gets the table of a dataset deleted meanwhile.
    #[test]
    fn a_kept_table_is_taken_once_and_dies_with_its_dataset() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let bytes = fs::read(shared_dataset("iris_train.csv")).unwrap();
        let upload = |store: &DatasetStore| {
            let mut upload = store.begin_upload(UploadOptions::default()).unwrap();
            upload.write_chunk(&bytes[..]).unwrap();
            upload.finish().unwrap().id
        };
        let (a, b) = (upload(&store), upload(&store));
        let kept = store.load_and_keep(&a).unwrap();
        // Another dataset parses anew and leaves the slot alone.
        assert!(!Arc::ptr_eq(&store.take_table(&b).unwrap(), &kept));
        let clone = store.clone();
        assert!(Arc::ptr_eq(&clone.take_table(&a).unwrap(), &kept));
        assert!(!Arc::ptr_eq(&store.take_table(&a).unwrap(), &kept));

        let kept = store.load_and_keep(&a).unwrap();
        store.delete(&a).unwrap();
        assert_eq!(
            Arc::strong_count(&kept),
            1,
            "the deleted dataset's table is still held"
        );
        // Gone under a kept table (a delete racing with the submit that kept it).
        store.load_and_keep(&b).unwrap();
        fs::remove_dir_all(store.dir().join(&b)).unwrap();
        assert!(matches!(
            store.take_table(&b),
            Err(DatasetError::NotFound(_))
        ));
    }

    #[test]
    fn upload_in_chunks_then_list_get_load_and_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let bytes = fs::read(shared_dataset("iris_train.csv")).unwrap();

        let mut upload = store
            .begin_upload(UploadOptions {
                name: Some("iris".into()),
                ..UploadOptions::default()
            })
            .unwrap();
        let id = upload.id().to_owned();
        assert!(valid_id(&id));
        for chunk in bytes.chunks(333) {
            upload.write_chunk(chunk).unwrap();
        }
        assert_eq!(entries(&store), [format!("{id}.tmp")]);
        let info = upload.finish().unwrap();
        assert_eq!(info.id, id);
        assert_eq!(info.name.as_deref(), Some("iris"));
        assert_eq!(
            (info.format, info.delimiter),
            (Format::Csv, Some(Delimiter::Comma))
        );
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!((info.profile.rows, info.profile.duplicates), (120, 1));
        assert_eq!(info.created.len(), "2026-05-01T12:00:00.000Z".len());

        // On disk: the directory alone, with the file as uploaded and meta.json.
        assert_eq!(entries(&store), std::slice::from_ref(&id));
        let dir = store.dir().join(&id);
        assert_eq!(fs::read(dir.join("data.csv")).unwrap(), bytes);
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("meta.json")).unwrap()).unwrap();
        for key in ["id", "name", "format", "created", "size", "profile"] {
            assert!(meta.get(key).is_some(), "meta.json lacks {key}");
        }
        assert_eq!(meta["profile"]["columns"][0]["name"], "sepal_length_cm");

        assert_eq!(store.list().unwrap(), std::slice::from_ref(&info));
        assert_eq!(store.get(&id).unwrap(), info);
        let table = store.load_table(&id).unwrap();
        assert_eq!((table.n_rows, table.columns.len()), (120, 5));
        assert_eq!(table.columns[4].dtype, ColumnType::Integer);
        assert_eq!(table.profile(), info.profile);
        assert_eq!(store.data_path(&id).unwrap(), dir.join("data.csv"));

        // A reopened store sees the same.
        let again = DatasetStore::open(tmp.path()).unwrap();
        assert_eq!(again.list().unwrap(), [info]);

        store.delete(&id).unwrap();
        assert!(!dir.exists());
        assert!(entries(&store).is_empty());
        assert!(matches!(store.get(&id), Err(DatasetError::NotFound(_))));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn json_uploads_are_stored_as_json() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let mut upload = store.begin_upload(UploadOptions::default()).unwrap();
        upload.write_chunk(br#"[{"a": 1, "b": "x"},"#).unwrap();
        upload.write_chunk(br#" {"a": 2, "b": "y"}]"#).unwrap();
        let info = upload.finish().unwrap();
        assert_eq!((info.format, info.delimiter), (Format::Json, None));
        assert!(store.dir().join(&info.id).join("data.json").is_file());
        let table = store.load_table(&info.id).unwrap();
        assert_eq!(table.columns[1].dtype, ColumnType::Category);
    }

    #[test]
    fn the_size_limit_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path())
            .unwrap()
            .with_max_upload_bytes(1000);
        let mut upload = store.begin_upload(UploadOptions::default()).unwrap();
        upload.write_chunk(&[b'a'; 400]).unwrap();
        upload.write_chunk(&[b'a'; 600]).unwrap();
        let e = upload.write_chunk(b"a").unwrap_err();
        assert!(matches!(e, DatasetError::TooLarge { limit: 1000 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the upload is larger than the limit of 1000 bytes"
        );
        assert!(entries(&store).is_empty());
        // The upload is spent.
        assert!(matches!(
            upload.write_chunk(b"a"),
            Err(DatasetError::Internal(_))
        ));
        assert!(matches!(upload.finish(), Err(DatasetError::Internal(_))));
        assert!(entries(&store).is_empty());
    }

    #[test]
    fn failed_and_dropped_uploads_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let mut upload = store.begin_upload(UploadOptions::default()).unwrap();
        upload.write_chunk(b"a,b\n1,2\n3\n").unwrap();
        let e = upload.finish().unwrap_err();
        assert_eq!(e.to_string(), "row 2 (line 3): 1 field, the header has 2");
        assert!(entries(&store).is_empty());

        let mut upload = store.begin_upload(UploadOptions::default()).unwrap();
        upload.write_chunk(b"a,b\n").unwrap();
        drop(upload);
        assert!(entries(&store).is_empty());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn open_removes_leftovers_of_interrupted_uploads() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let stale = store.temp_path("ds_00000000000000aa");
        fs::write(&stale, "a\n1\n").unwrap();
        let half = store.dir().join("ds_00000000000000bb");
        fs::create_dir(&half).unwrap();
        fs::write(half.join("data.csv"), "a\n1\n").unwrap();
        let unrelated = store.dir().join("notes.txt");
        fs::write(&unrelated, "keep").unwrap();
        assert!(store.list().unwrap().is_empty());

        DatasetStore::open(tmp.path()).unwrap();
        assert_eq!(entries(&store), ["notes.txt"]);
    }

    #[test]
    fn a_corrupt_meta_is_an_error_for_get_and_skipped_by_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let id = "ds_00000000000000cc";
        fs::create_dir(store.dir().join(id)).unwrap();
        fs::write(store.dir().join(id).join(META), "{").unwrap();
        assert!(matches!(store.get(id), Err(DatasetError::Corrupt { .. })));
        assert!(store.list().unwrap().is_empty());
    }
}
