//! The queue between the data path and the export task: bounded in spans, never
//! waited on, and quiet — the export task is woken once per batch, not per span.
//!
//! A channel that wakes its receiver on every send cost a task wake-up (and a timer
//! registration) per request leg on a busy node. Here a submission takes a mutex for a
//! push; it wakes the export task only when the queue goes from empty to not empty
//! (the export task then starts its flush timer) or fills a batch.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use super::span::PodSpans;

/// What the data path and the export task share.
#[derive(Debug)]
pub struct SpanQueue {
    pending: Mutex<Pending>,
    /// Signalled when the queue becomes non-empty, fills a batch, or closes.
    ready: Notify,
    /// Spans held at most.
    capacity: usize,
    /// Spans that make a batch.
    batch: usize,
    /// Spans that did not fit.
    dropped: Counter,
}

#[derive(Debug, Default)]
struct Pending {
    items: VecDeque<PodSpans>,
    spans: usize,
    /// Every [`SpanSink`] is gone.
    closed: bool,
}

impl SpanQueue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a consistent Vec: go on with it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spans waiting, and whether the queue is closed (every sink is gone).
    pub fn state(&self) -> (usize, bool) {
        let p = self.lock();
        (p.spans, p.closed)
    }

    /// The oldest submissions, in order, up to a batch of spans (at least one
    /// submission, however large, when any is waiting).
    pub fn take_batch(&self) -> Vec<PodSpans> {
        let mut p = self.lock();
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(front) = p.items.front() {
            if !out.is_empty() && n + front.count > self.batch {
                break;
            }
            n += front.count;
            out.extend(p.items.pop_front());
        }
        p.spans -= n;
        out
    }

    /// Waits until the queue became non-empty, filled a batch or closed since the
    /// last wake-up (a signal sent while nobody waited is kept).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Spans per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// Where the data path submits finished spans. Cheap to clone; never waits.
#[derive(Debug, Clone)]
pub struct SpanSink {
    queue: Arc<SpanQueue>,
    /// Dropped with the last sink: closes the queue.
    _open: Arc<Open>,
}

/// Closes the queue when the last [`SpanSink`] is dropped.
#[derive(Debug)]
struct Open(Arc<SpanQueue>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

impl SpanSink {
    /// A queue of at most `capacity` spans, whose reader is woken per `batch` spans;
    /// spans that do not fit are counted in `dropped`. Returns the sink and the
    /// reader's side.
    pub fn new(capacity: usize, batch: usize, dropped: Counter) -> (Self, Arc<SpanQueue>) {
        let queue = Arc::new(SpanQueue {
            pending: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
            batch: batch.clamp(1, capacity.max(1)),
            dropped,
        });
        let sink = Self {
            queue: queue.clone(),
            _open: Arc::new(Open(queue.clone())),
        };
        (sink, queue)
    }

    /// Queues spans without waiting; drops and counts them when they do not fit.
    pub fn submit(&self, spans: PodSpans) {
        let q = &self.queue;
        let n = spans.count;
        let wake = {
            let mut p = q.lock();
            if p.spans + n > q.capacity {
                drop(p);
                q.dropped.inc_by(n as u64);
                return;
            }
            let before = p.spans;
            p.items.push_back(spans);
            p.spans += n;
            before == 0 || (before < q.batch && p.spans >= q.batch)
        };
        if wake {
            q.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pod::PodIdentity, workloads::PodKey};

    fn spans(count: usize) -> PodSpans {
        PodSpans {
            pod: Arc::new(PodIdentity {
                key: PodKey {
                    namespace: "ns".into(),
                    name: "p".into(),
                },
                resource: Default::default(),
            }),
            count,
            bytes: vec![0; count],
        }
    }

    #[tokio::test]
    async fn bounded_in_spans_woken_per_batch_closed_with_the_last_sink() {
        let dropped = Counter::default();
        let (sink, queue) = SpanSink::new(10, 4, dropped.clone());
        // Empty to non-empty: one wake-up.
        sink.submit(spans(2));
        tokio::time::timeout(std::time::Duration::from_secs(1), queue.ready())
            .await
            .expect("woken when the queue became non-empty");
        assert_eq!(queue.state(), (2, false));
        sink.submit(spans(2));
        queue.ready().await; // the batch signal
                             // Full at 10 spans: what does not fit is dropped and counted, in spans.
        sink.submit(spans(6));
        sink.submit(spans(2));
        assert_eq!((queue.state().0, dropped.get()), (10, 2));
        // Batches of at most 4 spans, at least one submission.
        let counts = |v: Vec<PodSpans>| v.iter().map(|s| s.count).collect::<Vec<_>>();
        assert_eq!(counts(queue.take_batch()), [2, 2]);
        assert_eq!(counts(queue.take_batch()), [6]);
        assert_eq!(queue.state(), (0, false));
        assert!(queue.take_batch().is_empty());
        // Clones keep it open; the last one closes it and wakes the reader.
        let other = sink.clone();
        drop(sink);
        assert_eq!(queue.state(), (0, false));
        other.submit(spans(1));
        drop(other);
        assert_eq!(queue.state(), (1, true));
        assert_eq!(counts(queue.take_batch()), [1]);
    }
}
