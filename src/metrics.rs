//! Prometheus metrics: one `Metrics` per server, shared as `Arc<Metrics>`. Counters and
//! histograms are updated where things happen (the HTTP middleware, batcher workers, job
//! threads); gauges that describe state (queue depth, models, jobs, process) are read when
//! `/metrics` is scraped. Names follow Prometheus conventions: base units in the name,
//! `_total` counters (added by the encoder), `_seconds` histograms.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route as declared (`/v1/models/{name}`), interned: no allocation per request.
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub model: String,
    pub version: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Per-version handles, cloned once when a batcher starts (no label lookup per batch).
#[derive(Clone)]
pub struct BatchMetrics {
    pub queue_seconds: Histogram,
    pub compute_seconds: Histogram,
    pub batch_rows: Histogram,
    /// Text models: tokens computed per batch (padding excluded).
    pub batch_tokens: Histogram,
    /// Text models: the share of a batch's padded cost that is padding.
    pub padding_ratio: Histogram,
    pub rejected_queue_full: Counter,
    pub rejected_deadline: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Family<RouteLabels, Histogram>,
    /// Open HTTP connections (the accept loop counts them; see `server`).
    pub http_connections: Gauge,
    /// Times the accept loop stopped accepting because `max_connections` were open.
    pub http_connection_limit_reached: Counter,
    queue_seconds: Family<ModelLabels, Histogram>,
    compute_seconds: Family<ModelLabels, Histogram>,
    batch_rows: Family<ModelLabels, Histogram>,
    batch_tokens: Family<ModelLabels, Histogram>,
    padding_ratio: Family<ModelLabels, Histogram>,
    rejected: Family<RejectLabels, Counter>,
    pub queue_depth: Family<ModelLabels, Gauge>,
    pub models: Family<StateLabels, Gauge>,
    pub jobs: Family<StateLabels, Gauge>,
    pub epoch_seconds: Histogram,
    pub resident_memory_bytes: Gauge,
    pub cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The gRPC listener's calls (`crate::grpc`).
    pub grpc: GrpcMetrics,
}

fn seconds_histogram() -> Histogram {
    // 50 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let queue_seconds = Family::<ModelLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let compute_seconds = Family::<ModelLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let batch_rows = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1.0, 2.0, 12))) as fn() -> Histogram,
        );
        let batch_tokens = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(8.0, 2.0, 12))) as fn() -> Histogram,
        );
        let padding_ratio = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(linear_buckets(0.1, 0.1, 9))) as fn() -> Histogram,
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        let http_connections = Gauge::default();
        let http_connection_limit_reached = Counter::default();
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let models = Family::<StateLabels, Gauge>::default();
        let jobs = Family::<StateLabels, Gauge>::default();
        let epoch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let resident_memory_bytes = Gauge::default();
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status code",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            http_seconds.clone(),
        );
        registry.register(
            "http_connections",
            "Open HTTP connections",
            http_connections.clone(),
        );
        registry.register(
            "http_connection_limit_reached",
            "Times kiln stopped accepting connections because max_connections were open",
            http_connection_limit_reached.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time a prediction waited in its model's queue",
            queue_seconds.clone(),
        );
        registry.register(
            "compute_duration_seconds",
            "Time of one batch's forward pass",
            compute_seconds.clone(),
        );
        registry.register("batch_rows", "Rows per computed batch", batch_rows.clone());
        registry.register(
            "batch_tokens",
            "Text models: tokens per computed batch, padding excluded",
            batch_tokens.clone(),
        );
        registry.register(
            "batch_padding_ratio",
            "Text models: padding's share of a batch's padded cost (longest input x inputs)",
            padding_ratio.clone(),
        );
        registry.register(
            "rejected_requests",
            "Predictions refused: reason=queue_full (503) or deadline (504)",
            rejected.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting in a model version's queue",
            queue_depth.clone(),
        );
        registry.register(
            "models",
            "Model versions by state (AVAILABLE, LOADING, FAILED, END)",
            models.clone(),
        );
        registry.register("training_jobs", "Training jobs by state", jobs.clone());
        registry.register(
            "training_epoch_duration_seconds",
            "Duration of one training epoch",
            epoch_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the kiln process",
            resident_memory_bytes.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "CPU time (user + system) used by the kiln process",
            cpu_seconds.clone(),
        );
        let grpc = GrpcMetrics::register(&mut registry);
        Metrics {
            grpc,
            registry,
            http_requests,
            http_seconds,
            http_connections,
            http_connection_limit_reached,
            queue_seconds,
            compute_seconds,
            batch_rows,
            batch_tokens,
            padding_ratio,
            rejected,
            queue_depth,
            models,
            jobs,
            epoch_seconds,
            resident_memory_bytes,
            cpu_seconds,
        }
    }

    /// The handles a model version's batcher updates.
    pub fn for_version(&self, model: &str, version: u64) -> BatchMetrics {
        let l = ModelLabels {
            model: model.to_owned(),
            version: version.to_string(),
        };
        let reject = |reason| RejectLabels {
            model: model.to_owned(),
            version: version.to_string(),
            reason,
        };
        BatchMetrics {
            queue_seconds: self.queue_seconds.get_or_create_owned(&l),
            compute_seconds: self.compute_seconds.get_or_create_owned(&l),
            batch_rows: self.batch_rows.get_or_create_owned(&l),
            batch_tokens: self.batch_tokens.get_or_create_owned(&l),
            padding_ratio: self.padding_ratio.get_or_create_owned(&l),
            rejected_queue_full: self.rejected.get_or_create_owned(&reject("queue_full")),
            rejected_deadline: self.rejected.get_or_create_owned(&reject("deadline")),
        }
    }

    /// Reads the process's memory and CPU time (Linux `/proc`; zero elsewhere).
    pub fn update_process(&self) {
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
            {
                self.resident_memory_bytes.set(pages * 4096);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces): utime is the 14th field.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                // rest starts at field 3 (state): utime = field 14 → index 11, stime → 12.
                self.cpu_seconds.set((ticks(11) + ticks(12)) / 100.0);
            }
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// The call's full name (`inference.GRPCInferenceService/ModelInfer`), interned.
    pub method: &'static str,
    /// The gRPC status code's name (`OK`, `INVALID_ARGUMENT`, …).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    pub method: &'static str,
}

/// gRPC calls, as `http_requests` / `http_request_duration_seconds` count HTTP requests.
#[derive(Clone)]
pub struct GrpcMetrics {
    pub requests: Family<GrpcLabels, Counter>,
    pub seconds: Family<GrpcMethodLabels, Histogram>,
}

impl GrpcMetrics {
    fn register(registry: &mut Registry) -> GrpcMetrics {
        let requests = Family::<GrpcLabels, Counter>::default();
        let seconds = Family::<GrpcMethodLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a gRPC call, by method",
            seconds.clone(),
        );
        GrpcMetrics { requests, seconds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.http_requests
            .get_or_create(&HttpLabels {
                route: "/v1/models",
                method: "GET",
                status: 200,
            })
            .inc();
        let b = m.for_version("iris", 1);
        b.batch_rows.observe(3.0);
        b.rejected_queue_full.inc();
        m.update_process();
        let text = m.encode();
        for name in [
            "kiln_http_requests_total{route=\"/v1/models\",method=\"GET\",status=\"200\"} 1",
            "kiln_batch_rows_count{model=\"iris\",version=\"1\"} 1",
            "kiln_rejected_requests_total{model=\"iris\",version=\"1\",reason=\"queue_full\"} 1",
            "kiln_process_resident_memory_bytes ",
            "# TYPE kiln_queue_duration_seconds histogram",
            "kiln_http_connections 0",
            "kiln_http_connection_limit_reached_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(m.resident_memory_bytes.get() > 0);
    }
}
