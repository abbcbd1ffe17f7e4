//! The dynamic batcher of one model version: an *entry* (a request's rows, or a chunk of
//! them) waits in a bounded queue; the batcher task forms a *batch* only once a *worker*
//! is free, so a lone request runs at once and batches grow while workers are busy.
//!
//! ```text
//! api task ──try_send(Entry)──▶ [queue: queue_capacity] ──▶ batching_task (tokio)
//!    ▲                                                       │ acquire an idle-worker permit,
//!    │ oneshot Reply                                          │ then take what is queued
//!    └──────────── worker threads (std::thread) ◀──(Batch, permit)
//! ```

mod policy;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

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

/// Cheap to clone; lives in the registry's loaded version. When the last handle drops, the
/// queue closes, the batcher task drains and ends, and the workers exit.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::Sender<Entry>,
    cfg: BatchConfig,
    stats: Arc<Stats>,
    name: Arc<str>,
    version: u64,
}

/// Starts the batcher task and `workers` worker threads for one model version.
/// Must be called inside a tokio runtime.
pub fn spawn(
    model: Arc<Model>,
    name: &str,
    version: u64,
    cfg: BatchConfig,
    workers: usize,
    prom: crate::metrics::BatchMetrics,
) -> BatcherHandle {
    // Bounded: a full queue is answered 503 at once (try_send), never waited on.
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    // One permit per idle worker: a batch forms only when a worker can take it at once.
    let idle = Arc::new(Semaphore::new(workers));
    // Unbounded in type, bounded in fact: at most `workers` batches exist (one per permit).
    let (to_workers, from_batcher) = std::sync::mpsc::channel::<(Batch, OwnedSemaphorePermit)>();
    let from_batcher = Arc::new(Mutex::new(from_batcher));
    let stats = Arc::new(Stats::new(prom));
    for i in 0..workers {
        let (model, rx, stats) = (model.clone(), from_batcher.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("kiln-worker-{name}-{version}-{i}"))
            .spawn(move || worker::run(&model, &rx, &stats))
            .expect("spawning a worker thread");
    }
    tokio::spawn(batching_task(rx, cfg, idle, to_workers));
    BatcherHandle {
        tx,
        cfg,
        stats,
        name: name.into(),
        version,
    }
}

/// Forms batches: wait for an entry, wait for an idle worker, take what is queued (up to
/// `max_batch_size` rows, waiting up to `max_queue_delay` if set), hand it over.
async fn batching_task(
    mut rx: mpsc::Receiver<Entry>,
    cfg: BatchConfig,
    idle: Arc<Semaphore>,
    to_workers: std::sync::mpsc::Sender<(Batch, OwnedSemaphorePermit)>,
) {
    let mut pending = Pending::new(cfg.max_batch_size);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(e) => pending.push(e),
                None => break,
            }
        }
        let permit = idle
            .clone()
            .acquire_owned()
            .await
            .expect("the idle semaphore is never closed");
        while !pending.is_full() {
            match rx.try_recv() {
                Ok(e) => pending.push(e),
                Err(_) => break,
            }
        }
        if !cfg.max_queue_delay.is_zero() {
            let oldest = pending.oldest().expect("pending is not empty here");
            let until = tokio::time::Instant::from_std(oldest + cfg.max_queue_delay);
            while !pending.is_full() {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    e = rx.recv() => match e {
                        Some(e) => pending.push(e),
                        None => break,
                    },
                }
            }
        }
        if let Some(batch) = pending.next_batch(Instant::now()) {
            if to_workers.send((batch, permit)).is_err() {
                break; // workers gone: the process is ending
            }
        }
    }
}

impl BatcherHandle {
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Entries waiting in the queue right now.
    pub fn queue_depth(&self) -> usize {
        self.cfg.queue_capacity - self.tx.capacity()
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
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let max = self.cfg.max_batch_size;
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
                    self.stats.deadline_passed();
                    return Err(Error::DeadlineExceeded(t));
                }
                Ok(Ok(reply)) => reply?,
                Ok(Err(_)) => return Err(Error::Forward("worker stopped before answering".into())),
                Err(_) => {
                    self.stats.deadline_passed();
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
        self.tx.try_send(entry).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.stats
                    .rejected_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.prom.rejected_queue_full.inc();
                Error::QueueFull {
                    name: self.name.to_string(),
                    version: self.version,
                    capacity: self.cfg.queue_capacity,
                }
            }
            mpsc::error::TrySendError::Closed(_) => Error::ModelUnavailable {
                name: self.name.to_string(),
                reason: format!("version {} is unloading", self.version),
            },
        })?;
        Ok(rx)
    }
}
