//! The model registry: name → version → state, shared by every request.
//!
//! Requests read it under a short `RwLock` read guard that only clones an
//! `Arc<LoadedVersion>`; the watcher task writes under the write guard only to swap a state,
//! never while loading or computing. A version leaves the map when it is unloaded and is
//! dropped (its batcher and workers ending) once the last in-flight request lets go of it.

mod loader;
mod watcher;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use crate::batcher::{BatcherHandle, StatsSnapshot, TextBatcher};
use crate::config::RegistryConfig;
use crate::error::Error;
use crate::model::Model;
use crate::store::{ModelStore, Revision};
use crate::text::TextModel;

pub use watcher::spawn_watcher;

/// A version that serves: its model and its batcher.
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub served: Served,
    pub loaded_at: SystemTime,
}

/// What kind of model a version is, with the batcher that computes it.
pub enum Served {
    /// kiln's own layer-list model: rows in, rows out (TF Serving's and V2's APIs).
    Layers(LayerModel),
    /// A pretrained transformer: texts in, embeddings out (the text API).
    Text(TextServed),
}

pub struct LayerModel {
    pub model: Arc<Model>,
    pub batcher: BatcherHandle,
}

pub struct TextServed {
    pub model: Arc<TextModel>,
    pub batcher: TextBatcher,
}

impl LoadedVersion {
    /// The layer-list model, or 400 naming the API a transformer answers.
    pub fn layers(&self) -> Result<&LayerModel, Error> {
        match &self.served {
            Served::Layers(l) => Ok(l),
            Served::Text(_) => Err(Error::InvalidInput(format!(
                "model '{}' is a transformer: it takes texts (/models/{}/embed, /v1/embeddings, :predict with a list of texts, V2 BYTES; docs/text-models.md)",
                self.name, self.name
            ))),
        }
    }

    /// Whether this is a transformer (a question the predict paths ask first: no error is
    /// built for the answer "no").
    pub fn is_text(&self) -> bool {
        matches!(self.served, Served::Text(_))
    }

    /// The transformer, or 400 when this is a layer-list model.
    pub fn text(&self) -> Result<&TextServed, Error> {
        match &self.served {
            Served::Text(t) => Ok(t),
            Served::Layers(_) => Err(Error::InvalidInput(format!(
                "model '{}' is not a text model: use /v1/models/{}:predict or /v2/models/{}/infer",
                self.name, self.name, self.name
            ))),
        }
    }

    /// Its batcher's counters.
    pub fn stats(&self) -> StatsSnapshot {
        match &self.served {
            Served::Layers(l) => l.batcher.stats(),
            Served::Text(t) => t.batcher.stats(),
        }
    }

    /// A request answered, end to end (decoded to encoded), started at `start`:
    /// `kiln_request_duration_seconds{model, version, protocol}`, text and layer models alike.
    pub fn observe_request(&self, protocol: crate::metrics::Protocol, start: Instant) {
        let seconds = start.elapsed().as_secs_f64();
        match &self.served {
            Served::Layers(l) => l.batcher.metrics().observe_request(protocol, seconds),
            Served::Text(t) => t.batcher.metrics().observe_request(protocol, seconds),
        }
    }

    /// Entries waiting in its queue.
    pub fn queue_depth(&self) -> usize {
        match &self.served {
            Served::Layers(l) => l.batcher.queue_depth(),
            Served::Text(t) => t.batcher.queue_depth(),
        }
    }
}

impl Drop for LoadedVersion {
    fn drop(&mut self) {
        tracing::info!(model = %self.name, version = self.version, "version unloaded");
    }
}

/// The state of one version, as TF Serving names them (plus FAILED).
#[derive(Clone)]
pub enum VersionState {
    Loading,
    Available(Arc<LoadedVersion>),
    /// The load failed; the message names the file and the reason.
    Failed(String),
    /// Unloaded by the version policy (a newer version replaced it); still on disk.
    End,
}

impl VersionState {
    /// The loaded version, if this one serves.
    pub fn loaded(&self) -> Option<&Arc<LoadedVersion>> {
        if let VersionState::Available(lv) = self {
            Some(lv)
        } else {
            None
        }
    }

    /// Why the load failed, if it did.
    pub fn error(&self) -> Option<&str> {
        if let VersionState::Failed(m) = self {
            Some(m)
        } else {
            None
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Available(_) => "AVAILABLE",
            VersionState::Failed(_) => "FAILED",
            VersionState::End => "END",
        }
    }
}

#[derive(Clone)]
pub(crate) struct Slot {
    pub state: VersionState,
    /// The store's revision of the files this state came from: a failed version is loaded
    /// again only once its revision changes.
    pub revision: Revision,
}

/// The shared registry. Cheap to read; written by the watcher's syncs and by
/// [`Registry::load_version`], one at a time.
pub struct Registry {
    config: RegistryConfig,
    store: Arc<dyn ModelStore>,
    metrics: Arc<crate::metrics::Metrics>,
    device: candle_core::Device,
    models: RwLock<BTreeMap<String, BTreeMap<u64, Slot>>>,
    /// Models an operator unloaded (`/v2/repository/models/{m}/unload`): the watcher leaves
    /// them unloaded until they are loaded again.
    unloaded: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One sync at a time (the watcher's, an upload's and a finished job's may race).
    sync_lock: tokio::sync::Mutex<()>,
    /// Set once the first scan has loaded (or failed) every model found at startup.
    initial_load_done: AtomicBool,
    /// Why the last scan of the store failed (`None`: it answered); readiness shows it.
    scan_error: std::sync::Mutex<Option<String>>,
}

/// A copy of one model's states, for listing.
pub struct ModelView {
    pub name: String,
    pub versions: Vec<(u64, VersionState)>,
    pub default_version: Option<u64>,
}

impl Registry {
    pub fn new(
        config: RegistryConfig,
        store: Arc<dyn ModelStore>,
        device: candle_core::Device,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Registry {
            config,
            store,
            metrics,
            device,
            models: RwLock::new(BTreeMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            unloaded: std::sync::Mutex::new(std::collections::HashSet::new()),
            initial_load_done: AtomicBool::new(false),
            scan_error: std::sync::Mutex::new(None),
        }
    }

    /// Loads the model's versions now (its policy applies) and lets the watcher keep it
    /// loaded. `ModelNotFound` when the store has no such model.
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        if self.store.versions(name).await?.is_none() {
            return Err(Error::ModelNotFound(name.to_owned()));
        }
        self.unloaded
            .lock()
            .expect("unloaded set lock")
            .remove(name);
        self.refresh_model(name).await
    }

    /// Unloads every version of a model (requests in flight finish first) and keeps it
    /// unloaded until `load_model`.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        if self.store.versions(name).await?.is_none() && self.view(name).is_err() {
            return Err(Error::ModelNotFound(name.to_owned()));
        }
        self.unloaded
            .lock()
            .expect("unloaded set lock")
            .insert(name.to_owned());
        self.refresh_model(name).await
    }

    pub(crate) fn is_unloaded(&self, name: &str) -> bool {
        self.unloaded
            .lock()
            .expect("unloaded set lock")
            .contains(name)
    }

    /// Brings one model in line with the store now (after a delete, a load or an unload)
    /// instead of at the next poll.
    pub async fn refresh_model(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        let _one_at_a_time = self.sync_lock.lock().await;
        let versions = self.store.versions(name).await?;
        self.sync_model(name, versions.as_ref(), None).await;
        Ok(())
    }

    /// Loads a version that was just published (an upload, a finished job) as the watcher
    /// would — read, build, warm up, then swap, unloading what it replaces under the model's
    /// policy — without waiting for the next poll and without scanning other models. Returns
    /// the version's state: `AVAILABLE`, `FAILED` with the reason, or `END` when the model
    /// is unloaded or its policy does not serve this version.
    pub async fn load_version(
        self: &Arc<Self>,
        name: &str,
        version: u64,
    ) -> Result<VersionState, Error> {
        let _one_at_a_time = self.sync_lock.lock().await;
        let versions = self.store.versions(name).await?;
        if !versions.as_ref().is_some_and(|v| v.contains_key(&version)) {
            return Err(crate::store::StoreError::VersionNotFound {
                name: name.to_owned(),
                version,
            }
            .into());
        }
        self.sync_model(name, versions.as_ref(), Some(version))
            .await;
        Ok(self.state_of(name, version).unwrap_or(VersionState::End))
    }

    /// Releases the readiness latch (the watcher does this after its first scan).
    pub fn mark_initial_load_done(&self) {
        self.initial_load_done.store(true, Ordering::Release);
    }

    /// Why the model store could not be listed at the last scan (a shared store that is
    /// unreachable); `None` when it answered. Loaded versions serve either way.
    pub fn store_unavailable(&self) -> Option<String> {
        self.scan_error.lock().expect("scan error lock").clone()
    }

    pub(crate) fn set_scan_error(&self, e: Option<String>) {
        *self.scan_error.lock().expect("scan error lock") = e;
    }

    pub fn is_initial_load_done(&self) -> bool {
        self.initial_load_done.load(Ordering::Acquire)
    }

    /// The version to serve: the given one, or the highest available.
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedVersion>, Error> {
        let models = self.models.read().expect("registry lock is never poisoned");
        let versions = models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_owned()))?;
        match version {
            Some(v) => match versions.get(&v).map(|s| &s.state) {
                Some(VersionState::Available(lv)) => Ok(lv.clone()),
                Some(VersionState::Loading) => Err(Error::ModelUnavailable {
                    name: name.to_owned(),
                    reason: format!("version {v} is loading"),
                }),
                Some(VersionState::Failed(msg)) => Err(Error::VersionNotFound {
                    name: name.to_owned(),
                    version: v.to_string(),
                    detail: format!(": it failed to load: {msg}"),
                }),
                Some(VersionState::End) => Err(Error::VersionNotFound {
                    name: name.to_owned(),
                    version: v.to_string(),
                    detail: ": it is not loaded under the model's version policy".into(),
                }),
                None => Err(Error::VersionNotFound {
                    name: name.to_owned(),
                    version: v.to_string(),
                    detail: String::new(),
                }),
            },
            None => versions
                .values()
                .rev()
                .find_map(|s| s.state.loaded().cloned())
                .ok_or_else(|| Error::ModelUnavailable {
                    name: name.to_owned(),
                    reason: describe_unavailable(versions),
                }),
        }
    }

    /// Every model with its versions' states (a copy; no lock is held afterwards).
    pub fn list(&self) -> Vec<ModelView> {
        let models = self.models.read().expect("registry lock is never poisoned");
        models
            .iter()
            .map(|(name, versions)| ModelView {
                name: name.clone(),
                versions: versions
                    .iter()
                    .map(|(v, s)| (*v, s.state.clone()))
                    .collect(),
                default_version: versions
                    .iter()
                    .rev()
                    .find(|(_, s)| matches!(s.state, VersionState::Available(_)))
                    .map(|(v, _)| *v),
            })
            .collect()
    }

    /// One model's view, or 404.
    pub fn view(&self, name: &str) -> Result<ModelView, Error> {
        self.list()
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::ModelNotFound(name.to_owned()))
    }

    /// True while any version is loading (readiness waits for the startup loads only).
    pub fn all_settled(&self) -> bool {
        let models = self.models.read().expect("registry lock is never poisoned");
        models
            .values()
            .flat_map(|v| v.values())
            .all(|s| !matches!(s.state, VersionState::Loading))
    }

    fn set(&self, name: &str, version: u64, slot: Slot) {
        let mut models = self
            .models
            .write()
            .expect("registry lock is never poisoned");
        models
            .entry(name.to_owned())
            .or_default()
            .insert(version, slot);
    }

    fn snapshot(&self) -> BTreeMap<String, BTreeMap<u64, Slot>> {
        self.models
            .read()
            .expect("registry lock is never poisoned")
            .clone()
    }
}

fn describe_unavailable(versions: &BTreeMap<u64, Slot>) -> String {
    let parts: Vec<String> = versions
        .iter()
        .map(|(v, s)| match s.state.error() {
            Some(m) => format!("version {v} failed to load: {m}"),
            None => format!("version {v} is {}", s.state.name()),
        })
        .collect();
    if parts.is_empty() {
        "no versions".into()
    } else {
        parts.join("; ")
    }
}
