//! [`LocalDir`]: model versions as directories under one models directory.
//!
//! ```text
//! <root>/<name>/<version>/model.json          a version: a positive decimal number, no
//! <root>/<name>/<version>/model.safetensors   leading zero, holding model.json
//! <root>/<name>/<version>/config.json         a transformer's Hugging Face files, beside
//! <root>/<name>/<version>/tokenizer.json      them (docs/text-models.md)
//! <root>/<name>/.publish-<pid>-<n>.tmp/       a publish being written (never listed)
//! <root>/.deleted-<name>[-<version>]-<pid>-<n>/  a delete being removed (never listed)
//! ```
//!
//! A version appears by one `rename` of its complete, fsynced staging directory, and
//! disappears by one `rename` out of sight before its files are removed: a scan (ours, or a
//! watcher of another process over the same directory) sees a version whole or not at all.
//! Anything else under the root (files, dot-names, `3.tmp`, invalid names) is ignored, so an
//! operator can also publish by hand the same way (docs/model-format.md).
//!
//! The blocking methods do the work; the [`ModelStore`] impl runs them on tokio's blocking
//! pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    check_name, Catalog, ModelFiles, ModelStore, Revision, StoreError, StoreFuture, StoredVersion,
    Versions,
};

/// File names inside a version directory.
pub(super) const SPEC_FILE: &str = "model.json";
pub(super) const WEIGHTS_FILE: &str = "model.safetensors";

/// A models directory. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct LocalDir {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Held while a version number is chosen and renamed into place, so publishers of this
    /// process take numbers one after the other. Another process publishing into the same
    /// directory is handled by the rename itself, which fails when the number is taken.
    numbering: Mutex<()>,
}

fn io_error<'a>(
    action: &'static str,
    at: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        at: at.display().to_string(),
        source,
    }
}

/// A name no other staging or trash directory has, in this process or another.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The process that made a staging or trash directory: `<…>-<pid>-<n>[.tmp]`.
fn maker_of(dir_name: &str) -> Option<u32> {
    let stem = dir_name.strip_suffix(".tmp").unwrap_or(dir_name);
    let mut parts = stem.rsplitn(3, '-');
    let (_n, pid) = (parts.next()?, parts.next()?);
    parts.next()?;
    pid.parse().ok()
}

/// Whether a process may still be writing there. Without `/proc` (not Linux), every
/// process counts as alive: leftovers are then kept rather than risk a live publish.
fn is_alive(pid: u32) -> bool {
    pid == std::process::id()
        || !Path::new("/proc/self").exists()
        || Path::new("/proc").join(pid.to_string()).exists()
}

/// A version directory's number: canonical decimal only (`7`, not `007` or `7.tmp`), so that
/// a version has exactly one directory name.
fn version_of(dir_name: &str) -> Option<u64> {
    dir_name
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0 && v.to_string() == dir_name)
}

/// Sizes and modification times of the files: a copy or an edit in place changes it.
fn revision(dir: &Path) -> Revision {
    let parts: Vec<String> = [SPEC_FILE, WEIGHTS_FILE]
        .iter()
        .chain(super::EXTRA_FILES.iter())
        .map(|f| match std::fs::metadata(dir.join(f)) {
            Ok(m) => {
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{}@{modified}", m.len())
            }
            Err(_) => "-".to_owned(),
        })
        .collect();
    Revision::new(parts.join(" "))
}

/// The versions under one model directory (empty when it cannot be read).
fn versions_in(model_dir: &Path) -> Versions {
    let mut found = Versions::new();
    let Ok(entries) = std::fs::read_dir(model_dir) else {
        return found;
    };
    for e in entries.flatten() {
        let Some(version) = e.file_name().to_str().and_then(version_of) else {
            continue;
        };
        let dir = e.path();
        if dir.join(SPEC_FILE).is_file() {
            found.insert(version, revision(&dir));
        }
    }
    found
}

/// The highest version number taken under a model directory, with or without `model.json`
/// (0 when none): a new version never reuses a directory name.
fn highest_taken(model_dir: &Path) -> Result<u64, StoreError> {
    let entries = std::fs::read_dir(model_dir).map_err(io_error("list", model_dir))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(version_of))
        .max()
        .unwrap_or(0))
}

/// Makes a directory's entries (a rename into or out of it) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

/// Reads a version directory anywhere on disk (`kiln check`): its two files, named by path.
/// A spec that does not parse is reported before weights that cannot be read: the spec is
/// what says what the version is.
pub fn read_version_dir(dir: &Path) -> Result<ModelFiles, StoreError> {
    let (spec, weights) = (dir.join(SPEC_FILE), dir.join(WEIGHTS_FILE));
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| StoreError::Io {
            action: "read",
            at: p.display().to_string(),
            source,
        })
    };
    let spec_bytes = read(&spec)?;
    let weight_bytes = match read(&weights) {
        Ok(b) => b,
        Err(e) => {
            super::parse_spec(&spec_bytes, &spec)?;
            return Err(e);
        }
    };
    let mut extra = std::collections::BTreeMap::new();
    for name in super::EXTRA_FILES {
        let path = dir.join(name);
        if path.is_file() {
            extra.insert(name, read(&path)?.into());
        }
    }
    Ok(ModelFiles {
        spec: spec_bytes.into(),
        weights: weight_bytes.into(),
        spec_origin: spec,
        weights_origin: weights,
        extra,
    })
}

/// A version written in full under a staging name, not yet visible. Dropped without
/// [`LocalDir::commit`], its directory is removed; a crash leaves it behind, invisible.
pub(super) struct Staged {
    model_dir: PathBuf,
    pub(super) dir: PathBuf,
    committed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir {
            inner: Arc::new(Inner {
                root: root.into(),
                numbering: Mutex::new(()),
            }),
        }
    }

    /// The server's store: [`LocalDir::new`], then what a start does once (blocking): a
    /// warning when the directory is missing, and [`LocalDir::remove_leftovers`].
    pub fn open(root: impl Into<PathBuf>) -> Self {
        let store = LocalDir::new(root);
        let root = store.root();
        if !root.is_dir() {
            tracing::warn!(dir = %root.display(), "models directory does not exist; it will be watched for models");
        }
        let removed = store.remove_leftovers();
        if removed > 0 {
            tracing::info!(dir = %root.display(), count = removed, "removed what interrupted publishes and deletes left in the models directory");
        }
        store
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn model_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.inner.root.join(name))
    }

    fn version_dir(&self, name: &str, version: u64) -> Result<PathBuf, StoreError> {
        Ok(self.model_dir(name)?.join(version.to_string()))
    }

    /// Removes what interrupted publishes (`.publish-….tmp`) and deletes (`.deleted-…`) of
    /// processes that are gone left behind; returns how many. Never listed anyway, they only
    /// take disk space. Called once at startup.
    pub fn remove_leftovers(&self) -> usize {
        let leftover = |e: &std::fs::DirEntry, prefix: &str| {
            e.file_name()
                .to_str()
                .filter(|n| n.starts_with(prefix))
                .and_then(maker_of)
                .is_some_and(|pid| !is_alive(pid))
        };
        let mut removed = 0;
        let Ok(top) = std::fs::read_dir(&self.inner.root) else {
            return 0;
        };
        for e in top.flatten() {
            if leftover(&e, ".deleted-") {
                removed += usize::from(std::fs::remove_dir_all(e.path()).is_ok());
            } else if e.path().is_dir() {
                let Ok(inner) = std::fs::read_dir(e.path()) else {
                    continue;
                };
                for s in inner.flatten() {
                    if leftover(&s, ".publish-") {
                        removed += usize::from(std::fs::remove_dir_all(s.path()).is_ok());
                    }
                }
            }
        }
        removed
    }

    /// [`ModelStore::scan`], blocking.
    pub(crate) fn scan_blocking(&self) -> Catalog {
        let mut catalog = Catalog::new();
        let Ok(models) = std::fs::read_dir(&self.inner.root) else {
            return catalog;
        };
        for m in models.flatten() {
            let Some(name) = m.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !super::valid_model_name(&name) || !m.path().is_dir() {
                continue;
            }
            let versions = versions_in(&m.path());
            if !versions.is_empty() {
                catalog.insert(name, versions);
            }
        }
        catalog
    }

    /// [`ModelStore::versions`], blocking.
    pub(crate) fn versions_blocking(&self, name: &str) -> Result<Option<Versions>, StoreError> {
        let dir = self.model_dir(name)?;
        Ok(dir.is_dir().then(|| versions_in(&dir)))
    }

    /// [`ModelStore::read`], blocking.
    pub(crate) fn read_blocking(
        &self,
        name: &str,
        version: u64,
    ) -> Result<StoredVersion, StoreError> {
        let dir = self.version_dir(name, version)?;
        if !dir.is_dir() {
            return Err(StoreError::VersionNotFound {
                name: name.to_owned(),
                version,
            });
        }
        // Before the read: if the files change meanwhile, the next scan sees a new revision.
        let revision = revision(&dir);
        let files = read_version_dir(&dir)?;
        Ok(StoredVersion {
            files,
            location: dir,
            revision,
        })
    }

    /// [`ModelStore::publish`], blocking: stage, then commit.
    pub(crate) fn publish_blocking(
        &self,
        name: &str,
        files: &ModelFiles,
    ) -> Result<u64, StoreError> {
        let staged = self.stage(name, files)?;
        self.commit(staged)
    }

    /// Writes the files under a staging name and makes them durable (files and directory).
    pub(super) fn stage(&self, name: &str, files: &ModelFiles) -> Result<Staged, StoreError> {
        let model_dir = self.model_dir(name)?;
        if !model_dir.is_dir() {
            std::fs::create_dir_all(&model_dir).map_err(io_error("create", &model_dir))?;
            sync_dir(&self.inner.root)?;
        }
        let dir = model_dir.join(format!(".publish-{}.tmp", unique_suffix()));
        std::fs::create_dir(&dir).map_err(io_error("create", &dir))?;
        let staged = Staged {
            model_dir,
            dir,
            committed: false,
        };
        let extra = files.extra.iter().map(|(name, bytes)| (*name, bytes));
        for (file, bytes) in [(SPEC_FILE, &files.spec), (WEIGHTS_FILE, &files.weights)]
            .into_iter()
            .chain(extra)
        {
            let path = staged.dir.join(file);
            std::fs::write(&path, bytes).map_err(io_error("write", &path))?;
            // Readable by a server running as another user, whatever the umask.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io_error("set permissions of", &path))?;
            }
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_error("sync", &path))?;
        }
        sync_dir(&staged.dir)?;
        Ok(staged)
    }

    /// Renames a staged version to the next free number: the moment it becomes visible.
    pub(super) fn commit(&self, mut staged: Staged) -> Result<u64, StoreError> {
        let _numbering = self
            .inner
            .numbering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut version = highest_taken(&staged.model_dir)? + 1;
        loop {
            let target = staged.model_dir.join(version.to_string());
            match std::fs::rename(&staged.dir, &target) {
                Ok(()) => break,
                // Another process took this number meanwhile: take the next.
                Err(_) if target.exists() => version += 1,
                Err(e) => return Err(io_error("rename into", &target)(e)),
            }
        }
        staged.committed = true;
        sync_dir(&staged.model_dir)?;
        Ok(version)
    }

    /// Moves `dir` out of sight at once (one rename under the root), then removes it.
    fn remove(&self, dir: &Path, label: &str) -> Result<(), StoreError> {
        let trash = self
            .inner
            .root
            .join(format!(".deleted-{label}-{}", unique_suffix()));
        std::fs::rename(dir, &trash).map_err(io_error("move away", dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        std::fs::remove_dir_all(&trash).map_err(io_error("remove", &trash))
    }

    /// [`ModelStore::delete_version`], blocking.
    pub(crate) fn delete_version_blocking(
        &self,
        name: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let dir = self.version_dir(name, version)?;
        if !dir.is_dir() {
            return Err(StoreError::VersionNotFound {
                name: name.to_owned(),
                version,
            });
        }
        self.remove(&dir, &format!("{name}-{version}"))
    }

    /// [`ModelStore::delete_model`], blocking.
    pub(crate) fn delete_model_blocking(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.model_dir(name)?;
        if !dir.is_dir() {
            return Err(StoreError::ModelNotFound(name.to_owned()));
        }
        self.remove(&dir, name)
    }
}

/// Runs a blocking store call on tokio's blocking pool.
fn blocking<'a, T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'a, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(StoreError::Io {
                action: "finish",
                at: "a model store task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })
    })
}

impl ModelStore for LocalDir {
    fn scan(&self) -> StoreFuture<'_, Catalog> {
        let this = self.clone();
        blocking(move || Ok(this.scan_blocking()))
    }

    fn versions<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Versions>> {
        let (this, name) = (self.clone(), name.to_owned());
        blocking(move || this.versions_blocking(&name))
    }

    fn read<'a>(&'a self, name: &'a str, version: u64) -> StoreFuture<'a, StoredVersion> {
        let (this, name) = (self.clone(), name.to_owned());
        blocking(move || this.read_blocking(&name, version))
    }

    fn publish<'a>(&'a self, name: &'a str, files: ModelFiles) -> StoreFuture<'a, u64> {
        let (this, name) = (self.clone(), name.to_owned());
        blocking(move || this.publish_blocking(&name, &files))
    }

    fn delete_version<'a>(&'a self, name: &'a str, version: u64) -> StoreFuture<'a, ()> {
        let (this, name) = (self.clone(), name.to_owned());
        blocking(move || this.delete_version_blocking(&name, version))
    }

    fn delete_model<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        let (this, name) = (self.clone(), name.to_owned());
        blocking(move || this.delete_model_blocking(&name))
    }

    fn location(&self, name: &str, version: u64) -> String {
        self.inner
            .root
            .join(name)
            .join(version.to_string())
            .display()
            .to_string()
    }
}
