//! Uploads: chunks streamed to `<datasets>/<id>.tmp` under a byte limit, then parsed,
//! profiled and moved into place.
//!
//! [`Upload`] is the blocking core, for a thread that may block. [`AsyncUpload`] is what an
//! async handler holds: its chunks cross a bounded channel to a task on tokio's blocking pool
//! that owns an [`Upload`], writes them, and at the end parses and profiles the file there.
//! Either way an upload that fails, passes the limit, or is dropped before it finishes
//! leaves no file behind.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::remote::RemoteUpload;
use super::store::{new_id, DatasetInfo, DatasetStore};
use super::{DatasetError, Delimiter, Format};

/// Chunks an [`AsyncUpload`] may queue ahead of its writer.
///
/// Small on purpose: when the disk is slower than the client, `write_chunk` waits, the
/// handler stops reading the body, and TCP pushes back on the client, instead of the upload
/// piling up in memory.
const QUEUED_CHUNKS: usize = 4;

/// The longest dataset name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// How to read an upload. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOptions {
    /// A label kept in `meta.json`: 1 to 200 characters, no control characters.
    pub name: Option<String>,
    /// Detected from the first non-blank byte when `None` (`[` or `{`: JSON, else CSV); see
    /// [`Format::from_media_type`] for a `Content-Type`.
    pub format: Option<Format>,
    /// CSV only; detected from the header line when `None`.
    pub delimiter: Option<Delimiter>,
}

impl UploadOptions {
    fn validate(&self) -> Result<(), DatasetError> {
        if let Some(name) = &self.name {
            let chars = name.chars().count();
            if name.trim().is_empty()
                || chars > MAX_NAME_CHARS
                || name.chars().any(char::is_control)
            {
                return Err(DatasetError::Invalid(format!(
                    "a dataset name is 1 to {MAX_NAME_CHARS} characters, not blank and without control characters"
                )));
            }
        }
        if self.format == Some(Format::Json) && self.delimiter.is_some() {
            return Err(DatasetError::Invalid(
                "a delimiter applies to CSV files only, and this upload is JSON".into(),
            ));
        }
        Ok(())
    }
}

/// An upload in progress, written from a thread that may block.
///
/// ```text
/// let mut upload = store.begin_upload(UploadOptions::default())?;
/// for chunk in chunks { upload.write_chunk(&chunk)?; }
/// let info = upload.finish()?; // parses and profiles: seconds for 100 MB
/// ```
#[derive(Debug)]
pub struct Upload {
    store: DatasetStore,
    id: String,
    temp: PathBuf,
    /// `None` once the upload failed or finished.
    file: Option<BufWriter<File>>,
    /// `true` once `temp` was removed or moved into place.
    gone: bool,
    written: u64,
    options: UploadOptions,
    /// With shared storage: the same bytes, streamed to a multipart upload.
    remote: Option<RemoteUpload>,
}

impl DatasetStore {
    /// Starts an upload: picks an id and creates `<id>.tmp`. Blocks (briefly).
    pub fn begin_upload(&self, options: UploadOptions) -> Result<Upload, DatasetError> {
        options.validate()?;
        // 64 random bits: a clash is next to impossible, but cheap to step around.
        for _ in 0..8 {
            let id = new_id();
            if self.exists(&id) {
                continue;
            }
            let temp = self.temp_path(&id);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    let remote = match self.remote().map(|r| r.begin(&id)).transpose() {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = std::fs::remove_file(&temp);
                            return Err(e);
                        }
                    };
                    return Ok(Upload {
                        remote,
                        store: self.clone(),
                        id,
                        temp,
                        file: Some(BufWriter::with_capacity(256 * 1024, file)),
                        gone: false,
                        written: 0,
                        options,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(DatasetError::Io {
                        path: temp,
                        source: e,
                    })
                }
            }
        }
        Err(DatasetError::Internal(
            "no free dataset id after 8 tries".into(),
        ))
    }

    /// Starts an upload fed from async code. Does not block; must be called within a tokio
    /// runtime (the writer runs on its blocking pool). Errors about the options come at once;
    /// errors from the file system come from the next `write_chunk` or `finish`.
    pub fn begin_upload_async(&self, options: UploadOptions) -> Result<AsyncUpload, DatasetError> {
        options.validate()?;
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let store = self.clone();
        let task = tokio::task::spawn_blocking(move || write_from_channel(&store, options, rx));
        Ok(AsyncUpload {
            tx: Some(tx),
            task: Some(task),
            written: 0,
            limit: self.max_upload_bytes(),
        })
    }
}

// === impl Upload ===

impl Upload {
    /// The id the dataset will have.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Appends a chunk. Past the store's byte limit the temporary file is removed and the
    /// upload fails with [`DatasetError::TooLarge`]; after any error the upload is spent.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), DatasetError> {
        let Some(file) = self.file.as_mut() else {
            return Err(spent());
        };
        let limit = self.store.max_upload_bytes();
        if self.written.saturating_add(chunk.len() as u64) > limit {
            self.discard();
            return Err(DatasetError::TooLarge { limit });
        }
        if let Err(e) = file.write_all(chunk) {
            self.discard();
            return Err(DatasetError::Io {
                path: self.temp.clone(),
                source: e,
            });
        }
        if let Some(remote) = self.remote.as_mut() {
            if let Err(e) = remote.write(chunk) {
                self.discard();
                return Err(e);
            }
        }
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Closes the file, parses and profiles it, moves it into place and writes `meta.json`.
    /// Blocking: seconds for a large file.
    pub fn finish(mut self) -> Result<DatasetInfo, DatasetError> {
        let Some(file) = self.file.take() else {
            return Err(spent());
        };
        let file = file
            .into_inner()
            .map_err(|e| DatasetError::io(&self.temp)(e.into_error()))?;
        // On disk before it is renamed into place, so a crash cannot leave a torn dataset.
        file.sync_all().map_err(DatasetError::io(&self.temp))?;
        drop(file);
        // The object is complete before the row that lists it is written (in `ingest`).
        let remote = match self.remote.take() {
            Some(r) => {
                r.finish()?;
                self.store.remote()
            }
            None => None,
        };
        let info = match self
            .store
            .ingest(&self.temp, &self.id, &self.options, self.written)
        {
            Ok(info) => info,
            Err(e) => {
                if let Some(remote) = remote {
                    remote.remove_object(&self.id);
                }
                return Err(e);
            }
        };
        self.gone = true;
        Ok(info)
    }

    /// Gives up the upload and removes its file (dropping it does the same).
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        self.file = None;
        // Aborts the multipart upload: no object appears.
        self.remote = None;
        if !self.gone {
            self.gone = true;
            match std::fs::remove_file(&self.temp) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.temp.display(), error = %e, "cannot remove an unfinished upload")
                }
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.discard();
    }
}

fn spent() -> DatasetError {
    DatasetError::Internal("the upload has already failed or finished".into())
}

// === impl AsyncUpload ===

enum Message {
    /// Any owned bytes (`Bytes`, `Vec<u8>`), moved to the writer without a copy.
    Chunk(Box<dyn AsRef<[u8]> + Send>),
    Finish,
}

/// An upload fed from async code: hand it each chunk of the request body as it arrives.
///
/// ```text
/// let mut upload = store.begin_upload_async(options)?;
/// while let Some(chunk) = next_chunk(&mut body).await? {
///     upload.write_chunk(chunk).await?; // TooLarge → 413; nothing is left on disk
/// }
/// let info = upload.finish().await?;    // parsed and profiled on the blocking pool
/// ```
///
/// Dropping it unfinished (the client went away) abandons the upload: the writer task sees
/// the channel close and removes the file shortly after. [`abort`](Self::abort) does the same
/// and waits until it is done.
#[derive(Debug)]
pub struct AsyncUpload {
    /// Bounded by [`QUEUED_CHUNKS`]; `None` once the upload failed or finished.
    tx: Option<mpsc::Sender<Message>>,
    /// The blocking task that owns the [`Upload`]; its result is the upload's.
    task: Option<JoinHandle<Result<DatasetInfo, DatasetError>>>,
    written: u64,
    /// Checked here as well, so an oversized body is refused without waiting on the disk.
    limit: u64,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Chunk(c) => write!(f, "Chunk({} bytes)", (**c).as_ref().len()),
            Message::Finish => f.write_str("Finish"),
        }
    }
}

impl AsyncUpload {
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Queues a chunk for the writer; waits only when 4 chunks are already queued.
    /// Past the limit it fails with [`DatasetError::TooLarge`] once the file is removed; after
    /// any error the upload is spent.
    pub async fn write_chunk<B>(&mut self, chunk: B) -> Result<(), DatasetError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let len = chunk.as_ref().len() as u64;
        let Some(tx) = &self.tx else {
            return Err(spent());
        };
        if self.written.saturating_add(len) > self.limit {
            self.tx = None;
            let _ = self.outcome().await;
            return Err(DatasetError::TooLarge { limit: self.limit });
        }
        if len == 0 {
            return Ok(());
        }
        if tx.send(Message::Chunk(Box::new(chunk))).await.is_err() {
            // The writer stopped on an error: that error is the answer.
            self.tx = None;
            return Err(match self.outcome().await {
                Err(e) => e,
                Ok(_) => spent(),
            });
        }
        self.written += len;
        Ok(())
    }

    /// Ends the upload: the writer parses, profiles and stores it.
    pub async fn finish(mut self) -> Result<DatasetInfo, DatasetError> {
        if let Some(tx) = self.tx.take() {
            // If the writer has already stopped, its result says why.
            let _ = tx.send(Message::Finish).await;
        }
        self.outcome().await
    }

    /// Abandons the upload and waits until its file is removed.
    pub async fn abort(mut self) {
        self.tx = None;
        let _ = self.outcome().await;
    }

    async fn outcome(&mut self) -> Result<DatasetInfo, DatasetError> {
        let Some(task) = self.task.take() else {
            return Err(spent());
        };
        task.await
            .map_err(|e| DatasetError::Internal(format!("the upload task failed: {e}")))?
    }
}

/// The writer task of an [`AsyncUpload`], on the blocking pool.
fn write_from_channel(
    store: &DatasetStore,
    options: UploadOptions,
    mut rx: mpsc::Receiver<Message>,
) -> Result<DatasetInfo, DatasetError> {
    let mut upload = store.begin_upload(options)?;
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Chunk(chunk) => upload.write_chunk((*chunk).as_ref())?,
            Message::Finish => {
                // Refuse further sends at once rather than after the parse.
                drop(rx);
                return upload.finish();
            }
        }
    }
    // Every sender is gone without `Finish`: dropping `upload` removes the file.
    Err(DatasetError::Internal(
        "the upload was abandoned before it finished".into(),
    ))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::table::tests::shared_dataset;
    use super::*;

    fn entries(store: &DatasetStore) -> Vec<String> {
        fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn options_are_checked() {
        let bad = |o: UploadOptions| o.validate().unwrap_err().to_string();
        assert!(bad(UploadOptions {
            name: Some(" ".into()),
            ..Default::default()
        })
        .starts_with("a dataset name is 1 to 200 characters"));
        assert!(bad(UploadOptions {
            name: Some("a\nb".into()),
            ..Default::default()
        })
        .starts_with("a dataset name"));
        assert_eq!(
            bad(UploadOptions {
                format: Some(Format::Json),
                delimiter: Some(Delimiter::Tab),
                ..Default::default()
            }),
            "a delimiter applies to CSV files only, and this upload is JSON"
        );
    }

    #[test]
    fn an_explicit_format_and_delimiter_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let mut upload = store
            .begin_upload(UploadOptions {
                name: None,
                format: Some(Format::Csv),
                delimiter: Some(Delimiter::Semicolon),
            })
            .unwrap();
        upload.write_chunk(b"a,b;c\n1;2\n").unwrap();
        let info = upload.finish().unwrap();
        assert_eq!(info.delimiter, Some(Delimiter::Semicolon));
        assert_eq!(info.profile.columns[0].name, "a,b");
        let t = store.load_table(&info.id).unwrap();
        assert_eq!(t.columns[1].name, "c");
    }

    #[tokio::test]
    async fn async_upload_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path()).unwrap();
        let bytes = fs::read(shared_dataset("iris_dirty.csv")).unwrap();
        let mut upload = store.begin_upload_async(UploadOptions::default()).unwrap();
        for chunk in bytes.chunks(500) {
            upload.write_chunk(chunk.to_vec()).await.unwrap();
        }
        upload.write_chunk(Vec::new()).await.unwrap();
        assert_eq!(upload.bytes_written(), bytes.len() as u64);
        let info = upload.finish().await.unwrap();
        assert_eq!((info.profile.rows, info.profile.duplicates), (123, 4));
        let id = info.id.clone();
        let listed = store.run_blocking(|s| s.list()).await.unwrap();
        assert_eq!(listed, [info]);
        let table = store
            .run_blocking(move |s| s.load_table(&id))
            .await
            .unwrap();
        assert_eq!(table.columns.iter().map(|c| c.invalid).sum::<usize>(), 4);
    }

    #[tokio::test]
    async fn async_upload_limit_and_failures_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(tmp.path())
            .unwrap()
            .with_max_upload_bytes(10);
        let mut upload = store.begin_upload_async(UploadOptions::default()).unwrap();
        upload.write_chunk(b"a,b\n".to_vec()).await.unwrap();
        let e = upload
            .write_chunk(b"1,2\n3,4\n".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, DatasetError::TooLarge { limit: 10 }), "{e:?}");
        assert!(entries(&store).is_empty());
        assert!(matches!(
            upload.finish().await,
            Err(DatasetError::Internal(_))
        ));

        let store = store.with_max_upload_bytes(DEFAULT_LIMIT_FOR_TESTS);
        let mut upload = store.begin_upload_async(UploadOptions::default()).unwrap();
        upload.write_chunk(b"a,b\n1\n".to_vec()).await.unwrap();
        let e = upload.finish().await.unwrap_err();
        assert_eq!(e.to_string(), "row 1 (line 2): 1 field, the header has 2");
        assert!(entries(&store).is_empty());

        let mut upload = store.begin_upload_async(UploadOptions::default()).unwrap();
        upload.write_chunk(b"a,b\n1,2\n".to_vec()).await.unwrap();
        upload.abort().await;
        assert!(entries(&store).is_empty());
    }

    const DEFAULT_LIMIT_FOR_TESTS: u64 = 1 << 20;
}
