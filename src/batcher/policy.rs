//! The batching policy: which pending entries form the next batch. A plain struct with no
//! channels and no clock of its own; the queue's lock guards it, this decides.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Batch, Entry};

/// Entries queued and not yet taken by a worker, in arrival order.
pub(crate) struct Pending {
    entries: VecDeque<Entry>,
    rows: usize,
    max_rows: usize,
}

impl Pending {
    pub(crate) fn new(max_rows: usize) -> Self {
        Pending {
            entries: VecDeque::new(),
            rows: 0,
            max_rows,
        }
    }

    pub(crate) fn push(&mut self, e: Entry) {
        self.rows += e.n_rows;
        self.entries.push_back(e);
    }

    /// Entries waiting (the queue depth).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when the next batch cannot grow: take no more off the queue.
    pub(crate) fn is_full(&self) -> bool {
        self.rows >= self.max_rows
    }

    /// When the oldest entry arrived (for `max_queue_delay`).
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.enqueued)
    }

    /// Takes the next batch in arrival order, up to `max_rows` rows. Entries whose client
    /// left are dropped; entries past their deadline are answered 504 and never computed.
    pub(crate) fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let mut batch = Batch {
            entries: Vec::new(),
            rows: 0,
            started: now,
        };
        while let Some(front) = self.entries.front() {
            if batch.rows > 0 && batch.rows + front.n_rows > self.max_rows {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.rows -= e.n_rows;
            if e.reply.is_closed() {
                continue;
            }
            if e.deadline <= now {
                let waited = now - e.enqueued;
                e.expire(waited);
                continue;
            }
            batch.rows += e.n_rows;
            batch.entries.push(e);
        }
        (!batch.entries.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::Error;
    use std::time::Duration;
    use tokio::sync::oneshot;

    pub(crate) fn entry(
        rows: usize,
        deadline_ms: u64,
        now: Instant,
    ) -> (Entry, oneshot::Receiver<super::super::Reply>) {
        let (tx, rx) = oneshot::channel();
        let e = Entry {
            rows: vec![0.0; rows],
            n_rows: rows,
            reply: tx,
            enqueued: now,
            deadline: now + Duration::from_millis(deadline_ms),
            timeout: Duration::from_millis(deadline_ms),
            span: tracing::Span::none(),
        };
        (e, rx)
    }

    #[test]
    fn batches_in_order_up_to_max_rows() {
        let now = Instant::now();
        let mut p = Pending::new(4);
        let mut rxs = Vec::new();
        for rows in [1, 2, 3, 1] {
            let (e, rx) = entry(rows, 1000, now);
            p.push(e);
            rxs.push(rx);
        }
        assert!(p.is_full());
        let b = p.next_batch(now).unwrap();
        assert_eq!((b.entries.len(), b.rows), (2, 3)); // 1 + 2; the 3 would overflow 4
        let b = p.next_batch(now).unwrap();
        assert_eq!((b.entries.len(), b.rows), (2, 4));
        assert!(p.next_batch(now).is_none());
        assert!(p.is_empty());
    }

    #[test]
    fn expired_entries_get_504_and_closed_ones_are_skipped() {
        let now = Instant::now();
        let mut p = Pending::new(8);
        let (e1, mut rx1) = entry(1, 5, now);
        let (e2, rx2) = entry(1, 1000, now);
        let (e3, _rx3) = entry(2, 1000, now);
        p.push(e1);
        p.push(e2);
        p.push(e3);
        drop(rx2);
        let later = now + Duration::from_millis(10);
        let b = p.next_batch(later).unwrap();
        assert_eq!((b.entries.len(), b.rows), (1, 2));
        match rx1.try_recv().unwrap() {
            Err(Error::DeadlineExceeded(_)) => {}
            other => panic!("expected a deadline error, got {other:?}"),
        }
    }

    #[test]
    fn an_entry_larger_than_max_still_forms_a_batch() {
        let now = Instant::now();
        let mut p = Pending::new(2);
        let (e, _rx) = entry(3, 1000, now);
        p.push(e);
        assert_eq!(p.next_batch(now).unwrap().rows, 3);
    }
}
