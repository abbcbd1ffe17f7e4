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
//! wake-up (its reply) instead of three. An idle worker is woken only when the busy ones
//! would not be back soon (see [`QueueState::wake_idle`]): with a small model, a second
//! worker woken for every request computed batches of one or two rows, and the wake-ups
//! cost more than the wait they saved.

mod policy;
mod text;
mod worker;

pub use text::{spawn_text, Embedded, TextBatcher};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// When a worker took it.
    started: Instant,
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
    /// Entries pending, mirrored outside the lock for workers spinning before they sleep.
    queued: AtomicUsize,
    /// Signalled when an entry arrives and a worker is waiting for one, and on close.
    arrived: Condvar,
    cfg: BatchConfig,
}

pub(crate) struct QueueState {
    pending: Pending,
    /// Workers blocked on `arrived` with nothing to do (a push may wake one: [`Self::wake_idle`]).
    idle: usize,
    /// When each worker now computing a batch started it.
    busy_since: Vec<Instant>,
    /// Recent batches' compute time (an exponential moving average); `None` before the first.
    batch_time: Option<Duration>,
    /// Workers holding a batch open for `max_queue_delay` (a push wakes them all).
    gathering: usize,
    /// Every handle dropped: workers finish what is queued, then exit.
    closed: bool,
}

/// An idle worker is woken for queued work only when no busy worker is expected to be free
/// within this long: a wake-up, and the small batch it computes, cost more than the wait.
const WAKE_AFTER: Duration = Duration::from_micros(50);

impl QueueState {
    /// Whether queued work should wake an idle worker now, rather than wait for a busy one
    /// to come back for it (which then takes it, and whatever arrives meanwhile, as one
    /// batch). Yes when no worker is busy, when a full batch is waiting, when batches take
    /// long enough that the wait would show (more than [`WAKE_AFTER`]), when the first busy
    /// worker is late by more than that (stalled, or starved of CPU), and before any batch
    /// has been timed.
    fn wake_idle(&self, now: Instant) -> bool {
        if self.idle == 0 || self.pending.is_empty() {
            return false;
        }
        let (Some(batch_time), Some(&first)) = (self.batch_time, self.busy_since.iter().min())
        else {
            return true;
        };
        let back = first + batch_time;
        self.pending.is_full() || now + WAKE_AFTER < back || now > back + WAKE_AFTER
    }

    /// A worker finished the batch it started at `started`, which took `took`.
    fn finished(&mut self, started: Instant, took: Duration) {
        if let Some(i) = self.busy_since.iter().position(|&s| s == started) {
            self.busy_since.swap_remove(i);
        }
        // New batches weigh one quarter: the estimate follows a changing load within a few
        // batches and one slow batch does not swing it.
        self.batch_time = Some(match self.batch_time {
            None => took,
            Some(t) => (t * 3 + took) / 4,
        });
    }
}

impl Queue {
    fn new(cfg: BatchConfig, workers: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                pending: Pending::new(cfg.max_batch_size),
                idle: 0,
                busy_since: Vec::with_capacity(workers),
                batch_time: None,
                gathering: 0,
                closed: false,
            }),
            arrived: Condvar::new(),
            queued: AtomicUsize::new(0),
            cfg,
        }
    }

    /// Takes the next batch, blocking while the queue is empty; `None` once it is closed
    /// and drained. With `max_queue_delay`, a batch smaller than `max_batch_size` waits up
    /// to that long after its oldest entry arrived for more rows. `done` is the worker's
    /// previous batch: when it started and how long it took.
    pub(crate) fn next_batch(&self, done: Option<(Instant, Duration)>) -> Option<Batch> {
        let mut st = self
            .state
            .lock()
            .expect("no thread panics holding the queue lock");
        if let Some((started, took)) = done {
            st.finished(started, took);
        }
        loop {
            let mut spun = false;
            while st.pending.is_empty() {
                if st.closed {
                    return None;
                }
                if !spun && !self.cfg.worker_spin.is_zero() {
                    // Stay awake a moment: the next entry is often about to arrive, and then
                    // no one pays for a wake-up (a futex wake and, on a VM, an inter-processor
                    // interrupt: the costliest step of a small request). Yielding leaves the
                    // core to every runnable thread, so this takes no CPU anyone else wants.
                    spun = true;
                    drop(st);
                    let until = Instant::now() + self.cfg.worker_spin;
                    while self.queued.load(Ordering::Relaxed) == 0 && Instant::now() < until {
                        std::thread::yield_now();
                    }
                    st = self.state.lock().expect("queue lock");
                    continue;
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
                    st = self
                        .arrived
                        .wait_timeout(st, until - now)
                        .expect("queue lock")
                        .0;
                    st.gathering -= 1;
                    if st.pending.is_empty() {
                        break; // another worker took them
                    }
                }
            }
            // Entries past their deadline are answered 504 here; if nothing is left, wait on.
            let now = Instant::now();
            let batch = st.pending.next_batch(now);
            self.queued.store(st.pending.len(), Ordering::Relaxed);
            if let Some(batch) = batch {
                st.busy_since.push(now);
                // What is left over may need another worker.
                let wake = st.wake_idle(now);
                drop(st);
                if wake {
                    self.arrived.notify_one();
                }
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

/// What one version's batcher is started with.
pub struct Spec<'a> {
    /// The model's name, for thread names and logs.
    pub name: &'a str,
    pub version: u64,
    pub batching: BatchConfig,
    /// Worker threads, each on a rayon pool of its own.
    pub workers: usize,
    /// Threads in each worker's pool (candle's intra-op threads).
    pub threads: usize,
}

/// Starts `spec.workers` workers for one model version, each on a rayon pool of its own
/// with `spec.threads` threads (see [`crate::device::spawn_compute`]). Each pulls
/// batches off the version's queue itself: no hand-off task between the request and the
/// worker.
pub fn spawn(
    model: Arc<Model>,
    spec: Spec<'_>,
    prom: crate::metrics::BatchMetrics,
) -> BatcherHandle {
    let Spec {
        name,
        version,
        batching,
        workers,
        threads,
    } = spec;
    let queue = Arc::new(Queue::new(batching, workers));
    let stats = Arc::new(Stats::new(prom));
    for i in 0..workers {
        let (model, queue, stats) = (model.clone(), queue.clone(), stats.clone());
        crate::device::spawn_compute(
            format!("kiln-worker-{name}-{version}-{i}"),
            threads,
            move || worker::run(&model, &queue, &stats),
        )
        .expect("starting a worker thread");
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
        self.inner
            .queue
            .state
            .lock()
            .expect("queue lock")
            .pending
            .len()
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
        if n_rows <= max {
            // One entry, one reply: nothing to collect or reassemble.
            let rx = self.submit(rows, n_rows, now, deadline, timeout, span)?;
            return self.reply(rx, deadline, timeout).await;
        }
        let mut receivers = Vec::with_capacity(n_rows.div_ceil(max));
        for (i, chunk) in rows.chunks(max * row_len).enumerate() {
            let n = (n_rows - i * max).min(max);
            // On a full queue, the chunks already queued are dropped with their receivers
            // and skipped by the batcher (their reply channel is closed).
            receivers.push(self.submit(chunk.to_vec(), n, now, deadline, timeout, span)?);
        }
        let mut result: Option<Computed> = None;
        for rx in receivers {
            let computed = self.reply(rx, deadline, timeout).await?;
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

    /// Waits for one entry's reply until the request's deadline. Every 504 is counted here,
    /// once, whichever side noticed the deadline first.
    async fn reply(
        &self,
        rx: oneshot::Receiver<Reply>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Computed, Error> {
        let stats = &self.inner.stats;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(Err(Error::DeadlineExceeded(t)))) => {
                stats.deadline_passed();
                Err(Error::DeadlineExceeded(t))
            }
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Error::Forward("worker stopped before answering".into())),
            Err(_) => {
                stats.deadline_passed();
                Err(Error::DeadlineExceeded(timeout))
            }
        }
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
            inner
                .stats
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            inner.stats.prom.rejected_queue_full.inc();
            return Err(Error::QueueFull {
                name: inner.name.to_string(),
                version: inner.version,
                capacity: queue.cfg.queue_capacity,
            });
        }
        st.pending.push(entry);
        queue.queued.store(st.pending.len(), Ordering::Relaxed);
        let gathering = st.gathering;
        let wake = gathering == 0 && st.wake_idle(enqueued);
        drop(st);
        if gathering > 0 {
            queue.arrived.notify_all();
        } else if wake {
            queue.arrived.notify_one();
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::policy::{tests::entry, Pending};
    use super::{Queue, QueueState};
    use crate::config::BatchConfig;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn queue(worker_spin: Duration) -> Arc<Queue> {
        Arc::new(Queue::new(
            BatchConfig {
                max_batch_size: 8,
                max_queue_delay: Duration::ZERO,
                queue_capacity: 8,
                request_timeout: Duration::from_secs(10),
                worker_spin,
                max_batch_tokens: 16_384,
                max_batch_requests: 64,
                max_client_batch_size: 32,
            },
            1,
        ))
    }

    /// Waits up to 10 s for `cond` on the queue's state.
    fn eventually(q: &Queue, cond: impl Fn(&QueueState) -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if cond(&q.state.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Puts an entry in the queue *without* notifying anyone; keep the receiver, or the
    /// entry counts as abandoned and is skipped.
    fn push_silently(q: &Queue) -> impl Drop {
        let mut st = q.state.lock().unwrap();
        let (e, rx) = entry(1, 10_000, Instant::now());
        st.pending.push(e);
        q.queued.store(st.pending.len(), Ordering::Relaxed);
        rx
    }

    #[test]
    fn a_spinning_worker_takes_new_work_without_a_wake_up() {
        let q = queue(Duration::from_secs(30));
        let worker = std::thread::spawn({
            let q = q.clone();
            move || q.next_batch(None).map(|b| b.rows)
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.state.lock().unwrap().idle, 0, "spinning, not asleep");
        let _rx = push_silently(&q);
        assert_eq!(worker.join().unwrap(), Some(1));
    }

    #[test]
    fn without_spin_an_idle_worker_sleeps_until_woken() {
        let q = queue(Duration::ZERO);
        let worker = std::thread::spawn({
            let q = q.clone();
            move || q.next_batch(None).map(|b| b.rows)
        });
        assert!(
            eventually(&q, |st| st.idle == 1),
            "the worker went to sleep"
        );
        let _rx = push_silently(&q);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!worker.is_finished(), "nobody woke it");
        q.arrived.notify_one();
        assert_eq!(worker.join().unwrap(), Some(1));
    }

    fn state(idle: usize, max_rows: usize, queued: &[usize], now: Instant) -> QueueState {
        let mut pending = Pending::new(max_rows);
        for &rows in queued {
            // The receivers are dropped: the entries only count rows here.
            pending.push(entry(rows, 1000, now).0);
        }
        QueueState {
            pending,
            idle,
            busy_since: Vec::new(),
            batch_time: None,
            gathering: 0,
            closed: false,
        }
    }

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn an_idle_worker_is_woken_unless_a_busy_one_is_back_soon() {
        let now = Instant::now();
        // Nothing queued, or no idle worker: nobody to wake.
        assert!(!state(1, 64, &[], now).wake_idle(now));
        assert!(!state(0, 64, &[1], now).wake_idle(now));
        // No worker busy, or no batch timed yet: wake.
        let mut st = state(1, 64, &[1], now);
        assert!(st.wake_idle(now));
        st.busy_since.push(now);
        assert!(st.wake_idle(now), "no batch has been timed yet");
        // Batches of 20 µs: the busy worker is back sooner than a wake-up pays.
        st.batch_time = Some(20 * US);
        assert!(!st.wake_idle(now + 5 * US));
        // …unless it is late by more than that (stalled, or starved of CPU).
        assert!(!st.wake_idle(now + 60 * US));
        assert!(st.wake_idle(now + 100 * US));
        // Batches of 2 ms: a request would wait long for it; wake.
        st.batch_time = Some(2000 * US);
        assert!(st.wake_idle(now + 5 * US));
        assert!(!st.wake_idle(now + 1990 * US), "nearly back");
        // A full batch waiting wakes a worker however soon the busy one is back.
        let mut st = state(1, 4, &[2, 2], now);
        st.busy_since.push(now);
        st.batch_time = Some(20 * US);
        assert!(st.wake_idle(now + 5 * US));
    }

    #[test]
    fn finishing_a_batch_frees_the_worker_and_updates_the_estimate() {
        let now = Instant::now();
        let mut st = state(1, 64, &[1], now);
        let (a, b) = (now, now + 7 * US);
        st.busy_since.extend([a, b]);
        st.finished(a, 100 * US);
        assert_eq!(st.busy_since, vec![b]);
        assert_eq!(st.batch_time, Some(100 * US));
        st.finished(b, 20 * US);
        assert!(st.busy_since.is_empty());
        assert_eq!(st.batch_time, Some(80 * US)); // (3·100 + 20) / 4
    }
}
