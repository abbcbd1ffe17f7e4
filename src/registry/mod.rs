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
use std::time::SystemTime;

use crate::batcher::BatcherHandle;
use crate::config::RegistryConfig;
use crate::error::Error;
use crate::model::Model;

pub use loader::load_and_warm;
pub use watcher::spawn_watcher;

/// A version that serves: its model and its batcher.
pub struct LoadedVersion {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub model: Arc<Model>,
    pub batcher: BatcherHandle,
    pub loaded_at: SystemTime,
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

/// What the watcher saw of a version directory the last time it loaded it: a changed
/// fingerprint makes a failed version load again.
pub(crate) type Fingerprint = Vec<(u64, Option<SystemTime>)>;

#[derive(Clone)]
pub(crate) struct Slot {
    pub state: VersionState,
    pub fingerprint: Fingerprint,
}

/// The shared registry. Cheap to read, written only by the watcher.
pub struct Registry {
    config: RegistryConfig,
    metrics: Arc<crate::metrics::Metrics>,
    device: candle_core::Device,
    models: RwLock<BTreeMap<String, BTreeMap<u64, Slot>>>,
    /// Models an operator unloaded (`/v2/repository/models/{m}/unload`): the watcher leaves
    /// them unloaded until they are loaded again.
    unloaded: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One sync at a time (the watcher's and a trainer's publish may race).
    sync_lock: tokio::sync::Mutex<()>,
    /// Set once the first scan has loaded (or failed) every model found at startup.
    initial_load_done: AtomicBool,
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
        device: candle_core::Device,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Registry {
            config,
            metrics,
            device,
            models: RwLock::new(BTreeMap::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            unloaded: std::sync::Mutex::new(std::collections::HashSet::new()),
            initial_load_done: AtomicBool::new(false),
        }
    }

    /// Loads the model's versions now (its policy applies) and lets the watcher keep it
    /// loaded. `ModelNotFound` when the models directory has no such model.
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        if !self.config.models_dir.join(name).is_dir() {
            return Err(Error::ModelNotFound(name.to_owned()));
        }
        self.unloaded
            .lock()
            .expect("unloaded set lock")
            .remove(name);
        self.sync().await;
        Ok(())
    }

    /// Unloads every version of a model (requests in flight finish first) and keeps it
    /// unloaded until `load_model`.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        if !self.config.models_dir.join(name).is_dir() && self.view(name).is_err() {
            return Err(Error::ModelNotFound(name.to_owned()));
        }
        self.unloaded
            .lock()
            .expect("unloaded set lock")
            .insert(name.to_owned());
        self.sync().await;
        Ok(())
    }

    pub(crate) fn is_unloaded(&self, name: &str) -> bool {
        self.unloaded
            .lock()
            .expect("unloaded set lock")
            .contains(name)
    }

    /// Brings the registry in line with the models directory now (after a publish, an
    /// upload or a delete) instead of at the next poll.
    pub async fn refresh(self: &Arc<Self>) {
        self.sync().await;
    }

    /// Releases the readiness latch (the watcher does this after its first scan).
    pub fn mark_initial_load_done(&self) {
        self.initial_load_done.store(true, Ordering::Release);
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

/// Model names: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, no `..`. Checked before any path is built.
pub fn valid_model_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::valid_model_name;

    #[test]
    fn model_names() {
        for ok in ["iris", "a", "m-1.2_x", &"x".repeat(64)] {
            assert!(valid_model_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a..b",
            "a b",
            &"x".repeat(65),
            "é",
        ] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }
}
