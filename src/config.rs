//! Configuration: built-in defaults → `config/kiln.toml` (or `--config`) → `KILN_*`
//! environment variables → command-line flags, validated into one typed piece per component.
//!
//! Each component declares its keys once, in a `layer!` block: the key's name in the file,
//! its flag and environment variable, its help and its default. The block makes a *layer*,
//! a struct of `Option`s that both the file and the flags produce (clap reads each flag
//! together with its environment variable, flag wins). Layers merge key by key, the
//! defaults fill in what is still unset, and the component's `validate` turns the result
//! into the piece its constructor takes:
//!
//! | piece                | keys                                     | taken by                        |
//! |----------------------|------------------------------------------|---------------------------------|
//! | [`RegistryConfig`]   | top level, `[batching]`, `[models.NAME]` | `Registry::new`                 |
//! | [`BatchConfig`]      | `[batching]`, and per model              | `batcher::spawn`                |
//! | [`TrainingConfig`]   | top level                                | `JobManager::start`, datasets   |
//! | [`ApiConfig`]        | top level                                | `api::router` and its extractors |
//! | [`ConnectionConfig`] | top level                                | `server::Server::new`           |
//!
//! What the process itself needs (listen address, log format, drain times) stays on
//! [`Config`]. Every key and its default is documented in `config/kiln.toml`; a unit test
//! keeps that file and these defaults equal.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::device::DeviceSpec;

/// The validated configuration of a server: one piece per component.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The gRPC listener's address; `None`: gRPC is off (an empty `grpc_listen`).
    pub grpc_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub drain_timeout: Duration,
    /// After SIGTERM, how long readiness answers 503 while requests are still served.
    pub drain_delay: Duration,
    pub registry: RegistryConfig,
    pub training: TrainingConfig,
    pub api: ApiConfig,
    /// The accept loop: connection limit, read timeouts, TLS.
    pub connections: ConnectionConfig,
}

/// What the model registry needs: where models live, what computes them, and how each
/// version's batcher is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub models_dir: PathBuf,
    pub device: DeviceSpec,
    /// Worker threads per loaded model version.
    pub workers: usize,
    /// candle's intra-op threads per forward (RAYON_NUM_THREADS / CANDLE_NUM_THREADS).
    pub threads: usize,
    pub poll_interval: Duration,
    /// The server's batching; a model may override it (`models`).
    pub batching: BatchConfig,
    /// Per-model overrides, by model name.
    pub models: BTreeMap<String, ModelConfig>,
}

/// How a model version's batcher forms batches and bounds its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    /// Zero: a batch goes as soon as a worker is free. Otherwise a batch smaller than
    /// `max_batch_size` waits up to this long (from its oldest entry) to grow.
    pub max_queue_delay: Duration,
    /// Entries (request chunks) that may wait per model version before 503.
    pub queue_capacity: usize,
    /// Default deadline of a request, overridable per request with `X-Request-Timeout-Ms`.
    pub request_timeout: Duration,
    /// How long a worker that found the queue empty stays awake (yielding its core to any
    /// other runnable thread) before it sleeps. Zero: it sleeps at once, and every request
    /// that finds all workers asleep pays for waking one.
    pub worker_spin: Duration,
    /// Text models: a batch closes when the next input would take its padded cost (longest
    /// input × inputs) over this many tokens.
    pub max_batch_tokens: usize,
    /// Text models: most inputs in one batch.
    pub max_batch_requests: usize,
    /// Text models: most inputs in one request (413 beyond).
    pub max_client_batch_size: usize,
}

/// What training needs: where datasets, the job database and checkpoints live, and how
/// much of it may run or arrive at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingConfig {
    pub data_dir: PathBuf,
    /// Largest dataset (or model) upload, in bytes.
    pub max_upload_bytes: u64,
    /// Training jobs that run at the same time (each on one thread); 0 (with PostgreSQL
    /// only): this replica runs none, it serves and leaves its jobs to the other replicas.
    pub max_concurrent_jobs: usize,
    /// Where jobs live: SQLite, or PostgreSQL shared by replicas. `None`: the default,
    /// SQLite at `<data_dir>/kiln.db` (see [`TrainingConfig::database`]).
    pub database: Option<Database>,
    /// This replica's name in logs and job records (`--replica-id`; hostname-pid).
    pub replica_id: String,
    /// How long a replica holds a running job without renewing its lease (a shared
    /// database only): a dead replica's job is claimable again this long after its last sign.
    pub job_lease: Duration,
    /// Object storage shared by the replicas (`--object-store`); `None`: the models and
    /// data directories of this machine, as one process uses them.
    pub object_store: Option<ObjectStoreUrl>,
}

/// `--object-store URL`: `s3://BUCKET[/PREFIX]`, `gs://…`, `az://…` or `file:///DIR`.
/// Holds no secret (credentials come from the environment), so it is shown as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreUrl(pub String);

impl ObjectStoreUrl {
    fn parse(url: &str) -> Result<ObjectStoreUrl, ConfigError> {
        // First, so that a URL holding a credential is never echoed.
        if url.contains('@') || url.contains('?') {
            return Err(invalid(
                "object_store: credentials and options come from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, …), not the URL".into(),
            ));
        }
        let known = [
            "s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://", "file://",
        ];
        let Some(scheme) = known.iter().find(|s| url.starts_with(**s)) else {
            return Err(invalid(format!(
                "object_store: '{url}' is none of s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, file:///DIR"
            )));
        };
        let rest = &url[scheme.len()..];
        if rest.trim_matches('/').is_empty() {
            return Err(invalid(format!(
                "object_store: '{url}' names no bucket (or, for file://, no directory)"
            )));
        }
        if *scheme == "file://" && !rest.starts_with('/') {
            return Err(invalid(format!(
                "object_store: '{url}': file:// takes an absolute directory (file:///srv/kiln)"
            )));
        }
        Ok(ObjectStoreUrl(url.trim_end_matches('/').to_owned()))
    }
}

impl TrainingConfig {
    /// The job database: as configured, else SQLite in the data directory.
    pub fn database(&self) -> Database {
        self.database
            .clone()
            .unwrap_or_else(|| Database::Sqlite(self.data_dir.join("kiln.db")))
    }
}

/// The job database (`--database URL`). Its `Debug` masks a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// `sqlite://PATH`: one process owns the file.
    Sqlite(PathBuf),
    /// `postgres://…` (or `postgresql://…`): the URL as given, password included.
    Postgres(String),
}

impl Database {
    /// From `--database`.
    fn parse(url: &str) -> Result<Database, ConfigError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("database: sqlite:// needs a file path".into()));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_owned()));
        }
        Err(invalid(format!(
            "database: '{}' is neither sqlite://PATH nor postgres://…",
            mask_password(url)
        )))
    }

    /// The URL for messages and logs: password masked.
    pub fn shown(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite://{}", path.display()),
            Database::Postgres(url) => mask_password(url),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `url` with its password replaced by `***` (in the user info and in a `password=`
/// parameter): all that messages and logs ever show of a database URL.
pub fn mask_password(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            if let Some(colon) = out[rest..rest + at].find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

/// The default `--replica-id`: the host's name and this process's id.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kiln".to_owned());
    format!("{host}-{}", std::process::id())
}

/// What the HTTP edge enforces on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub body_limit: usize,
    /// Most instances in one prediction request (413 beyond).
    pub max_rows_per_request: usize,
    /// Most interpolation points (instances × steps) in one `:explain` request (413 beyond).
    pub max_explain_points: usize,
    /// Origins allowed by CORS (`["*"]` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The API key file; `None`: every route is open.
    pub api_keys: Option<PathBuf>,
}

/// What the accept loop (`server`) needs: how many connections, how long a client may
/// take, and the TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Open connections at most; beyond it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest wait for a request's headers, counted from the end of the previous answer on
    /// a keep-alive connection (so it is the idle timeout too); also bounds a TLS handshake.
    pub header_read_timeout: Duration,
    /// Longest a request body may stall (no bytes) before the request is answered 408.
    pub body_read_timeout: Duration,
    /// `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VersionPolicy {
    /// Only the highest version.
    #[default]
    Latest,
    /// Every version found.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

/// Per-model settings.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    pub version_policy: VersionPolicy,
    pub batching: Option<BatchConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The most `worker_spin_us` accepts.
pub const MAX_WORKER_SPIN_US: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

// === the keys, by component ===

/// Declares one component's keys, each `name: Type = default` (without a default the key
/// stays unset unless given) under its clap attribute and help. Makes `$Layer`, every key
/// an `Option`, read from a TOML table and from flags and merged key by key; and `$Keys`,
/// the same keys with the defaults filled in, which the component validates.
macro_rules! layer {
    (@type $ty:ty) => { Option<$ty> };
    (@type $ty:ty, $default:expr) => { $ty };
    (@value $set:expr) => { $set };
    (@value $set:expr, $default:expr) => { $set.unwrap_or_else(|| $default) };
    (
        $(#[$meta:meta])*
        pub struct $Layer:ident => $Keys:ident {
            $(
                $(#[$key_meta:meta])*
                $key:ident: $ty:ty $(= $default:expr)?,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, PartialEq, clap::Args)]
        pub struct $Layer {
            $( $(#[$key_meta])* pub $key: Option<$ty>, )*
        }

        #[derive(Debug)]
        struct $Keys {
            $( $key: layer!(@type $ty $(, $default)?), )*
        }

        impl $Layer {
            /// Key by key, `over`'s value where it has one.
            fn merge(self, over: Self) -> Self {
                $Layer { $( $key: over.$key.or(self.$key), )* }
            }

            /// Fills in each key's built-in default.
            fn or_defaults(self) -> $Keys {
                $Keys { $( $key: layer!(@value self.$key $(, $default)?), )* }
            }
        }

        impl Table for $Layer {
            fn keys() -> &'static [&'static str] {
                &[$(stringify!($key)),*]
            }

            fn read<'de, A: MapAccess<'de>>(
                &mut self,
                key: &'static str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                match key {
                    $( stringify!($key) => self.$key = Some(map.next_value()?), )*
                    other => return Err(de::Error::unknown_field(other, Self::keys())),
                }
                Ok(())
            }
        }

        impl<'de> Deserialize<'de> for $Layer {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                read_table(d)
            }
        }
    };
}

layer! {
    /// The process: where it listens, how it logs, how it stops (top level of the file).
    pub struct ServerLayer => ServerKeys {
        /// Address to listen on.
        #[arg(long, env = "KILN_LISTEN")]
        listen: String = "0.0.0.0:8080".into(),
        /// Address of the gRPC listener (Open Inference Protocol); empty: no gRPC.
        #[arg(long, env = "KILN_GRPC_LISTEN")]
        grpc_listen: String = "0.0.0.0:8081".into(),
        /// Log format.
        #[arg(long, env = "KILN_LOG_FORMAT", value_enum)]
        log_format: LogFormat = LogFormat::Text,
        /// Longest the shutdown waits for in-flight requests, in milliseconds.
        #[arg(long, env = "KILN_DRAIN_TIMEOUT_MS")]
        drain_timeout_ms: u64 = 30_000,
        /// After SIGTERM, seconds to keep serving while readiness answers 503.
        #[arg(long = "drain-delay", env = "KILN_DRAIN_DELAY")]
        drain_delay_seconds: f64 = 5.0,
    }
}

layer! {
    /// The model registry (top level of the file).
    pub struct RegistryLayer => RegistryKeys {
        /// Directory of models: <name>/<version>/{model.json, model.safetensors}.
        #[arg(long = "models", env = "KILN_MODELS")]
        models_dir: PathBuf = "./models".into(),
        /// Compute device: cpu or cuda:N.
        #[arg(long, env = "KILN_DEVICE")]
        device: String = "cpu".into(),
        /// Worker threads per model version.
        #[arg(long, env = "KILN_WORKERS")]
        workers: usize = 2,
        /// candle intra-op threads per forward pass.
        #[arg(long, env = "KILN_THREADS")]
        threads: usize = 1,
        /// How often the models directory is scanned, in milliseconds.
        #[arg(long, env = "KILN_POLL_INTERVAL_MS")]
        poll_interval_ms: u64 = 2_000,
    }
}

layer! {
    /// Batching (`[batching]`, and any `[models.NAME]`).
    pub struct BatchingLayer => BatchingKeys {
        /// Largest number of rows in one batch.
        #[arg(long, env = "KILN_MAX_BATCH_SIZE")]
        max_batch_size: usize = 64,
        /// Longest a partial batch waits to grow, in milliseconds (0: never waits).
        #[arg(long, env = "KILN_MAX_QUEUE_DELAY_MS")]
        max_queue_delay_ms: u64 = 0,
        /// Requests that may wait per model version before 503.
        #[arg(long, env = "KILN_QUEUE_CAPACITY")]
        queue_capacity: usize = 1024,
        /// Default request deadline in milliseconds.
        #[arg(long, env = "KILN_REQUEST_TIMEOUT_MS")]
        request_timeout_ms: u64 = 10_000,
        // Measured on 2 cores (docs/benchmarks.md): 100 µs beat 0, 20, 50 and 250.
        /// Microseconds an idle worker stays awake before it sleeps (0: sleeps at once).
        #[arg(long, env = "KILN_WORKER_SPIN_US")]
        worker_spin_us: u64 = 100,
        /// Text models: most padded tokens (longest input × inputs) in one batch.
        #[arg(long, env = "KILN_MAX_BATCH_TOKENS")]
        max_batch_tokens: usize = 16_384,
        /// Text models: most inputs in one batch.
        #[arg(long, env = "KILN_MAX_BATCH_REQUESTS")]
        max_batch_requests: usize = 64,
        /// Text models: most inputs in one request.
        #[arg(long, env = "KILN_MAX_CLIENT_BATCH_SIZE")]
        max_client_batch_size: usize = 32,
    }
}

layer! {
    /// Training: datasets and jobs (top level of the file).
    pub struct TrainingLayer => TrainingKeys {
        /// Directory for datasets and the job database.
        #[arg(long = "data", env = "KILN_DATA")]
        data_dir: PathBuf = "./data".into(),
        /// Largest dataset upload in bytes.
        #[arg(long, env = "KILN_MAX_UPLOAD_BYTES")]
        max_upload_bytes: u64 = 100 * 1024 * 1024,
        /// Training jobs that run at the same time.
        #[arg(long, env = "KILN_MAX_CONCURRENT_JOBS")]
        max_concurrent_jobs: usize = 1,
        /// Job database: sqlite://PATH (default <data>/kiln.db) or postgres://… (shared by replicas).
        #[arg(long = "database", env = "KILN_DATABASE_URL")]
        database: String,
        /// This replica's name in logs and job records (default: hostname-pid).
        #[arg(long, env = "KILN_REPLICA_ID")]
        replica_id: String,
        /// With a shared (PostgreSQL) job database: milliseconds a replica holds a running
        /// job without renewing its lease.
        #[arg(long, env = "KILN_JOB_LEASE_MS")]
        job_lease_ms: u64 = 30_000,
        /// Where models, datasets and checkpoints live: the models and data directories
        /// (default), or s3://BUCKET/PREFIX, gs://…, az://…, file://DIR shared by replicas
        /// (needs a postgres:// database; credentials from AWS_* variables).
        #[arg(long = "object-store", env = "KILN_OBJECT_STORE")]
        object_store: String,
    }
}

layer! {
    /// The HTTP API (top level of the file).
    pub struct ApiLayer => ApiKeys {
        /// Largest request body in bytes.
        #[arg(long, env = "KILN_BODY_LIMIT_BYTES")]
        body_limit_bytes: usize = 16 * 1024 * 1024,
        /// Most instances in one prediction request.
        #[arg(long, env = "KILN_MAX_ROWS_PER_REQUEST")]
        max_rows_per_request: usize = 100_000,
        /// Most interpolation points (instances × steps) in one explanation (413 beyond).
        #[arg(long, env = "KILN_MAX_EXPLAIN_POINTS")]
        max_explain_points: usize = 20_000,
        /// Origins allowed by CORS, comma-separated (`*` for any).
        #[arg(long, env = "KILN_CORS_ORIGINS", value_delimiter = ',')]
        cors_origins: Vec<String> = Vec::new(),
        /// API key file (see `kiln keys new`); without one every route is open.
        #[arg(long, env = "KILN_API_KEYS")]
        api_keys: PathBuf,
    }
}

layer! {
    /// The accept loop (top level of the file).
    pub struct ConnectionsLayer => ConnectionsKeys {
        /// Open connections at most; beyond it new ones wait until one closes.
        #[arg(long, env = "KILN_MAX_CONNECTIONS")]
        max_connections: usize = 4096,
        /// Longest wait for a request's headers (and idle keep-alive time), in milliseconds.
        #[arg(long, env = "KILN_HEADER_READ_TIMEOUT_MS")]
        header_read_timeout_ms: u64 = 65_000,
        /// Longest a request body may stall before 408, in milliseconds.
        #[arg(long, env = "KILN_BODY_READ_TIMEOUT_MS")]
        body_read_timeout_ms: u64 = 30_000,
        /// TLS certificate chain (PEM); with --tls-key, kiln serves HTTPS.
        #[arg(long, env = "KILN_TLS_CERT")]
        tls_cert: PathBuf,
        /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long, env = "KILN_TLS_KEY")]
        tls_key: PathBuf,
    }
}

/// Values from flags or environment variables (clap merges the two); `None` keeps the file's.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    #[command(flatten)]
    pub server: ServerLayer,
    #[command(flatten)]
    pub registry: RegistryLayer,
    #[command(flatten)]
    pub batching: BatchingLayer,
    #[command(flatten)]
    pub training: TrainingLayer,
    #[command(flatten)]
    pub api: ApiLayer,
    #[command(flatten)]
    pub connections: ConnectionsLayer,
}

// === the file ===

/// A TOML table read key by key, so that an unknown key or a bad value is reported by the
/// parser at its line and with the key's name, as a derived `Deserialize` does.
trait Table: Default {
    /// Every key the table accepts.
    fn keys() -> &'static [&'static str];
    /// Reads the value of `key`, one of [`Table::keys`].
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error>;
}

fn read_table<'de, T: Table, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct TableVisitor<T>(PhantomData<T>);
    impl<'de, T: Table> Visitor<'de> for TableVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut table = T::default();
            while let Some(key) = map.next_key_seed(KnownKey(T::keys()))? {
                table.read(key, &mut map)?;
            }
            Ok(table)
        }
    }
    d.deserialize_map(TableVisitor(PhantomData))
}

/// A table's key, refused unless it is one of the table's keys.
struct KnownKey(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KnownKey {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KnownKey {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<&'static str, E> {
        let known = self.0.iter().find(|k| **k == key);
        known.copied().ok_or_else(|| E::unknown_field(key, self.0))
    }
}

/// `config/kiln.toml`: the top level holds the keys of several components.
#[derive(Debug, Default)]
struct FileConfig {
    server: ServerLayer,
    registry: RegistryLayer,
    training: TrainingLayer,
    api: ApiLayer,
    connections: ConnectionsLayer,
    batching: BatchingLayer,
    models: BTreeMap<String, FileModel>,
}

impl Table for FileConfig {
    fn keys() -> &'static [&'static str] {
        static KEYS: LazyLock<Vec<&str>> = LazyLock::new(|| {
            [
                ServerLayer::keys(),
                RegistryLayer::keys(),
                TrainingLayer::keys(),
                ApiLayer::keys(),
                ConnectionsLayer::keys(),
                &["batching", "models"],
            ]
            .concat()
        });
        &KEYS
    }

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let is = |keys: &[&str]| keys.contains(&key);
        match key {
            "batching" => self.batching = map.next_value()?,
            "models" => self.models = map.next_value()?,
            _ if is(ServerLayer::keys()) => self.server.read(key, map)?,
            _ if is(RegistryLayer::keys()) => self.registry.read(key, map)?,
            _ if is(TrainingLayer::keys()) => self.training.read(key, map)?,
            _ if is(ApiLayer::keys()) => self.api.read(key, map)?,
            _ => self.connections.read(key, map)?,
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for FileConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_table(d)
    }
}

/// `[models.NAME]`: a version policy and any batching key.
#[derive(Debug, Default)]
struct FileModel {
    version_policy: Option<FilePolicy>,
    batching: BatchingLayer,
}

impl Table for FileModel {
    fn keys() -> &'static [&'static str] {
        static KEYS: LazyLock<Vec<&str>> =
            LazyLock::new(|| [&["version_policy"], BatchingLayer::keys()].concat());
        &KEYS
    }

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        match key {
            "version_policy" => self.version_policy = Some(map.next_value()?),
            _ => self.batching.read(key, map)?,
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for FileModel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_table(d)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FilePolicy {
    Named(String),
    Versions(Vec<u64>),
}

// === resolution ===

impl Default for Config {
    fn default() -> Self {
        Config::resolve(FileConfig::default(), &Overrides::default())
            .expect("built-in defaults are valid")
    }
}

impl Config {
    /// Loads the file (if given, or `config/kiln.toml` if it exists) and applies overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let implicit = Path::new("config/kiln.toml");
        let path = match file {
            Some(p) => Some(p),
            None if implicit.is_file() => Some(implicit),
            None => None,
        };
        let file_cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file_cfg, overrides)
    }

    /// Parses a TOML document with the overrides applied (used by tests and `load`).
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file_cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })?;
        Config::resolve(file_cfg, overrides)
    }

    /// Each component: the file's layer, then the overrides', then the defaults, validated.
    fn resolve(f: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let o = o.clone();
        let connections = f
            .connections
            .merge(o.connections)
            .or_defaults()
            .validate()?;
        let server = f.server.merge(o.server).or_defaults();
        let listen = server.listen.parse().map_err(|_| {
            invalid(format!(
                "listen address '{}' is not HOST:PORT",
                server.listen
            ))
        })?;
        let grpc_listen = match server.grpc_listen.trim() {
            "" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(format!(
                    "grpc_listen address '{addr}' is not HOST:PORT (empty turns gRPC off)"
                ))
            })?),
        };
        let server_batching = f.batching.merge(o.batching);
        let batching = server_batching.clone().or_defaults().validate("batching")?;
        let mut models = BTreeMap::new();
        for (name, m) in f.models {
            // The model's own keys win over the server's, flags included.
            let model = m.validate(&name, &server_batching)?;
            models.insert(name, model);
        }
        let registry = f
            .registry
            .merge(o.registry)
            .or_defaults()
            .validate(batching, models)?;
        let training = f.training.merge(o.training).or_defaults().validate()?;
        let drain_delay = server.drain_delay_seconds;
        if !(0.0..=3600.0).contains(&drain_delay) {
            return Err(invalid(format!(
                "drain_delay_seconds {drain_delay} must be between 0 and 3600"
            )));
        }
        let api = f.api.merge(o.api).or_defaults().validate()?;
        Ok(Config {
            listen,
            grpc_listen,
            log_format: server.log_format,
            drain_timeout: Duration::from_millis(server.drain_timeout_ms),
            drain_delay: Duration::from_secs_f64(drain_delay),
            registry,
            training,
            api,
            connections,
        })
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

impl RegistryConfig {
    /// The batching settings of one model (its override, else the server's).
    pub fn batching_for(&self, model: &str) -> BatchConfig {
        self.models
            .get(model)
            .and_then(|m| m.batching)
            .unwrap_or(self.batching)
    }

    /// The version policy of one model.
    pub fn policy_for(&self, model: &str) -> VersionPolicy {
        self.models
            .get(model)
            .map(|m| m.version_policy.clone())
            .unwrap_or_default()
    }
}

impl RegistryKeys {
    fn validate(
        self,
        batching: BatchConfig,
        models: BTreeMap<String, ModelConfig>,
    ) -> Result<RegistryConfig, ConfigError> {
        let device = self.device.parse().map_err(invalid)?;
        if self.workers == 0 || self.threads == 0 {
            return Err(invalid("workers and threads must be at least 1".into()));
        }
        if self.poll_interval_ms == 0 {
            return Err(invalid("poll_interval_ms must be positive".into()));
        }
        Ok(RegistryConfig {
            models_dir: self.models_dir,
            device,
            workers: self.workers,
            threads: self.threads,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            batching,
            models,
        })
    }
}

impl BatchingKeys {
    /// `at` names the table in messages: `batching` or `models.NAME`.
    fn validate(self, at: &str) -> Result<BatchConfig, ConfigError> {
        if self.max_batch_size == 0 || self.queue_capacity == 0 || self.request_timeout_ms == 0 {
            return Err(invalid(format!(
                "{at}: max_batch_size, queue_capacity and request_timeout_ms must be positive"
            )));
        }
        if self.max_batch_tokens == 0
            || self.max_batch_requests == 0
            || self.max_client_batch_size == 0
        {
            return Err(invalid(format!(
                "{at}: max_batch_tokens, max_batch_requests and max_client_batch_size must be positive"
            )));
        }
        if self.worker_spin_us > MAX_WORKER_SPIN_US {
            return Err(invalid(format!(
                "{at}: worker_spin_us {} is over the limit of {MAX_WORKER_SPIN_US} (10 ms)",
                self.worker_spin_us,
            )));
        }
        Ok(BatchConfig {
            max_batch_size: self.max_batch_size,
            max_queue_delay: Duration::from_millis(self.max_queue_delay_ms),
            queue_capacity: self.queue_capacity,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            worker_spin: Duration::from_micros(self.worker_spin_us),
            max_batch_tokens: self.max_batch_tokens,
            max_batch_requests: self.max_batch_requests,
            max_client_batch_size: self.max_client_batch_size,
        })
    }
}

impl FileModel {
    /// `server` is the server's batching layer (file and overrides), which this model's
    /// keys override; a model that sets none follows the server's.
    fn validate(self, name: &str, server: &BatchingLayer) -> Result<ModelConfig, ConfigError> {
        let version_policy = match self.version_policy {
            None => VersionPolicy::Latest,
            Some(FilePolicy::Named(s)) if s == "latest" => VersionPolicy::Latest,
            Some(FilePolicy::Named(s)) if s == "all" => VersionPolicy::All,
            Some(FilePolicy::Named(s)) => {
                return Err(invalid(format!(
                    "models.{name}.version_policy '{s}': expected \"latest\", \"all\" or a list of versions"
                )))
            }
            Some(FilePolicy::Versions(v)) if v.is_empty() || v.contains(&0) => {
                return Err(invalid(format!(
                    "models.{name}.version_policy: versions must be positive and listed"
                )))
            }
            Some(FilePolicy::Versions(v)) => VersionPolicy::Specific(v),
        };
        let batching = if self.batching == BatchingLayer::default() {
            None
        } else {
            let keys = server.clone().merge(self.batching).or_defaults();
            Some(keys.validate(&format!("models.{name}"))?)
        };
        Ok(ModelConfig {
            version_policy,
            batching,
        })
    }
}

impl TrainingKeys {
    fn validate(self) -> Result<TrainingConfig, ConfigError> {
        let database = self.database.as_deref().map(Database::parse).transpose()?;
        // 0: a replica that only serves, and leaves its jobs to the others: only with a
        // database the others share.
        let serve_only_ok = matches!(database, Some(Database::Postgres(_)));
        if self.max_upload_bytes == 0 || (self.max_concurrent_jobs == 0 && !serve_only_ok) {
            return Err(invalid(
                "max_upload_bytes and max_concurrent_jobs must be positive".into(),
            ));
        }
        if self.job_lease_ms < 300 {
            return Err(invalid("job_lease_ms must be at least 300".into()));
        }
        let object_store = self
            .object_store
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(ObjectStoreUrl::parse)
            .transpose()?;
        if object_store.is_some() && !serve_only_ok {
            return Err(invalid(
                "object_store needs a shared database (database = \"postgres://…\"): the catalog of models and datasets lives there".into(),
            ));
        }
        let replica_id = self.replica_id.unwrap_or_else(default_replica_id);
        if replica_id.is_empty() || replica_id.len() > 200 {
            return Err(invalid("replica_id must have 1 to 200 characters".into()));
        }
        Ok(TrainingConfig {
            database,
            data_dir: self.data_dir,
            max_upload_bytes: self.max_upload_bytes,
            max_concurrent_jobs: self.max_concurrent_jobs,
            replica_id,
            job_lease: Duration::from_millis(self.job_lease_ms),
            object_store,
        })
    }
}

impl ApiKeys {
    fn validate(self) -> Result<ApiConfig, ConfigError> {
        if self.body_limit_bytes == 0 {
            return Err(invalid("body_limit_bytes must be positive".into()));
        }
        if self.max_rows_per_request == 0 {
            return Err(invalid("max_rows_per_request must be positive".into()));
        }
        if self.max_explain_points == 0 {
            return Err(invalid("max_explain_points must be positive".into()));
        }
        Ok(ApiConfig {
            body_limit: self.body_limit_bytes,
            max_rows_per_request: self.max_rows_per_request,
            max_explain_points: self.max_explain_points,
            cors_origins: self.cors_origins,
            api_keys: self.api_keys,
        })
    }
}

impl ConnectionsKeys {
    fn validate(self) -> Result<ConnectionConfig, ConfigError> {
        if self.max_connections == 0
            || self.header_read_timeout_ms == 0
            || self.body_read_timeout_ms == 0
        {
            return Err(invalid(
                "max_connections, header_read_timeout_ms and body_read_timeout_ms must be positive"
                    .into(),
            ));
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "TLS needs both tls_cert and tls_key (--tls-cert and --tls-key, \
                     KILN_TLS_CERT and KILN_TLS_KEY); only one is set"
                        .into(),
                ))
            }
        };
        Ok(ConnectionConfig {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn database_urls_parse_and_never_show_a_password() {
        assert_eq!(
            mask_password("postgres://kiln:s3cr%40t@db.example:5432/kiln?sslmode=require"),
            "postgres://kiln:***@db.example:5432/kiln?sslmode=require"
        );
        assert_eq!(
            mask_password("postgresql://kiln@db/kiln?password=hunter2&sslmode=require"),
            "postgresql://kiln@db/kiln?password=***&sslmode=require"
        );
        assert_eq!(
            mask_password("postgres://db.example/kiln"),
            "postgres://db.example/kiln"
        );
        // An unescaped '@' in the password: everything up to the last '@' is masked.
        assert_eq!(
            mask_password("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );

        let db = Database::parse("postgres://kiln:hunter2@db/kiln").unwrap();
        assert!(!format!("{db:?}").contains("hunter2"));
        assert_eq!(
            Database::parse("sqlite:///var/kiln/jobs.db").unwrap(),
            Database::Sqlite("/var/kiln/jobs.db".into())
        );
        let err = Database::parse("mysql://root:hunter2@db/kiln")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mysql://root:***@db/kiln"), "{err}");
        assert!(Database::parse("sqlite://").is_err());
        // The default follows the data directory.
        let training = TrainingConfig {
            data_dir: "/srv/data".into(),
            ..Config::default().training
        };
        assert_eq!(
            training.database(),
            Database::Sqlite("/srv/data/kiln.db".into())
        );
    }

    #[test]
    fn only_a_replica_sharing_its_database_may_run_no_jobs() {
        let with = |toml: &str| Config::from_toml(toml, &Overrides::default());
        let err = with("max_concurrent_jobs = 0").unwrap_err().to_string();
        assert!(
            err.contains("max_concurrent_jobs must be positive"),
            "{err}"
        );
        let c = with("max_concurrent_jobs = 0\ndatabase = \"postgres://db/kiln\"").unwrap();
        assert_eq!(c.training.max_concurrent_jobs, 0);
        let err = with("job_lease_ms = 10").unwrap_err().to_string();
        assert!(err.contains("job_lease_ms"), "{err}");
    }

    /// `object_store`: the known schemes only, a bucket or an absolute directory, no
    /// credentials in the URL, and a shared database beside it.
    #[test]
    fn object_store_urls_are_checked() {
        let with = |url: &str, db: &str| {
            let toml = format!("object_store = \"{url}\"\n{db}");
            Config::from_toml(&toml, &Overrides::default())
        };
        let pg = "database = \"postgres://db/kiln\"";
        assert_eq!(Config::default().training.object_store, None);
        for (url, stored) in [
            ("s3://bucket/prefix/", "s3://bucket/prefix"),
            ("gs://bucket", "gs://bucket"),
            ("az://container/p", "az://container/p"),
            ("file:///srv/kiln", "file:///srv/kiln"),
        ] {
            let c = with(url, pg).unwrap();
            assert_eq!(c.training.object_store, Some(ObjectStoreUrl(stored.into())));
        }
        for (url, says) in [
            ("http://bucket", "none of s3://"),
            ("s3://", "names no bucket"),
            ("file://relative/dir", "absolute directory"),
            ("s3://key:secret@bucket", "from the environment"),
            ("s3://bucket?region=x", "from the environment"),
        ] {
            let err = with(url, pg).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let err = with("s3://bucket", "").unwrap_err().to_string();
        assert!(err.contains("needs a shared database"), "{err}");
        // A secret never shows, even in the error about it.
        assert!(!with("s3://key:secret@bucket", pg)
            .unwrap_err()
            .to_string()
            .contains("secret"));
    }

    #[test]
    fn shipped_config_parses_and_equals_the_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/kiln.toml"))
                .unwrap();
        let shipped = Config::from_toml(&text, &Overrides::default()).unwrap();
        let builtin = Config::default();
        assert_eq!(format!("{shipped:?}"), format!("{builtin:?}"));
    }

    #[test]
    fn layers_override_in_order() {
        let text = r#"
            workers = 3
            [batching]
            max_batch_size = 8
            [models.iris]
            version_policy = [1, 2]
            max_queue_delay_ms = 5
            worker_spin_us = 0
            [models.other]
            version_policy = "all"
        "#;
        let o = Overrides {
            registry: RegistryLayer {
                workers: Some(4),
                ..Default::default()
            },
            batching: BatchingLayer {
                max_batch_size: Some(16),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Config::from_toml(text, &o).unwrap().registry;
        assert_eq!(c.workers, 4);
        assert_eq!(c.batching.max_batch_size, 16);
        let iris = c.batching_for("iris");
        assert_eq!(
            (iris.max_batch_size, iris.max_queue_delay, iris.worker_spin),
            (16, Duration::from_millis(5), Duration::ZERO)
        );
        assert_eq!(
            c.batching_for("other").worker_spin,
            Duration::from_micros(100)
        );
        assert_eq!(c.policy_for("iris"), VersionPolicy::Specific(vec![1, 2]));
        assert_eq!(c.policy_for("other"), VersionPolicy::All);
        assert_eq!(c.policy_for("nope"), VersionPolicy::Latest);
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let err = Config::from_toml("nope = 1", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = Config::from_toml(
            "[models.m]\nversion_policy = \"newest\"",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("models.m.version_policy"), "{err}");
        let err = Config::from_toml("[models.m]\nworker_spin_us = 20000", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("models.m: worker_spin_us 20000"), "{err}");
        let o = Overrides {
            registry: RegistryLayer {
                device: Some("gpu".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(Config::from_toml("", &o)
            .unwrap_err()
            .to_string()
            .contains("gpu"));
        let o = Overrides {
            server: ServerLayer {
                listen: Some("nowhere".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(Config::from_toml("", &o).is_err());
        let o = Overrides {
            connections: ConnectionsLayer {
                tls_cert: Some("cert.pem".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = Config::from_toml("", &o).unwrap_err().to_string();
        assert!(err.contains("tls_key") && err.contains("only one"), "{err}");
        let err = Config::from_toml("tls_key = \"k.pem\"", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_cert"), "{err}");
        let err = Config::from_toml("max_connections = 0", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");
    }

    /// The file is read key by key (no derived struct): the parser still points at the line
    /// of a bad key or value, and an unknown key lists the keys that table accepts.
    #[test]
    fn file_errors_name_the_line_and_the_expected_keys() {
        let parse = |text: &str| {
            Config::from_toml(text, &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        let err = parse("workers = 2\nthreads = \"two\"");
        assert!(
            err.contains("line 2") && err.contains("threads = \"two\"") && err.contains("usize"),
            "{err}"
        );
        let err = parse("listen = \"0.0.0.0:1\"\nmax_batch_size = 8");
        assert!(
            err.contains("line 2")
                && err.contains("unknown field `max_batch_size`")
                && err.contains("`listen`")
                && err.contains("`tls_key`")
                && err.contains("`batching`"),
            "{err}"
        );
        let err = parse("[batching]\nworkers = 2");
        assert!(
            err.contains("unknown field `workers`") && err.contains("`worker_spin_us`"),
            "{err}"
        );
        let err = parse("[models.m]\nversion_policy = \"all\"\nmax_batch = 2");
        assert!(
            err.contains("line 3")
                && err.contains("unknown field `max_batch`")
                && err.contains("`version_policy`")
                && err.contains("`max_batch_size`"),
            "{err}"
        );
        let err = parse("[models.m]\nqueue_capacity = -1");
        assert!(
            err.contains("line 2") && err.contains("queue_capacity"),
            "{err}"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        overrides: Overrides,
    }

    /// Every key is documented where operators look for it: `config/kiln.toml` states it with
    /// its default (commented out when it has none), and the README's table names the key,
    /// its flag and its environment variable.
    #[test]
    fn every_key_is_documented() {
        let read = |file: &str| {
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
        };
        let (shipped, readme) = (read("config/kiln.toml"), read("README.md"));
        let tables = ["batching", "models"];
        let keys = FileConfig::keys().iter().filter(|k| !tables.contains(k));
        for key in keys.chain(BatchingLayer::keys()) {
            let stated = shipped.lines().any(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with(" = "))
            });
            assert!(stated, "config/kiln.toml does not state `{key}`");
            let listed = readme.contains(&format!("`{key}`"))
                || readme.contains(&format!("`batching.{key}`"));
            assert!(listed, "README.md's table does not list `{key}`");
        }
        let cli = <Cli as clap::CommandFactory>::command();
        for arg in cli.get_arguments() {
            let flag = format!("`--{}`", arg.get_long().unwrap());
            let env = arg.get_env().unwrap().to_str().unwrap();
            assert!(readme.contains(&flag), "README.md does not list {flag}");
            assert!(
                readme.contains(&format!("`{env}`")),
                "README.md does not list {env}"
            );
        }
    }

    #[test]
    fn flags_keep_their_names() {
        let o = Cli::try_parse_from([
            "kiln",
            "--models",
            "/m",
            "--data",
            "/d",
            "--drain-delay",
            "0.5",
            "--cors-origins",
            "a,b",
            "--max-batch-size",
            "3",
            "--log-format",
            "json",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap()
        .overrides;
        let c = Config::from_toml("", &o).unwrap();
        assert_eq!(c.registry.models_dir, Path::new("/m"));
        assert_eq!(c.training.data_dir, Path::new("/d"));
        assert_eq!(c.drain_delay, Duration::from_millis(500));
        assert_eq!(c.api.cors_origins, ["a", "b"]);
        assert_eq!(c.registry.batching.max_batch_size, 3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.connections.tls.is_some());
    }

    #[test]
    fn connection_settings_layer_and_tls_needs_both_files() {
        let o = Overrides {
            connections: ConnectionsLayer {
                max_connections: Some(8),
                tls_key: Some("k.pem".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Config::from_toml(
            "max_connections = 2\nbody_read_timeout_ms = 300\ntls_cert = \"c.pem\"",
            &o,
        )
        .unwrap()
        .connections;
        assert_eq!(c.max_connections, 8);
        assert_eq!(c.body_read_timeout, Duration::from_millis(300));
        assert_eq!(
            c.header_read_timeout,
            Config::default().connections.header_read_timeout
        );
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
    }
}
