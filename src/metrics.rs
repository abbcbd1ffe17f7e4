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
pub struct RequestLabels {
    pub model: String,
    pub version: String,
    pub protocol: &'static str,
}

/// The protocol a prediction came in by: the `protocol` label of
/// `kiln_request_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP: TF Serving's REST API and the Open Inference Protocol over HTTP.
    Http,
    /// gRPC.
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
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
    /// `kiln_request_duration_seconds` of this version, one per [`Protocol`] (indexed by
    /// it): resolved here, once, so a request observes without a label look-up.
    request_seconds: [Histogram; 2],
}

impl BatchMetrics {
    /// A prediction answered in `seconds`, end to end: from the handler holding the request
    /// (its body read) to the answer encoded, decoding, queue and compute included.
    pub fn observe_request(&self, protocol: Protocol, seconds: f64) {
        self.request_seconds[protocol as usize].observe(seconds);
    }
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
    request_seconds: Family<RequestLabels, Histogram>,
    pub queue_depth: Family<ModelLabels, Gauge>,
    pub models: Family<StateLabels, Gauge>,
    pub jobs: Family<StateLabels, Gauge>,
    pub epoch_seconds: Histogram,
    /// The kernel's resident set size of the process (`VmRSS`).
    pub resident_memory_bytes: Gauge,
    /// CPU time (user + system) of every thread of the process: a counter that follows the
    /// kernel's figure at each scrape.
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
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
        let request_seconds = Family::<RequestLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let http_connections = Gauge::default();
        let http_connection_limit_reached = Counter::default();
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let models = Family::<StateLabels, Gauge>::default();
        let jobs = Family::<StateLabels, Gauge>::default();
        let epoch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let resident_memory_bytes = Gauge::default();
        let cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
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
            "request_duration_seconds",
            "Time to answer a prediction, end to end (decoding, queue, compute, encoding), \
             by model, version and protocol",
            request_seconds.clone(),
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
            "Resident memory of the kiln process (the kernel's VmRSS)",
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
            request_seconds,
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
            request_seconds: Protocol::ALL.map(|p| {
                self.request_seconds.get_or_create_owned(&RequestLabels {
                    model: model.to_owned(),
                    version: version.to_string(),
                    protocol: p.as_str(),
                })
            }),
        }
    }

    /// Reads the process's memory and CPU time from the kernel (Linux `/proc`; left as
    /// they are elsewhere).
    pub fn update_process(&self) {
        if let Some(bytes) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| vm_rss_bytes(&status))
        {
            self.resident_memory_bytes.set(bytes);
        }
        if let Some(seconds) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| cpu_seconds(&stat, rustix::param::clock_ticks_per_second()))
        {
            // A counter following the kernel's total: add what it grew by since the last
            // scrape (concurrent scrapes may both see the growth; the later one adds nothing).
            let grown = seconds - self.cpu_seconds.get();
            if grown > 0.0 {
                self.cpu_seconds.inc_by(grown);
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

/// `VmRSS` of `/proc/self/status`, which the kernel writes in kB (KiB).
fn vm_rss_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: i64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// utime + stime of `/proc/self/stat`, in seconds: both count clock ticks of `ticks_per_second`
/// (`sysconf(_SC_CLK_TCK)`, from the kernel's auxiliary vector).
fn cpu_seconds(stat: &str, ticks_per_second: u64) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses: the
    // fields after the last ')' start at field 3 (state), so utime (14) and stime (15) are
    // at indices 11 and 12.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    (ticks_per_second > 0).then(|| (utime + stime) as f64 / ticks_per_second as f64)
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
    /// Open gRPC connections (the gRPC accept loop counts them).
    pub connections: Gauge,
    /// Times the gRPC accept loop stopped accepting because `max_connections` were open.
    pub connection_limit_reached: Counter,
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
        let connections = Gauge::default();
        let connection_limit_reached = Counter::default();
        registry.register(
            "grpc_connections",
            "Open gRPC connections",
            connections.clone(),
        );
        registry.register(
            "grpc_connection_limit_reached",
            "Times kiln stopped accepting gRPC connections because max_connections were open",
            connection_limit_reached.clone(),
        );
        GrpcMetrics {
            requests,
            seconds,
            connections,
            connection_limit_reached,
        }
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

    #[test]
    fn process_figures_are_the_kernels() {
        let status = "Name:\tkiln\nVmPeak:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t9\n";
        assert_eq!(vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tkiln\n"), None);
        // A command name with spaces and parentheses; utime 250, stime 50 ticks.
        let stat = "42 (kiln (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_seconds(stat, 100), Some(3.0));
        assert_eq!(cpu_seconds(stat, 1000), Some(0.3));
        assert_eq!(cpu_seconds("garbage", 100), None);
        // The counter only grows, and says so by its name.
        let m = Metrics::new();
        m.update_process();
        let first = m.cpu_seconds.get();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        m.update_process();
        assert!(m.cpu_seconds.get() >= first);
        assert!(m
            .encode()
            .contains("# TYPE kiln_process_cpu_seconds counter"));
        assert!(m.encode().contains("kiln_process_cpu_seconds_total "));
    }

    #[test]
    fn request_durations_are_resolved_once_per_version_and_protocol() {
        let m = Metrics::new();
        let b = m.for_version("iris", 2);
        b.observe_request(Protocol::Http, 0.002);
        b.observe_request(Protocol::Http, 0.004);
        b.observe_request(Protocol::Grpc, 0.001);
        let text = m.encode();
        for line in [
            "kiln_request_duration_seconds_count{model=\"iris\",version=\"2\",protocol=\"http\"} 2",
            "kiln_request_duration_seconds_count{model=\"iris\",version=\"2\",protocol=\"grpc\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
