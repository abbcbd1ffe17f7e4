//! Configuration: built-in defaults → `config/kiln.toml` (or `--config`) → `KILN_*`
//! environment variables → command-line flags, validated into typed sub-configs.
//!
//! clap reads each flag together with its environment variable (flag wins), so this module
//! merges two layers: the file, then those overrides. Every key and its default is
//! documented in `config/kiln.toml`; a unit test keeps that file and these defaults equal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::device::DeviceSpec;

/// The validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub models_dir: PathBuf,
    pub data_dir: PathBuf,
    pub device: DeviceSpec,
    /// Worker threads per loaded model version.
    pub workers: usize,
    /// candle's intra-op threads per forward (RAYON_NUM_THREADS / CANDLE_NUM_THREADS).
    pub threads: usize,
    pub batching: BatchConfig,
    pub poll_interval: Duration,
    pub body_limit: usize,
    pub log_format: LogFormat,
    pub drain_timeout: Duration,
    /// After SIGTERM, how long readiness answers 503 while requests are still served.
    pub drain_delay: Duration,
    /// Largest dataset upload, in bytes.
    pub max_upload_bytes: u64,
    /// The API key file; `None`: every route is open.
    pub api_keys: Option<PathBuf>,
    /// Most instances in one prediction request (413 beyond).
    pub max_rows_per_request: usize,
    /// Origins allowed by CORS (`["*"]` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Training jobs that run at the same time (each on one thread).
    pub max_concurrent_jobs: usize,
    /// The accept loop: connection limit, read timeouts, TLS.
    pub connections: ConnectionConfig,
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

// === the file layer ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    models_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    device: Option<String>,
    workers: Option<usize>,
    threads: Option<usize>,
    poll_interval_ms: Option<u64>,
    body_limit_bytes: Option<usize>,
    log_format: Option<LogFormat>,
    drain_timeout_ms: Option<u64>,
    drain_delay_seconds: Option<f64>,
    api_keys: Option<PathBuf>,
    max_rows_per_request: Option<usize>,
    cors_origins: Option<Vec<String>>,
    max_upload_bytes: Option<u64>,
    max_concurrent_jobs: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    batching: FileBatching,
    #[serde(default)]
    models: BTreeMap<String, FileModel>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBatching {
    max_batch_size: Option<usize>,
    max_queue_delay_ms: Option<u64>,
    queue_capacity: Option<usize>,
    request_timeout_ms: Option<u64>,
    worker_spin_us: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    version_policy: Option<FilePolicy>,
    #[serde(flatten)]
    batching: FileBatching,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FilePolicy {
    Named(String),
    Versions(Vec<u64>),
}

/// Values from flags or environment variables (clap merges the two); `None` keeps the file's.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Address to listen on.
    #[arg(long, env = "KILN_LISTEN")]
    pub listen: Option<String>,
    /// Directory of models: <name>/<version>/{model.json, model.safetensors}.
    #[arg(long = "models", env = "KILN_MODELS")]
    pub models_dir: Option<PathBuf>,
    /// Directory for datasets and the job database.
    #[arg(long = "data", env = "KILN_DATA")]
    pub data_dir: Option<PathBuf>,
    /// Compute device: cpu or cuda:N.
    #[arg(long, env = "KILN_DEVICE")]
    pub device: Option<String>,
    /// Worker threads per model version.
    #[arg(long, env = "KILN_WORKERS")]
    pub workers: Option<usize>,
    /// candle intra-op threads per forward pass.
    #[arg(long, env = "KILN_THREADS")]
    pub threads: Option<usize>,
    /// Largest number of rows in one batch.
    #[arg(long, env = "KILN_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Longest a partial batch waits to grow, in milliseconds (0: never waits).
    #[arg(long, env = "KILN_MAX_QUEUE_DELAY_MS")]
    pub max_queue_delay_ms: Option<u64>,
    /// Requests that may wait per model version before 503.
    #[arg(long, env = "KILN_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Default request deadline in milliseconds.
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Microseconds an idle worker stays awake before it sleeps (0: sleeps at once).
    #[arg(long, env = "KILN_WORKER_SPIN_US")]
    pub worker_spin_us: Option<u64>,
    /// How often the models directory is scanned, in milliseconds.
    #[arg(long, env = "KILN_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// Largest request body in bytes.
    #[arg(long, env = "KILN_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Longest the shutdown waits for in-flight requests, in milliseconds.
    #[arg(long, env = "KILN_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// After SIGTERM, seconds to keep serving while readiness answers 503.
    #[arg(long = "drain-delay", env = "KILN_DRAIN_DELAY")]
    pub drain_delay_seconds: Option<f64>,
    /// API key file (see `kiln keys new`); without one every route is open.
    #[arg(long, env = "KILN_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Most instances in one prediction request.
    #[arg(long, env = "KILN_MAX_ROWS_PER_REQUEST")]
    pub max_rows_per_request: Option<usize>,
    /// Origins allowed by CORS, comma-separated (`*` for any).
    #[arg(long, env = "KILN_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Largest dataset upload in bytes.
    #[arg(long, env = "KILN_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Training jobs that run at the same time.
    #[arg(long, env = "KILN_MAX_CONCURRENT_JOBS")]
    pub max_concurrent_jobs: Option<usize>,
    /// Open connections at most; beyond it new ones wait until one closes.
    #[arg(long, env = "KILN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest wait for a request's headers (and idle keep-alive time), in milliseconds.
    #[arg(long, env = "KILN_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Longest a request body may stall before 408, in milliseconds.
    #[arg(long, env = "KILN_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// TLS certificate chain (PEM); with --tls-key, kiln serves HTTPS.
    #[arg(long, env = "KILN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KILN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// The built-in defaults; `config/kiln.toml` states the same values.
pub mod defaults {
    pub const LISTEN: &str = "0.0.0.0:8080";
    pub const MODELS_DIR: &str = "./models";
    pub const DATA_DIR: &str = "./data";
    pub const DEVICE: &str = "cpu";
    pub const WORKERS: usize = 2;
    pub const THREADS: usize = 1;
    pub const MAX_BATCH_SIZE: usize = 64;
    pub const MAX_QUEUE_DELAY_MS: u64 = 0;
    pub const QUEUE_CAPACITY: usize = 1024;
    pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
    /// Measured on 2 cores (docs/benchmarks.md): 100 µs beat 0, 20, 50 and 250.
    pub const WORKER_SPIN_US: u64 = 100;
    /// The most `worker_spin_us` accepts.
    pub const MAX_WORKER_SPIN_US: u64 = 10_000;
    pub const POLL_INTERVAL_MS: u64 = 2_000;
    pub const BODY_LIMIT_BYTES: usize = 16 * 1024 * 1024;
    pub const DRAIN_TIMEOUT_MS: u64 = 30_000;
    pub const DRAIN_DELAY_SECONDS: f64 = 5.0;
    pub const MAX_ROWS_PER_REQUEST: usize = 100_000;
    pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
    pub const MAX_CONCURRENT_JOBS: usize = 1;
    pub const MAX_CONNECTIONS: usize = 4096;
    pub const HEADER_READ_TIMEOUT_MS: u64 = 65_000;
    pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
}

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

    fn resolve(f: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        use defaults as d;
        let invalid = |m: String| ConfigError::Invalid(m);
        let connections = resolve_connections(&f, o)?;
        let listen_s = o
            .listen
            .clone()
            .or(f.listen)
            .unwrap_or_else(|| d::LISTEN.into());
        let listen = listen_s
            .parse()
            .map_err(|_| invalid(format!("listen address '{listen_s}' is not HOST:PORT")))?;
        let device_s = o
            .device
            .clone()
            .or(f.device)
            .unwrap_or_else(|| d::DEVICE.into());
        let device = device_s.parse().map_err(invalid)?;
        let base = resolve_batching(
            BatchConfig {
                max_batch_size: d::MAX_BATCH_SIZE,
                max_queue_delay: Duration::from_millis(d::MAX_QUEUE_DELAY_MS),
                queue_capacity: d::QUEUE_CAPACITY,
                request_timeout: Duration::from_millis(d::REQUEST_TIMEOUT_MS),
                worker_spin: Duration::from_micros(d::WORKER_SPIN_US),
            },
            &f.batching,
        );
        let batching = resolve_batching(
            base,
            &FileBatching {
                max_batch_size: o.max_batch_size,
                max_queue_delay_ms: o.max_queue_delay_ms,
                queue_capacity: o.queue_capacity,
                request_timeout_ms: o.request_timeout_ms,
                worker_spin_us: o.worker_spin_us,
            },
        );
        validate_batching("batching", &batching)?;
        let mut models = BTreeMap::new();
        for (name, m) in f.models {
            let version_policy = match m.version_policy {
                None => VersionPolicy::Latest,
                Some(FilePolicy::Named(s)) if s == "latest" => VersionPolicy::Latest,
                Some(FilePolicy::Named(s)) if s == "all" => VersionPolicy::All,
                Some(FilePolicy::Named(s)) => {
                    return Err(invalid(format!(
                        "models.{name}.version_policy '{s}': expected \"latest\", \"all\" or a list of versions"
                    )))
                }
                Some(FilePolicy::Versions(v)) if v.is_empty() || v.contains(&0) => {
                    return Err(invalid(format!("models.{name}.version_policy: versions must be positive and listed")))
                }
                Some(FilePolicy::Versions(v)) => VersionPolicy::Specific(v),
            };
            let overridden = m.batching != FileBatching::default();
            let batching = overridden.then(|| resolve_batching(batching, &m.batching));
            if let Some(b) = &batching {
                validate_batching(&format!("models.{name}"), b)?;
            }
            models.insert(
                name,
                ModelConfig {
                    version_policy,
                    batching,
                },
            );
        }
        let workers = o.workers.or(f.workers).unwrap_or(d::WORKERS);
        let threads = o.threads.or(f.threads).unwrap_or(d::THREADS);
        if workers == 0 || threads == 0 {
            return Err(invalid("workers and threads must be at least 1".into()));
        }
        let poll_ms = o
            .poll_interval_ms
            .or(f.poll_interval_ms)
            .unwrap_or(d::POLL_INTERVAL_MS);
        if poll_ms == 0 {
            return Err(invalid("poll_interval_ms must be positive".into()));
        }
        let body_limit = o
            .body_limit_bytes
            .or(f.body_limit_bytes)
            .unwrap_or(d::BODY_LIMIT_BYTES);
        if body_limit == 0 {
            return Err(invalid("body_limit_bytes must be positive".into()));
        }
        let max_upload_bytes = o
            .max_upload_bytes
            .or(f.max_upload_bytes)
            .unwrap_or(d::MAX_UPLOAD_BYTES);
        let max_concurrent_jobs = o
            .max_concurrent_jobs
            .or(f.max_concurrent_jobs)
            .unwrap_or(d::MAX_CONCURRENT_JOBS);
        if max_upload_bytes == 0 || max_concurrent_jobs == 0 {
            return Err(invalid(
                "max_upload_bytes and max_concurrent_jobs must be positive".into(),
            ));
        }
        let drain_delay = o
            .drain_delay_seconds
            .or(f.drain_delay_seconds)
            .unwrap_or(d::DRAIN_DELAY_SECONDS);
        if !(0.0..=3600.0).contains(&drain_delay) {
            return Err(invalid(format!(
                "drain_delay_seconds {drain_delay} must be between 0 and 3600"
            )));
        }
        let max_rows_per_request = o
            .max_rows_per_request
            .or(f.max_rows_per_request)
            .unwrap_or(d::MAX_ROWS_PER_REQUEST);
        if max_rows_per_request == 0 {
            return Err(invalid("max_rows_per_request must be positive".into()));
        }
        Ok(Config {
            max_rows_per_request,
            cors_origins: o
                .cors_origins
                .clone()
                .or(f.cors_origins)
                .unwrap_or_default(),
            api_keys: o.api_keys.clone().or(f.api_keys),
            drain_delay: Duration::from_secs_f64(drain_delay),
            listen,
            max_upload_bytes,
            max_concurrent_jobs,
            connections,
            models_dir: o
                .models_dir
                .clone()
                .or(f.models_dir)
                .unwrap_or_else(|| d::MODELS_DIR.into()),
            data_dir: o
                .data_dir
                .clone()
                .or(f.data_dir)
                .unwrap_or_else(|| d::DATA_DIR.into()),
            device,
            workers,
            threads,
            batching,
            poll_interval: Duration::from_millis(poll_ms),
            body_limit,
            log_format: o.log_format.or(f.log_format).unwrap_or_default(),
            drain_timeout: Duration::from_millis(
                o.drain_timeout_ms
                    .or(f.drain_timeout_ms)
                    .unwrap_or(d::DRAIN_TIMEOUT_MS),
            ),
            models,
        })
    }

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

fn resolve_batching(base: BatchConfig, f: &FileBatching) -> BatchConfig {
    BatchConfig {
        max_batch_size: f.max_batch_size.unwrap_or(base.max_batch_size),
        max_queue_delay: f
            .max_queue_delay_ms
            .map_or(base.max_queue_delay, Duration::from_millis),
        queue_capacity: f.queue_capacity.unwrap_or(base.queue_capacity),
        request_timeout: f
            .request_timeout_ms
            .map_or(base.request_timeout, Duration::from_millis),
        worker_spin: f
            .worker_spin_us
            .map_or(base.worker_spin, Duration::from_micros),
    }
}

fn resolve_connections(f: &FileConfig, o: &Overrides) -> Result<ConnectionConfig, ConfigError> {
    use defaults as d;
    let max_connections = o
        .max_connections
        .or(f.max_connections)
        .unwrap_or(d::MAX_CONNECTIONS);
    let header_ms = o
        .header_read_timeout_ms
        .or(f.header_read_timeout_ms)
        .unwrap_or(d::HEADER_READ_TIMEOUT_MS);
    let body_ms = o
        .body_read_timeout_ms
        .or(f.body_read_timeout_ms)
        .unwrap_or(d::BODY_READ_TIMEOUT_MS);
    if max_connections == 0 || header_ms == 0 || body_ms == 0 {
        return Err(ConfigError::Invalid(
            "max_connections, header_read_timeout_ms and body_read_timeout_ms must be positive"
                .into(),
        ));
    }
    let cert = o.tls_cert.clone().or_else(|| f.tls_cert.clone());
    let key = o.tls_key.clone().or_else(|| f.tls_key.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::Invalid(
                "TLS needs both tls_cert and tls_key (--tls-cert and --tls-key, \
                 KILN_TLS_CERT and KILN_TLS_KEY); only one is set"
                    .into(),
            ))
        }
    };
    Ok(ConnectionConfig {
        max_connections,
        header_read_timeout: Duration::from_millis(header_ms),
        body_read_timeout: Duration::from_millis(body_ms),
        tls,
    })
}

fn validate_batching(at: &str, b: &BatchConfig) -> Result<(), ConfigError> {
    if b.max_batch_size == 0 || b.queue_capacity == 0 || b.request_timeout.is_zero() {
        return Err(ConfigError::Invalid(format!(
            "{at}: max_batch_size, queue_capacity and request_timeout_ms must be positive"
        )));
    }
    if b.worker_spin > Duration::from_micros(defaults::MAX_WORKER_SPIN_US) {
        return Err(ConfigError::Invalid(format!(
            "{at}: worker_spin_us {} is over the limit of {} (10 ms)",
            b.worker_spin.as_micros(),
            defaults::MAX_WORKER_SPIN_US
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            workers: Some(4),
            max_batch_size: Some(16),
            ..Default::default()
        };
        let c = Config::from_toml(text, &o).unwrap();
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
            device: Some("gpu".into()),
            ..Default::default()
        };
        assert!(Config::from_toml("", &o)
            .unwrap_err()
            .to_string()
            .contains("gpu"));
        let o = Overrides {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        assert!(Config::from_toml("", &o).is_err());
        let o = Overrides {
            tls_cert: Some("cert.pem".into()),
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

    #[test]
    fn connection_settings_layer_and_tls_needs_both_files() {
        let o = Overrides {
            max_connections: Some(8),
            tls_key: Some("k.pem".into()),
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
            Duration::from_millis(defaults::HEADER_READ_TIMEOUT_MS)
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
