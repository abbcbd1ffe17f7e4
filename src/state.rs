//! `AppState`: the clonable bag of handles every handler extracts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::dataset::DatasetStore;
use crate::registry::Registry;
use crate::training::jobs::JobManager;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub health: Arc<Health>,
    pub datasets: Arc<DatasetStore>,
    pub jobs: JobManager,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// API keys; `None`: every route is open.
    pub keys: Option<Arc<crate::auth::Keys>>,
}

/// Readiness: the registry's startup latch plus the draining flag set on shutdown.
#[derive(Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
