//! The only way into the registry: read a version directory, build the model, run one
//! warm-up forward pass, start its batcher, and only then make it AVAILABLE.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Fingerprint, LoadedVersion, Registry, Slot, VersionState};
use crate::batcher;
use crate::model::Model;
use crate::model::ModelError;

/// Loads a version directory and proves it runs (blocking: call from a blocking thread).
pub fn load_and_warm(dir: &Path, device: &candle_core::Device) -> Result<Model, ModelError> {
    let model = Model::load(dir, device)?;
    model.warm_up()?;
    Ok(model)
}

impl Registry {
    /// Loads one version in the background of the caller's task; the registry shows it
    /// LOADING meanwhile, then AVAILABLE or FAILED. Never holds the lock while loading.
    pub(crate) async fn load_version(
        self: &Arc<Self>,
        name: &str,
        version: u64,
        dir: &Path,
        fingerprint: Fingerprint,
    ) {
        self.set(
            name,
            version,
            Slot {
                state: VersionState::Loading,
                fingerprint: fingerprint.clone(),
            },
        );
        let device = self.device.clone();
        let path = dir.to_owned();
        let started = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || load_and_warm(&path, &device))
            .await
            .unwrap_or_else(|e| Err(ModelError::Invalid(format!("the loader panicked: {e}"))));
        let state = match loaded {
            Ok(model) => {
                for t in model.unused_tensors() {
                    tracing::warn!(model = name, version, tensor = %t, "tensor in the weights file is not used by any layer");
                }
                let model = Arc::new(model);
                let handle = batcher::spawn(
                    model.clone(),
                    batcher::Spec {
                        name,
                        version,
                        batching: self.config.batching_for(name),
                        workers: self.config.workers,
                        threads: self.config.threads,
                    },
                    self.metrics.for_version(name, version),
                );
                tracing::info!(model = name, version, path = %dir.display(), ms = started.elapsed().as_millis() as u64, "version available");
                VersionState::Available(Arc::new(LoadedVersion {
                    name: name.to_owned(),
                    version,
                    path: dir.to_owned(),
                    model,
                    batcher: handle,
                    loaded_at: SystemTime::now(),
                }))
            }
            Err(e) => {
                tracing::error!(model = name, version, path = %dir.display(), error = %e, "version failed to load");
                VersionState::Failed(e.to_string())
            }
        };
        self.set(name, version, Slot { state, fingerprint });
    }
}
