//! Worker threads: dedicated OS threads (never tokio's) that own an `Arc<Model>` and run
//! one forward pass per batch: one input tensor, one copy back, rows scattered in order.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use super::{Batch, Computed, Queue, Stats};
use crate::error::Error;
use crate::model::Model;

/// The worker loop; returns once every handle of the version is dropped and the queue is
/// drained.
pub(super) fn run(model: &Model, queue: &Queue, stats: &Stats) {
    debug_assert!(
        rayon::current_thread_index().is_some(),
        "a worker runs on its own rayon pool (see `batcher::spawn`)"
    );
    let mut done = None;
    while let Some(batch) = queue.next_batch(done) {
        let started = batch.started;
        compute(model, batch, stats);
        done = Some((started, started.elapsed()));
    }
}

fn compute(model: &Model, batch: Batch, stats: &Stats) {
    let start = batch.started;
    // Skip entries whose client left or whose deadline passed while the batch waited.
    let mut entries = Vec::with_capacity(batch.entries.len());
    for e in batch.entries {
        if e.reply.is_closed() {
            continue;
        }
        if e.deadline <= start {
            let waited = start - e.enqueued;
            e.expire(waited);
            continue;
        }
        entries.push(e);
    }
    if entries.is_empty() {
        return;
    }
    let n_rows: usize = entries.iter().map(|e| e.n_rows).sum();
    let input = if entries.len() == 1 {
        std::mem::take(&mut entries[0].rows)
    } else {
        let mut rows = Vec::with_capacity(n_rows * model.spec().row_len());
        for e in &mut entries {
            rows.extend_from_slice(&e.rows);
            e.rows = Vec::new();
        }
        rows
    };
    // A panic inside candle must not take the worker (and every later request) down.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.run_rows(input, n_rows)));
    let compute_time = start.elapsed();
    stats
        .prom
        .compute_seconds
        .observe(compute_time.as_secs_f64());
    stats.prom.batch_rows.observe(n_rows as f64);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.rows.fetch_add(n_rows as u64, Ordering::Relaxed);
    stats
        .max_batch_rows
        .fetch_max(n_rows as u64, Ordering::Relaxed);
    let outputs = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return fail(entries, &e.to_string()),
        Err(_) => return fail(entries, "the forward pass panicked"),
    };
    let out_len = model.output_len();
    let mut outputs = outputs;
    let mut offset = 0;
    for e in entries {
        let len = e.n_rows * out_len;
        stats
            .prom
            .queue_seconds
            .observe((start - e.enqueued).as_secs_f64());
        // The only entry of its batch (the common case at low load) takes the whole output
        // as it is; the entries of a shared batch each take a copy of their rows.
        let own = if len == outputs.len() {
            std::mem::take(&mut outputs)
        } else {
            outputs[offset..offset + len].to_vec()
        };
        let computed = Computed {
            outputs: own,
            queue_time: start - e.enqueued,
            compute_time,
            batch_rows: n_rows,
        };
        offset += len;
        let _ = e.reply.send(Ok(computed));
    }
}

fn fail(entries: Vec<super::Entry>, message: &str) {
    for e in entries {
        tracing::error!(parent: &e.span, error = message, "forward pass failed");
        let _ = e.reply.send(Err(Error::Forward(message.to_owned())));
    }
}
