//! The model store: the one owner of where model versions live and how they get there.
//!
//! Everything outside this module names a version by model name and version number only: the
//! layout (file names, directories, staging, trash), the name rules, scanning, reading,
//! publishing and deleting are the store's. [`ModelStore`] is the seam; [`LocalDir`] is the
//! models directory of one machine (docs/model-format.md). A store for object storage with
//! a database catalog goes behind the same trait: `scan` is then a query, a [`Revision`] a
//! content hash, `read` a download into a local cache, and `publish` an upload under the hash
//! followed by one committed row.
//!
//! Who calls what:
//! - the registry's watcher task: [`ModelStore::scan`] every poll, [`ModelStore::read`] for
//!   each version it loads (then [`load_and_warm`] on a blocking thread);
//! - uploads, `kiln import`, `kiln train` and finished training jobs:
//!   [`validate_and_publish`], then the registry loads the one new version;
//! - the repository API: [`ModelStore::delete_version`], [`ModelStore::delete_model`].
//!
//! The trait is object-safe (`Arc<dyn ModelStore>`): the backend is chosen at startup from
//! configuration, and a generic parameter would spread through `Registry`, `AppState`, the
//! job manager and every handler for no gain (no store call is on the predict path). Its
//! methods are async because the remote backends are; the local one runs its file-system
//! work on tokio's blocking pool.

mod error;
mod local;
mod object;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use candle_core::{Device, Tensor};
use futures_util::future::BoxFuture;

use crate::model::format::ModelSpec;
use crate::model::Model;
use crate::model::ModelError;

pub use error::StoreError;
pub use local::{read_version_dir, LocalDir};
pub use object::ObjectStoreModels;

/// A store operation's future (boxed: the trait must stay object-safe).
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// What a version's stored files are, as far as change detection goes: equal revisions mean
/// the same content. Opaque: sizes and modification times for [`LocalDir`], a content hash
/// for a store that has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revision(String);

impl Revision {
    pub fn new(s: impl Into<String>) -> Self {
        Revision(s.into())
    }
}

/// One model's versions and their revisions.
pub type Versions = BTreeMap<u64, Revision>;

/// Every model that has at least one version.
pub type Catalog = BTreeMap<String, Versions>;

/// The files of a version, in memory: the spec (`model.json`) and the weights
/// (safetensors), each with where it came from, which every error message names, and a
/// transformer's Hugging Face files ([`EXTRA_FILES`]). `Bytes`, so validating and
/// publishing the same upload shares one buffer.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub spec: Bytes,
    pub weights: Bytes,
    pub spec_origin: PathBuf,
    pub weights_origin: PathBuf,
    /// Files beside those two, by name (only names in [`EXTRA_FILES`]); empty for kiln's
    /// layer-list models.
    pub extra: BTreeMap<&'static str, Bytes>,
}

/// The other files a version may hold: a transformer's `config.json` and `tokenizer.json`
/// (docs/text-models.md).
pub const EXTRA_FILES: [&str; 2] = [crate::text::CONFIG_FILE, crate::text::TOKENIZER_FILE];

impl ModelFiles {
    /// Files that arrived without a path of their own (an upload): errors name them by their
    /// role (`model.json`, `model.safetensors`).
    pub fn new(spec: impl Into<Bytes>, weights: impl Into<Bytes>) -> Self {
        ModelFiles {
            spec: spec.into(),
            weights: weights.into(),
            spec_origin: PathBuf::from(local::SPEC_FILE),
            weights_origin: PathBuf::from(local::WEIGHTS_FILE),
            extra: BTreeMap::new(),
        }
    }

    /// A transformer version's files (`kiln import --hf`).
    pub fn transformer(imported: crate::text::import::Imported) -> Self {
        let spec = serde_json::to_vec_pretty(&imported.spec).expect("text specs serialize");
        let mut files = ModelFiles::new(spec, imported.weights);
        files
            .extra
            .insert(crate::text::CONFIG_FILE, imported.config.into());
        files
            .extra
            .insert(crate::text::TOKENIZER_FILE, imported.tokenizer.into());
        files
    }

    /// Reads a spec and a weights file from anywhere (`kiln import`); errors name the paths.
    pub fn read(spec: &Path, weights: &Path) -> Result<Self, StoreError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| StoreError::Io {
                action: "read",
                at: p.display().to_string(),
                source,
            })
        };
        Ok(ModelFiles {
            spec: read(spec)?.into(),
            weights: read(weights)?.into(),
            spec_origin: spec.to_owned(),
            weights_origin: weights.to_owned(),
            extra: BTreeMap::new(),
        })
    }

    /// The files of a model trained in this process.
    pub fn trained(
        spec: &ModelSpec,
        weights: &HashMap<String, Tensor>,
    ) -> Result<Self, StoreError> {
        let json = serde_json::to_vec_pretty(spec).expect("model specs serialize");
        let tensors = safetensors::tensor::serialize(weights.iter(), None).map_err(|e| {
            StoreError::Invalid(ModelError::Invalid(format!(
                "the trained weights cannot be written as safetensors: {e}"
            )))
        })?;
        Ok(ModelFiles::new(json, tensors))
    }
}

/// A version as read back from the store.
#[derive(Debug)]
pub struct StoredVersion {
    pub files: ModelFiles,
    /// Where the version lives on this machine (shown in the model status).
    pub location: PathBuf,
    /// The revision of what was read.
    pub revision: Revision,
}

/// The storage of model versions. See the module doc for who calls what.
pub trait ModelStore: Send + Sync + 'static {
    /// Every model with at least one version. Unfinished publishes, deleted versions on their
    /// way out and anything that is not a version are not listed.
    fn scan(&self) -> StoreFuture<'_, Catalog>;

    /// One model's versions; `None` when the store has no such model (a model may exist with
    /// no version yet).
    fn versions<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Versions>>;

    /// A version's files. `VersionNotFound` when it is not (or no longer) there.
    fn read<'a>(&'a self, name: &'a str, version: u64) -> StoreFuture<'a, StoredVersion>;

    /// Stores `files` as the next version of `name` and returns its number. Atomic: readers
    /// see the complete version or none, also when the process dies half-way. Call
    /// [`validate_and_publish`] instead: this does not look inside the files.
    fn publish<'a>(&'a self, name: &'a str, files: ModelFiles) -> StoreFuture<'a, u64>;

    /// Removes a version: it disappears from `scan` at once.
    fn delete_version<'a>(&'a self, name: &'a str, version: u64) -> StoreFuture<'a, ()>;

    /// Removes a model and every version.
    fn delete_model<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()>;

    /// Where a version lives, for people (log lines, `kiln import`'s answer).
    fn location(&self, name: &str, version: u64) -> String;

    /// A counter that moves when another process may have changed the store (a shared
    /// catalog's notifications): the registry's watcher rescans at once instead of at its
    /// next poll. `None` (the default): polling only.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Model names: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, no `..`. Checked before any path is built
/// or any lookup is made, so a name can never reach outside the store.
pub fn valid_model_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        && !name.contains("..")
}

/// [`valid_model_name`] as an error naming the rule.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    if valid_model_name(name) {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

/// Parses the spec, reads the weights, builds the layers (checking every tensor) and runs one
/// forward pass on a zero instance. CPU-bound and blocking: call it from a blocking thread.
pub fn load_and_warm(files: &ModelFiles, device: &Device) -> Result<Model, ModelError> {
    let spec = parse_spec(&files.spec, &files.spec_origin)?;
    let tensors = candle_core::safetensors::load_buffer(&files.weights, device).map_err(|e| {
        ModelError::Weights {
            path: files.weights_origin.clone(),
            message: format!("not a valid safetensors file: {e}"),
        }
    })?;
    let model = Model::from_tensors(spec, tensors, device)?;
    model.warm_up()?;
    Ok(model)
}

/// A version built and warmed up, of either kind.
// One value per load, moved once into an `Arc`: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// kiln's own layer-list model.
    Layers(Model),
    /// A pretrained transformer (`"kind": "transformer"`).
    Text(crate::text::TextModel),
}

impl Loaded {
    /// Tensors of the weights file that no layer reads (layer-list models only).
    pub fn unused_tensors(&self) -> &[String] {
        match self {
            Loaded::Layers(m) => m.unused_tensors(),
            Loaded::Text(_) => &[],
        }
    }
}

/// [`load_and_warm`] for a version of any kind: `model.json`'s `kind` decides.
pub fn load_any(files: &ModelFiles, device: &Device) -> Result<Loaded, ModelError> {
    match crate::text::format::kind_of(&files.spec) {
        None => load_and_warm(files, device).map(Loaded::Layers),
        Some(_) => {
            let origin = files.spec_origin.parent().unwrap_or(Path::new(""));
            let extra = |name: &str| {
                files.extra.get(name).ok_or_else(|| ModelError::Invalid(format!(
                    "{}: missing (a transformer version holds config.json, tokenizer.json, model.safetensors and model.json)",
                    origin.join(name).display()
                )))
            };
            let text = crate::text::TextFiles {
                spec: &files.spec,
                config: extra(crate::text::CONFIG_FILE)?,
                tokenizer: extra(crate::text::TOKENIZER_FILE)?,
                weights: &files.weights,
                origin,
            };
            crate::text::TextModel::load_and_warm(&text, device).map(Loaded::Text)
        }
    }
}

/// Parses `model.json`; the error names `origin` and says what is wrong and where.
fn parse_spec(bytes: &[u8], origin: &Path) -> Result<ModelSpec, ModelError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ModelError::Spec {
        path: origin.to_owned(),
        message: format!("not UTF-8: {e}"),
    })?;
    ModelSpec::from_json(text).map_err(|message| ModelError::Spec {
        path: origin.to_owned(),
        message,
    })
}

/// What [`validate_and_publish`] stored.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    /// Tensors of the weights file that no layer reads (worth a warning, not an error).
    pub unused_tensors: Vec<String>,
}

/// The one way a new version enters the store: the files are parsed, built and run once on
/// the CPU (a version that cannot serve is refused with the reason: which file, tensor or
/// layer), and only then published. The caller tells the registry to load it.
pub async fn validate_and_publish(
    store: &dyn ModelStore,
    name: &str,
    files: ModelFiles,
) -> Result<Published, StoreError> {
    check_name(name)?;
    let checked = files.clone();
    let unused_tensors = tokio::task::spawn_blocking(move || {
        load_any(&checked, &Device::Cpu).map(|m| m.unused_tensors().to_vec())
    })
    .await
    .unwrap_or_else(|e| Err(ModelError::Invalid(format!("validation panicked: {e}"))))?;
    let version = store.publish(name, files).await?;
    Ok(Published {
        version,
        unused_tensors,
    })
}

#[cfg(test)]
mod tests;
