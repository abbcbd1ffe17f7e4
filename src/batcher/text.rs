//! The batcher of a text version: TEI's token budget instead of a row count. Each input of
//! a request is its own entry (already tokenized); a worker that is free takes entries in
//! arrival order while the batch's padded cost — longest input × inputs — stays within
//! `max_batch_tokens` and its size within `max_batch_requests`. No timer: a lone input runs
//! at once, and batches grow while the workers are busy, as in the row batcher.
//!
//! ```text
//! serving ──push(inputs)──▶ [queue: queue_capacity inputs] ◀──take by token budget── workers
//!    ▲                                                          (std::thread, pad, encode,
//!    └──────────────── one oneshot reply per input ◀──────────── pool, normalise)
//! ```
//!
//! Entries whose client left are skipped when a batch is formed and again before it is
//! computed; entries past their deadline are answered 504 and never computed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Stats;
use crate::config::BatchConfig;
use crate::error::Error;
use crate::text::{TextModel, Tokens};

/// One input's answer and where its time went.
#[derive(Debug)]
pub struct Embedded {
    /// `output_size` values: an embedding (normalised if the request asked) or a
    /// classifier's scores.
    pub embedding: Vec<f32>,
    pub queue_time: Duration,
    pub compute_time: Duration,
    /// Inputs in the batch it was computed in.
    pub batch_size: usize,
}

type TextReply = Result<Embedded, Error>;

/// One input waiting for a worker.
pub(crate) struct TextEntry {
    tokens: Tokens,
    normalize: bool,
    reply: oneshot::Sender<TextReply>,
    enqueued: Instant,
    deadline: Instant,
    timeout: Duration,
    span: tracing::Span,
}

impl TextEntry {
    fn expire(self, now: Instant) {
        let waited = now - self.enqueued;
        tracing::debug!(parent: &self.span, waited_ms = waited.as_millis() as u64, "deadline passed in queue");
        let _ = self.reply.send(Err(Error::DeadlineExceeded(self.timeout)));
    }
}

/// The budget of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub max_tokens: usize,
    pub max_requests: usize,
}

/// Takes the next batch off the front of `pending`: in arrival order, while
/// `longest × count` stays within the token budget and `count` within the request budget.
/// The first live entry always goes (an input is never longer than the model's maximum,
/// which may exceed a small budget). Abandoned entries are dropped, expired ones answered.
pub(crate) fn take_batch(
    pending: &mut VecDeque<TextEntry>,
    budget: Budget,
    now: Instant,
) -> Vec<TextEntry> {
    let mut batch: Vec<TextEntry> = Vec::new();
    let mut longest = 0;
    while let Some(front) = pending.front() {
        if front.reply.is_closed() {
            pending.pop_front();
            continue;
        }
        if front.deadline <= now {
            pending.pop_front().expect("front exists").expire(now);
            continue;
        }
        let len = front.tokens.ids.len();
        let count = batch.len() + 1;
        if !batch.is_empty()
            && (longest.max(len) * count > budget.max_tokens || count > budget.max_requests)
        {
            break;
        }
        longest = longest.max(len);
        batch.push(pending.pop_front().expect("front exists"));
    }
    batch
}

struct TextQueue {
    state: Mutex<TextState>,
    arrived: Condvar,
    cfg: BatchConfig,
}

struct TextState {
    pending: VecDeque<TextEntry>,
    closed: bool,
}

/// A text version's batcher handle: cheap to clone; when the last one drops, the queue
/// closes and the workers finish what is queued, then exit.
#[derive(Clone)]
pub struct TextBatcher {
    inner: Arc<TextInner>,
}

struct TextInner {
    queue: Arc<TextQueue>,
    stats: Arc<Stats>,
    name: Arc<str>,
    version: u64,
}

impl Drop for TextInner {
    fn drop(&mut self) {
        self.queue.state.lock().expect("text queue lock").closed = true;
        self.queue.arrived.notify_all();
    }
}

impl TextBatcher {
    /// Its Prometheus families (labelled with its model and version).
    pub fn metrics(&self) -> &crate::metrics::BatchMetrics {
        &self.inner.stats.prom
    }
}

/// Starts `spec.workers` workers for one text version (each on a rayon pool of its own,
/// as the row batcher's).
pub fn spawn_text(
    model: Arc<TextModel>,
    spec: super::Spec<'_>,
    prom: crate::metrics::BatchMetrics,
) -> TextBatcher {
    let queue = Arc::new(TextQueue {
        state: Mutex::new(TextState {
            pending: VecDeque::new(),
            closed: false,
        }),
        arrived: Condvar::new(),
        cfg: spec.batching,
    });
    let stats = Arc::new(Stats::new(prom));
    for i in 0..spec.workers {
        let (model, queue, stats) = (model.clone(), queue.clone(), stats.clone());
        crate::device::spawn_compute(
            format!("kiln-text-{}-{}-{i}", spec.name, spec.version),
            spec.threads,
            move || work(&model, &queue, &stats),
        )
        .expect("starting a worker thread");
    }
    TextBatcher {
        inner: Arc::new(TextInner {
            queue,
            stats,
            name: spec.name.into(),
            version: spec.version,
        }),
    }
}

impl TextBatcher {
    pub fn config(&self) -> &BatchConfig {
        &self.inner.queue.cfg
    }

    pub fn stats(&self) -> super::StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Inputs waiting right now.
    pub fn queue_depth(&self) -> usize {
        self.inner
            .queue
            .state
            .lock()
            .expect("text queue lock")
            .pending
            .len()
    }

    /// Embeds tokenized inputs before the deadline, in order. All are queued at once or
    /// none (503 when the queue cannot take them all).
    pub async fn embed(
        &self,
        inputs: Vec<Tokens>,
        normalize: bool,
        timeout: Duration,
        span: &tracing::Span,
    ) -> Result<Vec<Embedded>, Error> {
        let now = Instant::now();
        let deadline = now + timeout;
        let inner = &*self.inner;
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut receivers = Vec::with_capacity(inputs.len());
        {
            let queue = &inner.queue;
            let mut st = queue.state.lock().expect("text queue lock");
            if st.closed {
                return Err(Error::ModelUnavailable {
                    name: inner.name.to_string(),
                    reason: format!("version {} is unloading", inner.version),
                });
            }
            if st.pending.len() + inputs.len() > queue.cfg.queue_capacity {
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
            for tokens in inputs {
                let (reply, rx) = oneshot::channel();
                st.pending.push_back(TextEntry {
                    tokens,
                    normalize,
                    reply,
                    enqueued: now,
                    deadline,
                    timeout,
                    span: span.clone(),
                });
                receivers.push(rx);
            }
        }
        inner.queue.arrived.notify_all();
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            match tokio::time::timeout_at(deadline.into(), rx).await {
                Ok(Ok(Ok(e))) => out.push(e),
                Ok(Ok(Err(Error::DeadlineExceeded(_)))) | Err(_) => {
                    inner.stats.deadline_passed();
                    return Err(Error::DeadlineExceeded(timeout));
                }
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => return Err(Error::Forward("worker stopped before answering".into())),
            }
        }
        Ok(out)
    }
}

/// The worker loop: take a batch by the budget, compute it, answer; until the queue closes
/// and is drained.
fn work(model: &TextModel, queue: &TextQueue, stats: &Stats) {
    let budget = Budget {
        max_tokens: queue.cfg.max_batch_tokens,
        max_requests: queue.cfg.max_batch_requests,
    };
    loop {
        let batch = {
            let mut st = queue.state.lock().expect("text queue lock");
            loop {
                if st.pending.is_empty() {
                    if st.closed {
                        return;
                    }
                    st = queue.arrived.wait(st).expect("text queue lock");
                    continue;
                }
                let batch = take_batch(&mut st.pending, budget, Instant::now());
                if !batch.is_empty() {
                    // What is left may need another worker.
                    if !st.pending.is_empty() {
                        queue.arrived.notify_one();
                    }
                    break batch;
                }
            }
        };
        compute(model, batch, stats);
    }
}

fn compute(model: &TextModel, batch: Vec<TextEntry>, stats: &Stats) {
    let start = Instant::now();
    // The client may have left while the batch formed.
    let entries: Vec<TextEntry> = batch.into_iter().filter(|e| !e.reply.is_closed()).collect();
    if entries.is_empty() {
        return;
    }
    let n = entries.len();
    let longest = entries
        .iter()
        .map(|e| e.tokens.ids.len())
        .max()
        .unwrap_or(0);
    let tokens: usize = entries.iter().map(|e| e.tokens.ids.len()).sum();
    let inputs: Vec<&Tokens> = entries.iter().map(|e| &e.tokens).collect();
    // A panic inside candle must not take the worker (and every later request) down.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.forward(&inputs)));
    let compute_time = start.elapsed();
    let prom = &stats.prom;
    prom.compute_seconds.observe(compute_time.as_secs_f64());
    prom.batch_rows.observe(n as f64);
    prom.batch_tokens.observe(tokens as f64);
    let padded = longest * n;
    if padded > 0 {
        prom.padding_ratio
            .observe((padded - tokens) as f64 / padded as f64);
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.rows.fetch_add(n as u64, Ordering::Relaxed);
    stats.max_batch_rows.fetch_max(n as u64, Ordering::Relaxed);
    let values = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(entries, &e.to_string()),
        Err(_) => return fail(entries, "the forward pass panicked"),
    };
    let width = model.output_size();
    for (e, row) in entries.into_iter().zip(values.chunks_exact(width)) {
        let mut embedding = row.to_vec();
        if e.normalize {
            crate::text::normalize(&mut embedding);
        }
        let queue_time = start.saturating_duration_since(e.enqueued);
        prom.queue_seconds.observe(queue_time.as_secs_f64());
        let _ = e.reply.send(Ok(Embedded {
            embedding,
            queue_time,
            compute_time,
            batch_size: n,
        }));
    }
}

fn fail(entries: Vec<TextEntry>, message: &str) {
    for e in entries {
        tracing::error!(parent: &e.span, error = message, "forward pass failed");
        let _ = e.reply.send(Err(Error::Forward(message.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        len: usize,
        deadline_ms: u64,
        now: Instant,
    ) -> (TextEntry, oneshot::Receiver<TextReply>) {
        let (reply, rx) = oneshot::channel();
        let e = TextEntry {
            tokens: Tokens {
                ids: vec![1; len],
                types: vec![0; len],
            },
            normalize: false,
            reply,
            enqueued: now,
            deadline: now + Duration::from_millis(deadline_ms),
            timeout: Duration::from_millis(deadline_ms),
            span: tracing::Span::none(),
        };
        (e, rx)
    }

    fn lens(batch: &[TextEntry]) -> Vec<usize> {
        batch.iter().map(|e| e.tokens.ids.len()).collect()
    }

    #[test]
    fn a_batch_closes_before_the_padded_cost_passes_the_token_budget() {
        let now = Instant::now();
        let mut pending = VecDeque::new();
        let mut rxs = Vec::new();
        for len in [10, 20, 30, 5, 5] {
            let (e, rx) = entry(len, 1000, now);
            pending.push_back(e);
            rxs.push(rx);
        }
        let budget = Budget {
            max_tokens: 60,
            max_requests: 100,
        };
        // 10, then 20×2 = 40, then 30×3 = 90 > 60: closes at two.
        assert_eq!(lens(&take_batch(&mut pending, budget, now)), [10, 20]);
        // 30, then 30×2 = 60, then 30×3 = 90: closes at two again.
        assert_eq!(lens(&take_batch(&mut pending, budget, now)), [30, 5]);
        assert_eq!(lens(&take_batch(&mut pending, budget, now)), [5]);
        assert!(take_batch(&mut pending, budget, now).is_empty());
    }

    #[test]
    fn the_request_budget_and_an_input_longer_than_the_budget() {
        let now = Instant::now();
        let mut pending = VecDeque::new();
        let mut rxs = Vec::new();
        for len in [100, 1, 1, 1] {
            let (e, rx) = entry(len, 1000, now);
            pending.push_back(e);
            rxs.push(rx);
        }
        let budget = Budget {
            max_tokens: 50,
            max_requests: 2,
        };
        // Alone over the token budget, it still goes (by itself).
        assert_eq!(lens(&take_batch(&mut pending, budget, now)), [100]);
        assert_eq!(lens(&take_batch(&mut pending, budget, now)), [1, 1]);
        assert_eq!(lens(&take_batch(&mut pending, budget, now)), [1]);
    }

    #[test]
    fn clients_that_left_are_skipped_and_expired_entries_answered() {
        let now = Instant::now();
        let mut pending = VecDeque::new();
        let (gone, gone_rx) = entry(7, 1000, now);
        let (late, mut late_rx) = entry(7, 5, now);
        let (live, _live_rx) = entry(3, 1000, now);
        pending.extend([gone, late, live]);
        drop(gone_rx);
        let budget = Budget {
            max_tokens: 8,
            max_requests: 8,
        };
        // Neither the abandoned 7 nor the expired 7 counts against the budget.
        let batch = take_batch(&mut pending, budget, now + Duration::from_millis(10));
        assert_eq!(lens(&batch), [3]);
        assert!(matches!(
            late_rx.try_recv(),
            Ok(Err(Error::DeadlineExceeded(_)))
        ));
    }
}
