//! [`ObjectStoreModels`]: model versions in object storage, catalogued in PostgreSQL, shared
//! by every replica of a fleet (`--object-store` with a `postgres://` database).
//!
//! ```text
//! <prefix>/models/<name>/<hash>/model.json          a version's files, under the SHA-256
//! <prefix>/models/<name>/<hash>/model.safetensors   of its manifest (file → sha256, size)
//! kiln_model_versions (model, version, hash, files)  the catalog: one row per version
//! <data_dir>/cache/models/<name>/<hash>/…           this replica's verified copy
//! ```
//!
//! - **Publish**: the files are uploaded under the hash first (each object is written whole),
//!   then one transaction takes the model's next number, inserts the version's row and
//!   notifies `kiln_models`. Readers list rows, so they see a version whole or not at all; a
//!   publish that dies before its commit leaves only unlisted objects.
//! - **Read** (the registry's load): the row says which hash and files; the files come from
//!   the local cache when present and intact, else are downloaded, each checked against its
//!   SHA-256, and moved into the cache by one rename.
//! - **Delete**: the row goes in one transaction (with a notification), then the objects,
//!   unless another version of the model has the same content.
//! - **Changes**: [`ModelStore::changes`] ticks on every notification, so every replica's
//!   watcher rescans at once; its regular poll is the fallback when notifications are lost.
//!
//! Nothing here is on the prediction path: the registry serves from memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::local::{SPEC_FILE, WEIGHTS_FILE};
use super::{
    check_name, Catalog, ModelFiles, ModelStore, Revision, StoreError, StoreFuture, StoredVersion,
    Versions, EXTRA_FILES,
};
use crate::remote::pg::{self, PgError};
use crate::remote::{ObjectError, Objects};

/// One file of a version, as the catalog row lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    sha256: String,
    size: u64,
}

type Manifest = BTreeMap<String, FileEntry>;

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The version's identity: the SHA-256 of its manifest (names, hashes and sizes).
fn manifest_hash(manifest: &Manifest) -> String {
    let mut h = Sha256::new();
    for (name, f) in manifest {
        h.update(format!("{name} {} {}\n", f.sha256, f.size));
    }
    format!("{:x}", h.finalize())
}

fn files_of(files: &ModelFiles) -> Vec<(String, Bytes)> {
    let mut out = vec![
        (SPEC_FILE.to_owned(), files.spec.clone()),
        (WEIGHTS_FILE.to_owned(), files.weights.clone()),
    ];
    for (name, bytes) in &files.extra {
        out.push(((*name).to_owned(), bytes.clone()));
    }
    out
}

fn from_pg(e: PgError) -> StoreError {
    match e {
        PgError::Unavailable(m) => StoreError::Unavailable(format!("the model catalog: {m}")),
        PgError::Database(m) => StoreError::Io {
            action: "query",
            at: "the model catalog".into(),
            source: std::io::Error::other(m),
        },
    }
}

fn from_objects(e: ObjectError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStoreModels {
    objects: Objects,
    pool: Pool,
    cache: PathBuf,
    changes: Option<tokio::sync::watch::Receiver<u64>>,
}

impl ObjectStoreModels {
    /// `cache`: this replica's directory for downloaded versions (created when missing).
    pub fn new(objects: Objects, pool: Pool, cache: impl Into<PathBuf>) -> Self {
        ObjectStoreModels {
            objects,
            pool,
            cache: cache.into(),
            changes: None,
        }
    }

    /// Ticks that make the registry rescan at once (see [`crate::remote::pg::listen`]).
    pub fn with_changes(mut self, changes: tokio::sync::watch::Receiver<u64>) -> Self {
        self.changes = Some(changes);
        self
    }

    fn key(name: &str, hash: &str, file: &str) -> String {
        format!("models/{name}/{hash}/{file}")
    }

    fn cache_dir(&self, name: &str, hash: &str) -> PathBuf {
        self.cache.join(name).join(hash)
    }

    async fn row(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(String, Manifest)>, StoreError> {
        let v = version as i64;
        let row = pg::with_client(&self.pool, async |c| {
            c.query_opt(
                "SELECT hash, files FROM kiln_model_versions WHERE model = $1 AND version = $2",
                &[&name, &v],
            )
            .await
            .map_err(pg::pg_error)
        })
        .await
        .map_err(from_pg)?;
        let Some(row) = row else { return Ok(None) };
        let hash: String = row.get(0);
        let files: String = row.get(1);
        let manifest: Manifest = serde_json::from_str(&files).map_err(|e| StoreError::Io {
            action: "read",
            at: format!("the catalog row of {name} version {version}"),
            source: std::io::Error::other(e),
        })?;
        Ok(Some((hash, manifest)))
    }

    /// The version's files from the cache when they are all there and intact.
    fn from_cache(dir: &Path, manifest: &Manifest) -> Option<BTreeMap<String, Bytes>> {
        let mut out = BTreeMap::new();
        for (name, entry) in manifest {
            let bytes = std::fs::read(dir.join(name)).ok()?;
            if bytes.len() as u64 != entry.size || sha256_hex(&bytes) != entry.sha256 {
                tracing::warn!(dir = %dir.display(), file = %name, "cached model file does not match its hash; downloading it again");
                return None;
            }
            out.insert(name.clone(), Bytes::from(bytes));
        }
        Some(out)
    }

    async fn download(
        &self,
        name: &str,
        hash: &str,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, Bytes>, StoreError> {
        let mut out = BTreeMap::new();
        for (file, entry) in manifest {
            let key = Self::key(name, hash, file);
            let bytes = match self.objects.get(&key).await {
                Ok(b) => b,
                Err(e @ ObjectError::NotFound { .. }) => {
                    return Err(StoreError::Io {
                        action: "download",
                        at: key,
                        source: std::io::Error::other(e.to_string()),
                    })
                }
                Err(e) => return Err(from_objects(e)),
            };
            if bytes.len() as u64 != entry.size || sha256_hex(&bytes) != entry.sha256 {
                return Err(StoreError::Io {
                    action: "verify",
                    at: format!("{}/{key}", self.objects.url()),
                    source: std::io::Error::other(format!(
                        "its SHA-256 is not the {} its catalog row records",
                        entry.sha256
                    )),
                });
            }
            out.insert(file.clone(), bytes);
        }
        Ok(out)
    }

    /// Writes downloaded files into the cache: a staging directory, then one rename.
    fn fill_cache(dir: &Path, files: &BTreeMap<String, Bytes>) -> std::io::Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = dir.parent().expect("a cache dir has a parent");
        std::fs::create_dir_all(parent)?;
        let staging = parent.join(format!(
            ".download-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&staging)?;
        let written = (|| {
            for (name, bytes) in files {
                std::fs::write(staging.join(name), bytes)?;
            }
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(&staging, dir)
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        written
    }

    async fn read_version(&self, name: &str, version: u64) -> Result<StoredVersion, StoreError> {
        check_name(name)?;
        let Some((hash, manifest)) = self.row(name, version).await? else {
            return Err(StoreError::VersionNotFound {
                name: name.to_owned(),
                version,
            });
        };
        let dir = self.cache_dir(name, &hash);
        let cached = {
            let (dir, manifest) = (dir.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || Self::from_cache(&dir, &manifest))
                .await
                .ok()
                .flatten()
        };
        let files = match cached {
            Some(f) => f,
            None => {
                let files = self.download(name, &hash, &manifest).await?;
                let (d, f) = (dir.clone(), files.clone());
                let stored = tokio::task::spawn_blocking(move || Self::fill_cache(&d, &f)).await;
                if let Ok(Err(e)) | Err(e) = stored.map_err(std::io::Error::other) {
                    // Served from memory all the same; the next load downloads again.
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write the model cache");
                }
                files
            }
        };
        let take = |files: &BTreeMap<String, Bytes>, f: &str| {
            files.get(f).cloned().ok_or_else(|| StoreError::Io {
                action: "read",
                at: format!("{name} version {version}"),
                source: std::io::Error::other(format!("the catalog lists no {f}")),
            })
        };
        let mut extra = BTreeMap::new();
        for e in EXTRA_FILES {
            if let Some(b) = files.get(e) {
                extra.insert(e, b.clone());
            }
        }
        Ok(StoredVersion {
            files: ModelFiles {
                spec: take(&files, SPEC_FILE)?,
                weights: take(&files, WEIGHTS_FILE)?,
                spec_origin: dir.join(SPEC_FILE),
                weights_origin: dir.join(WEIGHTS_FILE),
                extra,
            },
            location: dir,
            revision: Revision::new(hash),
        })
    }

    async fn publish_version(&self, name: &str, files: ModelFiles) -> Result<u64, StoreError> {
        check_name(name)?;
        let files = files_of(&files);
        let manifest: Manifest = files
            .iter()
            .map(|(n, b)| {
                (
                    n.clone(),
                    FileEntry {
                        sha256: sha256_hex(b),
                        size: b.len() as u64,
                    },
                )
            })
            .collect();
        let hash = manifest_hash(&manifest);
        for (file, bytes) in &files {
            self.objects
                .put(&Self::key(name, &hash, file), bytes.clone())
                .await
                .map_err(from_objects)?;
        }
        let manifest_json = serde_json::to_string(&manifest).expect("manifests serialize");
        let committed = pg::with_client(&self.pool, async |c| {
            let tx = c.transaction().await.map_err(pg::pg_error)?;
            let version: i64 = tx
                .query_one(
                    "INSERT INTO kiln_models (name, next_version) VALUES ($1, 2) \
                     ON CONFLICT (name) DO UPDATE SET next_version = kiln_models.next_version + 1 \
                     RETURNING next_version - 1",
                    &[&name],
                )
                .await
                .map_err(pg::pg_error)?
                .get(0);
            tx.execute(
                "INSERT INTO kiln_model_versions (model, version, hash, files, created_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&name, &version, &hash, &manifest_json, &now_ms()],
            )
            .await
            .map_err(pg::pg_error)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&pg::MODELS_CHANNEL, &name])
                .await
                .map_err(pg::pg_error)?;
            tx.commit().await.map_err(pg::pg_error)?;
            Ok(version)
        })
        .await;
        match committed {
            Ok(v) => {
                tracing::info!(model = name, version = v, hash = %hash, store = %self.objects.url(), "version published");
                // This replica loads it next: from the cache, without a download.
                let dir = self.cache_dir(name, &hash);
                let files: BTreeMap<String, Bytes> = files.into_iter().collect();
                let _ = tokio::task::spawn_blocking(move || Self::fill_cache(&dir, &files)).await;
                Ok(v as u64)
            }
            Err(e) => {
                // Not listed, so never read; remove the objects unless a version holds them.
                self.remove_objects_if_unused(name, &hash).await;
                Err(from_pg(e))
            }
        }
    }

    /// Removes a version's objects unless a catalog row still names its hash.
    async fn remove_objects_if_unused(&self, name: &str, hash: &str) {
        let used = pg::with_client(&self.pool, async |c| {
            c.query_opt(
                "SELECT 1 FROM kiln_model_versions WHERE model = $1 AND hash = $2",
                &[&name, &hash],
            )
            .await
            .map(|r| r.is_some())
            .map_err(pg::pg_error)
        })
        .await;
        if let Ok(false) = used {
            if let Err(e) = self
                .objects
                .delete_all(&format!("models/{name}/{hash}"))
                .await
            {
                tracing::warn!(model = name, error = %e, "cannot remove a version's objects");
            }
        }
    }

    async fn delete_one(&self, name: &str, version: u64) -> Result<(), StoreError> {
        check_name(name)?;
        let v = version as i64;
        let hash = pg::with_client(&self.pool, async |c| {
            let tx = c.transaction().await.map_err(pg::pg_error)?;
            let row = tx
                .query_opt(
                    "DELETE FROM kiln_model_versions WHERE model = $1 AND version = $2 RETURNING hash",
                    &[&name, &v],
                )
                .await
                .map_err(pg::pg_error)?;
            if row.is_some() {
                tx.execute("SELECT pg_notify($1, $2)", &[&pg::MODELS_CHANNEL, &name])
                    .await
                    .map_err(pg::pg_error)?;
            }
            tx.commit().await.map_err(pg::pg_error)?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        })
        .await
        .map_err(from_pg)?;
        let Some(hash) = hash else {
            return Err(StoreError::VersionNotFound {
                name: name.to_owned(),
                version,
            });
        };
        tracing::info!(model = name, version, "version deleted from the catalog");
        self.remove_objects_if_unused(name, &hash).await;
        Ok(())
    }

    async fn delete_all(&self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let existed = pg::with_client(&self.pool, async |c| {
            let tx = c.transaction().await.map_err(pg::pg_error)?;
            let n = tx
                .execute("DELETE FROM kiln_models WHERE name = $1", &[&name])
                .await
                .map_err(pg::pg_error)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&pg::MODELS_CHANNEL, &name])
                .await
                .map_err(pg::pg_error)?;
            tx.commit().await.map_err(pg::pg_error)?;
            Ok(n > 0)
        })
        .await
        .map_err(from_pg)?;
        if !existed {
            return Err(StoreError::ModelNotFound(name.to_owned()));
        }
        tracing::info!(model = name, "model deleted from the catalog");
        if let Err(e) = self.objects.delete_all(&format!("models/{name}")).await {
            tracing::warn!(model = name, error = %e, "cannot remove the model's objects");
        }
        let dir = self.cache.join(name);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    async fn catalog(&self) -> Result<Catalog, StoreError> {
        let rows = pg::with_client(&self.pool, async |c| {
            c.query("SELECT model, version, hash FROM kiln_model_versions", &[])
                .await
                .map_err(pg::pg_error)
        })
        .await
        .map_err(from_pg)?;
        let mut catalog = Catalog::new();
        for r in rows {
            let (model, version, hash): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
            catalog
                .entry(model)
                .or_default()
                .insert(version as u64, Revision::new(hash));
        }
        let (cache, listed) = (self.cache.clone(), catalog.clone());
        // The cached copies of versions deleted elsewhere go too.
        let _ = tokio::task::spawn_blocking(move || prune_cache(&cache, &listed)).await;
        Ok(catalog)
    }

    async fn model_versions(&self, name: &str) -> Result<Option<Versions>, StoreError> {
        check_name(name)?;
        let rows = pg::with_client(&self.pool, async |c| {
            let exists = c
                .query_opt("SELECT 1 FROM kiln_models WHERE name = $1", &[&name])
                .await
                .map_err(pg::pg_error)?
                .is_some();
            if !exists {
                return Ok(None);
            }
            c.query(
                "SELECT version, hash FROM kiln_model_versions WHERE model = $1",
                &[&name],
            )
            .await
            .map(Some)
            .map_err(pg::pg_error)
        })
        .await
        .map_err(from_pg)?;
        Ok(rows.map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, i64>(0) as u64,
                        Revision::new(r.get::<_, String>(1)),
                    )
                })
                .collect()
        }))
    }
}

/// Removes cached versions (`<cache>/<model>/<hash>`) the catalog no longer lists.
fn prune_cache(cache: &Path, catalog: &Catalog) {
    let Ok(models) = std::fs::read_dir(cache) else {
        return;
    };
    for m in models.flatten() {
        let name = m.file_name().to_string_lossy().into_owned();
        let Ok(versions) = std::fs::read_dir(m.path()) else {
            continue;
        };
        for v in versions.flatten() {
            let hash = v.file_name().to_string_lossy().into_owned();
            if hash.starts_with('.') {
                continue;
            }
            let listed = catalog
                .get(&name)
                .is_some_and(|vs| vs.values().any(|r| *r == Revision::new(hash.clone())));
            if !listed {
                let _ = std::fs::remove_dir_all(v.path());
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ModelStore for ObjectStoreModels {
    fn scan(&self) -> StoreFuture<'_, Catalog> {
        Box::pin(self.catalog())
    }

    fn versions<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Versions>> {
        Box::pin(self.model_versions(name))
    }

    fn read<'a>(&'a self, name: &'a str, version: u64) -> StoreFuture<'a, StoredVersion> {
        Box::pin(self.read_version(name, version))
    }

    fn publish<'a>(&'a self, name: &'a str, files: ModelFiles) -> StoreFuture<'a, u64> {
        Box::pin(self.publish_version(name, files))
    }

    fn delete_version<'a>(&'a self, name: &'a str, version: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.delete_one(name, version))
    }

    fn delete_model<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.delete_all(name))
    }

    fn location(&self, name: &str, version: u64) -> String {
        format!("{}/models/{name} (version {version})", self.objects.url())
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.changes.clone()
    }
}
