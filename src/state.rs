//! `AppState`: the handles every handler extracts, behind one `Arc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::dataset::DatasetStore;
use crate::jobs::JobManager;
use crate::registry::Registry;
use crate::store::ModelStore;

/// Cheap to clone (one reference count): every handler and middleware extracts it.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles behind an [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    /// Where model versions live: uploads and deletes go through it.
    pub models: Arc<dyn ModelStore>,
    pub health: Arc<Health>,
    pub datasets: Arc<DatasetStore>,
    pub jobs: JobManager,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// API keys; `None`: every route is open.
    pub keys: Option<Arc<crate::auth::Keys>>,
}

impl Shared {
    /// The serving core over this server's registry and request limits (two pointers:
    /// made per request, nothing to keep in step).
    pub fn serving(&self) -> crate::serving::Serving<'_> {
        crate::serving::Serving::new(&self.registry, self.config.max_rows_per_request)
    }
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
