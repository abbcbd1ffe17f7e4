//! The only way into the registry: read a version from the store, build the model, run one
//! warm-up forward pass, start its batcher, and only then make it AVAILABLE.

use std::sync::Arc;
use std::time::SystemTime;

use super::{LayerModel, LoadedVersion, Registry, Served, Slot, TextServed, VersionState};
use crate::batcher;
use crate::model::ModelError;
use crate::store::{load_any, Loaded, Revision};

impl Registry {
    /// Loads one version in the background of the caller's task; the registry shows it
    /// LOADING meanwhile, then AVAILABLE or FAILED. Never holds the lock while loading.
    /// `seen` is the revision the caller's scan listed, kept when the read itself fails.
    pub(crate) async fn load(self: &Arc<Self>, name: &str, version: u64, seen: Revision) {
        self.set(
            name,
            version,
            Slot {
                state: VersionState::Loading,
                revision: seen.clone(),
            },
        );
        let started = std::time::Instant::now();
        let stored = match self.store.read(name, version).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(model = name, version, error = %e, "version failed to load");
                let state = VersionState::Failed(e.to_string());
                self.set(
                    name,
                    version,
                    Slot {
                        state,
                        revision: seen,
                    },
                );
                return;
            }
        };
        let device = self.device.clone();
        let files = stored.files;
        let loaded = tokio::task::spawn_blocking(move || load_any(&files, &device))
            .await
            .unwrap_or_else(|e| Err(ModelError::Invalid(format!("the loader panicked: {e}"))));
        let dir = stored.location;
        let state = match loaded {
            Ok(loaded) => {
                for t in loaded.unused_tensors() {
                    tracing::warn!(model = name, version, tensor = %t, "tensor in the weights file is not used by any layer");
                }
                let spec = batcher::Spec {
                    name,
                    version,
                    batching: self.config.batching_for(name),
                    workers: self.config.workers,
                    threads: self.config.threads,
                };
                let prom = self.metrics.for_version(name, version);
                let served = match loaded {
                    Loaded::Layers(model) => {
                        let model = Arc::new(model);
                        let batcher = batcher::spawn(model.clone(), spec, prom);
                        Served::Layers(LayerModel { model, batcher })
                    }
                    Loaded::Text(model) => {
                        let model = Arc::new(model);
                        let batcher = batcher::spawn_text(model.clone(), spec, prom);
                        Served::Text(TextServed { model, batcher })
                    }
                };
                tracing::info!(model = name, version, path = %dir.display(), ms = started.elapsed().as_millis() as u64, "version available");
                VersionState::Available(Arc::new(LoadedVersion {
                    name: name.to_owned(),
                    version,
                    path: dir,
                    served,
                    loaded_at: SystemTime::now(),
                }))
            }
            Err(e) => {
                tracing::error!(model = name, version, path = %dir.display(), error = %e, "version failed to load");
                VersionState::Failed(e.to_string())
            }
        };
        self.set(
            name,
            version,
            Slot {
                state,
                revision: stored.revision,
            },
        );
    }
}
