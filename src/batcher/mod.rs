//! The dynamic batcher of one model version: an *entry* (a request's rows, or a chunk of
//! them) waits in a bounded queue; a *worker* that is free takes everything queued (up to
//! `max_batch_size` rows) as one *batch*, so a lone request runs at once and batches grow
//! while workers are busy.
//!
//! ```text
//! api task ──push(Entry)──▶ [queue: queue_capacity] ◀──take a batch── worker threads
//!    ▲                       (a push wakes a worker only if one is idle)   (std::thread)
//!    └──────────────────────────── oneshot Reply ◀─────────────────────────────┘
//! ```
//!
//! There is no task between the request and the worker: under load a worker finishing a
//! batch takes the next one without sleeping, and each request costs one cross-thread
//! wake-up (its reply) instead of three.

mod policy;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::BatchConfig;
use crate::error::Error;
use crate::model::Model;
use policy::Pending;

/// What a worker answers for one entry.
pub(crate) type Reply = Result<Computed, Error>;

/// Rows of one request (or one chunk of a request larger than `max_batch_size`).
pub(crate) struct Entry {
    /// `n_rows` model-input rows, flat and row-major.
    rows: Vec<f32>,
    n_rows: usize,
    reply: oneshot::Sender<Reply>,
    enqueued: Instant,
    deadline: Instant,
    timeout: Duration,
    /// The request's span, entered by the worker so its logs carry the request's fields.
    span: tracing::Span,
}

impl Entry {
    /// Answers 504: the deadline passed while the entry waited.
    fn expire(self, waited: Duration) {
        tracing::debug!(parent: &self.span, waited_ms = waited.as_millis() as u64, "deadline passed in queue");
        let _ = self.reply.send(Err(Error::DeadlineExceeded(self.timeout)));
    }
}

/// Entries a worker computes in one forward pass.
pub(crate) struct Batch {
    entries: Vec<Entry>,
    rows: usize,
}

/// The computed output of one entry.
#[derive(Debug)]
pub struct Computed {
    /// `n_rows × output_len` values.
    pub outputs: Vec<f32>,
    pub queue_time: Duration,
    pub compute_time: Duration,
    /// Rows in the batch this entry was computed in.
    pub batch_rows: usize,
}

/// Counters of one batcher, shown in `GET /v1/models` (and used by tests to prove batching),
/// with the version's Prometheus handles.
pub struct Stats {
    pub prom: crate::metrics::BatchMetrics,
    pub requests: AtomicU64,
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub max_batch_rows: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_deadline: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub batches: u64,
    pub rows: u64,
    pub max_batch_rows: u64,
    pub rejected_queue_full: u64,
    pub rejected_deadline: u64,
}

impl Stats {
    fn new(prom: crate::metrics::BatchMetrics) -> Self {
        Stats {
            prom,
            requests: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            max_batch_rows: AtomicU64::new(0),
            rejected_queue_full: AtomicU64::new(0),
            rejected_deadline: AtomicU64::new(0),
        }
    }

    fn deadline_passed(&self) {
        self.rejected_deadline.fetch_add(1, Ordering::Relaxed);
        self.prom.rejected_deadline.inc();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: l(&self.requests),
            batches: l(&self.batches),
            rows: l(&self.rows),
            max_batch_rows: l(&self.max_batch_rows),
            rejected_queue_full: l(&self.rejected_queue_full),
            rejected_deadline: l(&self.rejected_deadline),
        }
    }
}

/// The queue of one version, shared by its handles (which push) and its workers (which
/// pull). The lock is held only to push or to take a batch: never while computing.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when an entry arrives and a worker is waiting for one, and on close.
    arrived: Condvar,
    cfg: BatchConfig,
}

pub(crate) struct QueueState {
    pending: Pending,
    /// Workers blocked on `arrived` with nothing to do (a push wakes one).
    idle: usize,
    /// Workers holding a batch open for `max_queue_delay` (a push wakes them all).
    gathering: usize,
    /// Every handle dropped: workers finish what is queued, then exit.
    closed: bool,
}

impl Queue {
    /// Takes the next batch, blocking while the queue is empty; `None` once it is closed
    /// and drained. With `max_queue_delay`, a batch smaller than `max_batch_size` waits up
    /// to that long after its oldest entry arrived for more rows.
    pub(crate) fn next_batch(&self) -> Option<Batch> {
        let mut st = self.state.lock().expect("no thread panics holding the queue lock");
        loop {
            while st.pending.is_empty() {
                if st.closed {
                    return None;
                }
                st.idle += 1;
                st = self.arrived.wait(st).expect("queue lock");
                st.idle -= 1;
            }
            if !self.cfg.max_queue_delay.is_zero() {
                let until = st.pending.oldest().expect("not empty") + self.cfg.max_queue_delay;
                while !st.pending.is_full() && !st.closed {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    st.gathering += 1;
                    st = self.arrived.wait_timeout(st, until - now).expect("queue lock").0;
                    st.gathering -= 1;
                    if st.pending.is_empty() {
                        break; // another worker took them
                    }
                }
            }
            // Entries past their deadline are answered 504 here; if nothing is left, wait on.
            if let Some(batch) = st.pending.next_batch(Instant::now()) {
                return Some(batch);
            }
        }
    }

    fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.arrived.notify_all();
    }
}

/// Cheap to clone; lives in the registry's loaded version. When the last handle drops, the
/// queue closes, the workers compute what is left in it and exit.
#[derive(Clone)]
pub struct BatcherHandle {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    name: Arc<str>,
    version: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Starts `workers` worker threads for one model version. Each pulls batches off the
/// version's queue itself: no hand-off task between the request and the worker.
pub fn spawn(
    model: Arc<Model>,
    name: &str,
    version: u64,
    cfg: BatchConfig,
    workers: usize,
    prom: crate::metrics::BatchMetrics,
) -> BatcherHandle {
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState {
            pending: Pending::new(cfg.max_batch_size),
            idle: 0,
            gathering: 0,
            closed: false,
        }),
        arrived: Condvar::new(),
        cfg,
    });
    let stats = Arc::new(Stats::new(prom));
    for i in 0..workers {
        let (model, queue, stats) = (model.clone(), queue.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("kiln-worker-{name}-{version}-{i}"))
            .spawn(move || worker::run(&model, &queue, &stats))
            .expect("spawning a worker thread");
    }
    BatcherHandle {
        inner: Arc::new(Inner {
            queue,
            stats,
            name: name.into(),
            version,
        }),
    }
}

impl BatcherHandle {
    pub fn config(&self) -> &BatchConfig {
        &self.inner.queue.cfg
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Entries waiting in the queue right now.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue.state.lock().expect("queue lock").pending.len()
    }

    /// Computes `n_rows` rows (flat, `row_len` values each) before `deadline`. A request
    /// larger than `max_batch_size` is split into entries and reassembled in order.
    pub async fn run(
        &self,
        rows: Vec<f32>,
        n_rows: usize,
        row_len: usize,
        timeout: Duration,
        span: &tracing::Span,
    ) -> Result<Computed, Error> {
        let now = Instant::now();
        let deadline = now + timeout;
        let stats = &self.inner.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let max = self.config().max_batch_size;
        let receivers = if n_rows <= max {
            vec![self.submit(rows, n_rows, now, deadline, timeout, span)?]
        } else {
            let mut out = Vec::with_capacity(n_rows.div_ceil(max));
            for (i, chunk) in rows.chunks(max * row_len).enumerate() {
                let n = (n_rows - i * max).min(max);
                // On a full queue, the chunks already queued are dropped with their receivers
                // and skipped by the batcher (their reply channel is closed).
                out.push(self.submit(chunk.to_vec(), n, now, deadline, timeout, span)?);
            }
            out
        };
        let mut result: Option<Computed> = None;
        for rx in receivers {
            // Every 504 is counted here, once, whichever side noticed the deadline first.
            let computed = match tokio::time::timeout_at(deadline.into(), rx).await {
                Ok(Ok(Err(Error::DeadlineExceeded(t)))) => {
                    stats.deadline_passed();
                    return Err(Error::DeadlineExceeded(t));
                }
                Ok(Ok(reply)) => reply?,
                Ok(Err(_)) => return Err(Error::Forward("worker stopped before answering".into())),
                Err(_) => {
                    stats.deadline_passed();
                    return Err(Error::DeadlineExceeded(timeout));
                }
            };
            result = Some(match result {
                None => computed,
                Some(mut acc) => {
                    acc.outputs.extend_from_slice(&computed.outputs);
                    acc.queue_time = acc.queue_time.max(computed.queue_time);
                    acc.compute_time += computed.compute_time;
                    acc.batch_rows = acc.batch_rows.max(computed.batch_rows);
                    acc
                }
            });
        }
        Ok(result.expect("at least one entry was submitted"))
    }

    fn submit(
        &self,
        rows: Vec<f32>,
        n_rows: usize,
        enqueued: Instant,
        deadline: Instant,
        timeout: Duration,
        span: &tracing::Span,
    ) -> Result<oneshot::Receiver<Reply>, Error> {
        let (reply, rx) = oneshot::channel();
        let entry = Entry {
            rows,
            n_rows,
            reply,
            enqueued,
            deadline,
            timeout,
            span: span.clone(),
        };
        let inner = &*self.inner;
        let queue = &inner.queue;
        let mut st = queue.state.lock().expect("queue lock");
        if st.closed {
            return Err(Error::ModelUnavailable {
                name: inner.name.to_string(),
                reason: format!("version {} is unloading", inner.version),
            });
        }
        if st.pending.len() >= queue.cfg.queue_capacity {
            drop(st);
            inner.stats.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
            inner.stats.prom.rejected_queue_full.inc();
            return Err(Error::QueueFull {
                name: inner.name.to_string(),
                version: inner.version,
                capacity: queue.cfg.queue_capacity,
            });
        }
        st.pending.push(entry);
        let (idle, gathering) = (st.idle, st.gathering);
        drop(st);
        if gathering > 0 {
            queue.arrived.notify_all();
        } else if idle > 0 {
            queue.arrived.notify_one();
        }
        Ok(rx)
    }
}
