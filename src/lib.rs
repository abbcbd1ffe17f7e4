//! kiln trains neural networks and serves them over HTTP, in one binary.
//!
//! # Layout
//! Every module uses only modules listed above it (checked by `tests/it/architecture.rs`):
//! - [`remote`]: connections to the engines replicas share: object storage (S3, GCS, Azure,
//!   a shared directory) and PostgreSQL (a pool, the catalog schema, LISTEN).
//! - base, knowing nothing of kiln: [`error`] (the serving path's errors; each domain owns
//!   its own enum), [`device`] (`cpu` / `cuda:N`, the compute threads), [`shutdown`],
//!   [`metrics`] (Prometheus families), [`dataset`] (uploaded data sets: files, parsing,
//!   types, profiles).
//! - [`config`]: defaults → `config/kiln.toml` → `KILN_*` → flags, one piece per component
//!   (registry, batching, training, api, connections). [`preprocess`]: fitted transforms
//!   applied to named-feature instances.
//! - [`model`]: `model.json` + safetensors → candle layers (one file per layer family); the
//!   signature, labels and scores a model answers with. [`telemetry`]: logs.
//! - [`text`]: pretrained transformer encoders (BERT): tokenizer + encoder + pooling, and
//!   `kiln import --hf` (docs/text-models.md).
//! - [`batcher`]: per-version queue, batching policy and worker threads. [`store`]: the
//!   model store, where versions live: layout, name rules, scans, publish (validated first)
//!   and delete; nothing else touches the models directory.
//! - [`registry`]: name → version → state; loads from the store, the watcher. [`training`]:
//!   one training run (spec and its defaults, preparation, the loop, the math); `kiln train`.
//! - [`serving`]: the one call every protocol makes: decoded rows → batcher → a
//!   `Prediction` in model terms (labels, scores, original units); explanations (Integrated
//!   Gradients on a compute thread) and evaluation (a labelled table, chunk by chunk through
//!   the batcher, training's metrics). [`jobs`]: training runs
//!   as server jobs: queue, job threads, checkpoints, and the [`jobs::JobStore`] that holds
//!   every job's state.
//! - [`auth`]: API keys and scopes. [`server`]: the accept loop: connection limit, read
//!   timeouts, TLS.
//! - [`state`]: the handles every handler extracts.
//! - [`api`]: the HTTP edge: routes (each declared once, with its scope), decoders and
//!   encoders of TF Serving's REST API and the Open Inference Protocol, datasets, jobs,
//!   the repository, health, metrics, the OpenAPI document.
//! - [`grpc`]: the gRPC edge on a listener of its own: the Open Inference Protocol (its
//!   tensors decoded and encoded by `api::v2`'s protocol-independent halves), TF Serving's
//!   PredictionService and ModelService (through REST's decoders and signatures) and
//!   `grpc.health.v1`.
//! - This file assembles the server ([`serve`]); the binary's `cli/` holds the commands.

//! # The prediction flow
//! ```text
//! POST /v1/models/iris:predict
//!   api: name:verb → serving.version (registry: clone an Arc) → decode + preprocess,
//!        refusing more rows than the core's limit as it reads
//!   serving: span fields, the default deadline → batcher.run
//!   batcher queue: the entry waits (a push wakes a worker only if one is idle)
//!   worker thread: take what is queued (≤ max_batch_size rows) → one tensor → forward →
//!                  one copy back → rows scattered to the replies
//!   serving: a Prediction (regression un-scaled; labels and scores read lazily)
//!   api: {"predictions": …} with x-queue-time / x-inference-time / x-total-time
//! ```
//!
//! # The training-job flow
//! ```text
//! POST /v1/training-jobs
//!   api → jobs::JobManager::submit: the spec resolved against its dataset (400 if it cannot
//!         train) → JobStore::insert (queued) → 202 + Location
//!   scheduler task: JobStore::claim_next (queued → running, once) → a job thread
//!   job thread: training::run: prepare → train; per epoch the checkpoint (with the
//!               epoch's history entry), JobStore::record_epoch, an event for GET …/events
//!               → store::validate_and_publish → the registry loads that version
//!               → JobStore::finish (or requeue, on shutdown)
//!   a search: the job thread queues one child job per trial (JobStore::spawn_children,
//!               running → waiting, slot freed); schedulers claim the trials like any job;
//!               once all have ended, claim_next takes the parent again → training::search::
//!               conclude (winner, refit) → publish
//! ```
//! `kiln train` runs the same `training::run` without the job system.
//!
//! The two doors tests use: [`serve`] (a real socket) and [`api::router`].

pub mod api;
pub mod auth;
pub mod batcher;
pub mod config;
pub mod dataset;
pub mod device;
pub mod error;
pub mod grpc;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod registry;
pub mod remote;
pub mod server;
pub mod serving;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod training;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::Config;

/// mimalloc instead of glibc's malloc for every binary that links kiln (the server, the
/// tests, the benches). Serving allocates on one thread and frees on another (request rows
/// on the runtime, freed by a worker; outputs the other way), which glibc's arenas handle
/// with locks and slow paths; training reuses large blocks that glibc hands back to the OS
/// and faults in again (docs/candle.md). See docs/benchmarks.md for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves until `shutdown` resolves, then stops accepting, answers every request already
/// accepted (bounded by `drain_timeout`) and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = shutdown::Drain> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_routes(config, listener, axum::Router::new(), shutdown).await
}

/// [`serve`] with `extra` routes beside kiln's own (see [`api::router_with`]): for tests that
/// need a route the product must not have.
pub async fn serve_with_routes(
    config: Config,
    listener: TcpListener,
    extra: axum::Router<state::AppState>,
    shutdown: impl Future<Output = shutdown::Drain> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        http: listener,
        grpc: None,
    };
    serve_on(config, listeners, extra, shutdown).await
}

/// What replicas share besides the job tables: object storage and the catalog.
struct Shared {
    objects: remote::Objects,
    pool: deadpool_postgres::Pool,
    /// Ticks on every catalog notification (models published or deleted elsewhere).
    changes: tokio::sync::watch::Receiver<u64>,
}

/// Opens the object store `url` (one request: it must answer) and the catalog in the
/// PostgreSQL database `db` (migrated, listened to). A startup error names the store or
/// the database (password masked) and the reason.
async fn open_shared(url: &str, db: &str, database: &config::Database) -> anyhow::Result<Shared> {
    let objects = remote::Objects::open(url).map_err(anyhow::Error::msg)?;
    objects
        .check()
        .await
        .with_context(|| format!("opening the object store {url}"))?;
    let pool = remote::pg::connect(db)
        .await
        .with_context(|| format!("opening the catalog in {}", database.shown()))?;
    let changes = remote::pg::listen(db, remote::pg::MODELS_CHANNEL)
        .with_context(|| format!("listening on {}", database.shown()))?;
    Ok(Shared {
        objects,
        pool,
        changes,
    })
}

/// The sockets a server answers on, bound by the caller (so tests can bind port 0 and learn
/// the ports): HTTP, and gRPC unless it is off.
pub struct Listeners {
    pub http: TcpListener,
    /// The gRPC listener (`grpc_listen`); `None`: no gRPC.
    pub grpc: Option<TcpListener>,
}

/// [`serve_with_routes`] on both listeners: the HTTP and the gRPC one stop, drain and are
/// drained together (within one `drain_timeout`).
pub async fn serve_on(
    config: Config,
    listeners: Listeners,
    extra: axum::Router<state::AppState>,
    shutdown: impl Future<Output = shutdown::Drain> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        http: listener,
        grpc: grpc_listener,
    } = listeners;
    let device = config
        .registry
        .device
        .open()
        .context("opening the compute device")?;
    let config = Arc::new(config);
    let keys = match &config.api.api_keys {
        Some(path) => {
            let keys = auth::Keys::load(path)?;
            tracing::info!(file = %path.display(), "API keys required on every route but the health checks");
            Some(Arc::new(keys))
        }
        None => {
            tracing::warn!("no API key file (--api-keys / KILN_API_KEYS): every route is open to anyone who can reach this port");
            None
        }
    };
    // Before anything starts: a missing or invalid certificate is a startup error.
    let tls = config
        .connections
        .tls
        .as_ref()
        .map(server::tls::acceptor)
        .transpose()?;
    let metrics = Arc::new(metrics::Metrics::new());
    let database = config.training.database();
    let shared = match (&config.training.object_store, &database) {
        (Some(url), config::Database::Postgres(db)) => {
            Some(open_shared(&url.0, db, &database).await?)
        }
        _ => None,
    };
    let models: Arc<dyn store::ModelStore> = match &shared {
        Some(shared) => Arc::new(
            store::ObjectStoreModels::new(
                shared.objects.clone(),
                shared.pool.clone(),
                config.training.data_dir.join("cache").join("models"),
            )
            .with_changes(shared.changes.clone()),
        ),
        None => Arc::new(store::LocalDir::open(&config.registry.models_dir)),
    };
    let registry = Arc::new(registry::Registry::new(
        config.registry.clone(),
        models.clone(),
        device,
        metrics.clone(),
    ));
    let health = Arc::new(state::Health::default());
    let data_dir = &config.training.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let mut datasets = dataset::DatasetStore::open(data_dir)
        .context("opening the dataset store")?
        .with_max_upload_bytes(config.training.max_upload_bytes);
    if let Some(shared) = &shared {
        datasets = datasets.with_remote(dataset::remote::RemoteDatasets::new(
            shared.objects.clone(),
            shared.pool.clone(),
        ));
    }
    let datasets = Arc::new(datasets);
    let replica = &config.training.replica_id;
    let job_store: Arc<dyn jobs::JobStore> = match &database {
        config::Database::Sqlite(path) => Arc::new(
            jobs::SqliteJobStore::open(path)
                .with_context(|| format!("opening the job database {}", database.shown()))?
                .with_replica(replica.as_str()),
        ),
        config::Database::Postgres(url) => Arc::new(
            jobs::PgJobStore::connect(url, replica)
                .await
                .with_context(|| format!("opening the job database {}", database.shown()))?
                .with_lease(config.training.job_lease),
        ),
    };
    let jobs = jobs::JobManager::start(
        &config.training,
        jobs::JobParts {
            store: job_store,
            datasets: datasets.clone(),
            registry: registry.clone(),
            models: models.clone(),
            metrics: metrics.clone(),
            checkpoint_store: shared.as_ref().map(|s| s.objects.clone()),
        },
    )
    .context("starting the job manager")?;
    let state = state::AppState::new(state::Shared {
        config: config.clone(),
        registry: registry.clone(),
        models,
        health: health.clone(),
        datasets,
        jobs: jobs.clone(),
        metrics: metrics.clone(),
        keys,
    });
    // The gRPC listener stops when the HTTP one does (after the drain delay).
    let (stopped, mut grpc_stop) = tokio::sync::watch::channel(false);
    let grpc = match grpc_listener {
        Some(grpc_listener) => {
            let tls = config
                .connections
                .tls
                .as_ref()
                .map(server::tls::grpc_acceptor)
                .transpose()?;
            let addr = grpc_listener
                .local_addr()
                .context("reading the gRPC listening address")?;
            tracing::info!(%addr, tls = tls.is_some(), "kiln gRPC listening");
            let stop = async move {
                let _ = grpc_stop.wait_for(|stopped| *stopped).await;
            };
            Some(tokio::spawn(grpc::serve_until(
                grpc_listener,
                grpc::service(state.clone()),
                tls,
                grpc::Limits::new(&config.connections, &metrics.grpc),
                stop,
            )))
        }
        None => None,
    };
    let watcher = registry::spawn_watcher(registry);
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let model_store = match &config.training.object_store {
        Some(url) => url.0.clone(),
        None => config.registry.models_dir.display().to_string(),
    };
    tracing::info!(%addr, scheme, max_connections = config.connections.max_connections, replica = %replica, database = %database.shown(), models = %model_store, device = %config.registry.device, workers = config.registry.workers, threads = config.registry.threads, "kiln listening");

    let drain_jobs = jobs.clone();
    let stop = async move {
        let drain = shutdown.await;
        health.start_draining();
        if !drain.delay.is_zero() {
            // Readiness already answers 503; keep serving so the load balancer can notice.
            tokio::time::sleep(drain.delay).await;
        }
        // Running jobs stop at their next step and go back to the queue (checkpoint kept).
        drain_jobs.shutdown();
        let _ = stopped.send(true);
    };
    let server = server::Server::new(
        &config.connections,
        tls,
        api::router_with(state, extra),
        &metrics,
    );
    // The accept loop runs on a runtime worker, as `axum::serve` did when spawned.
    let open = tokio::spawn(server.serve_until(listener, stop))
        .await
        .context("the accept loop failed")?;
    let grpc_open = match grpc {
        Some(task) => Some(task.await.context("the gRPC accept loop failed")?),
        None => None,
    };
    // Listening has stopped; in-flight requests finish within the drain timeout.
    let drained = async {
        let grpc = async {
            if let Some(g) = grpc_open {
                g.shutdown().await;
            }
        };
        tokio::join!(open.shutdown(), grpc);
    };
    if tokio::time::timeout(config.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = config.drain_timeout.as_millis() as u64,
            "drain timeout passed; exiting with requests in flight"
        );
    }
    watcher.abort();
    tracing::info!("kiln stopped");
    Ok(())
}
