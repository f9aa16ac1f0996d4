//! The export task: takes spans off the queue, sends them in batches, and drains on shutdown.
//!
//! One task and one export at a time (the OTLP exporter's contract), so a slow collector
//! backs spans up into the bounded queue, where `record` drops them, and nowhere else.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::{Counters, ExporterSettings, SpanRecord, convert};

/// At most one warning per this long for each kind of trouble: a collector that is down
/// fails every batch, and a log line per batch would be its own outage.
const WARN_EVERY: Duration = Duration::from_secs(30);

pub(super) struct Worker {
    exporter: opentelemetry_otlp::SpanExporter,
    queue: mpsc::Receiver<SpanRecord>,
    stop: watch::Receiver<Option<Instant>>,
    counters: Arc<Counters>,
    scope: InstrumentationScope,
    endpoint: String,
    max_batch: usize,
    flush_every: Duration,
    export_timeout: Duration,
    failures: Throttle,
    overflow: Throttle,
    /// `counters.dropped` as of the last overflow check, to tell new queue drops apart.
    dropped_seen: u64,
}

impl Worker {
    pub(super) fn new(
        exporter: opentelemetry_otlp::SpanExporter,
        queue: mpsc::Receiver<SpanRecord>,
        stop: watch::Receiver<Option<Instant>>,
        counters: Arc<Counters>,
        settings: ExporterSettings,
    ) -> Self {
        Worker {
            exporter,
            queue,
            stop,
            counters,
            scope: convert::scope(),
            endpoint: settings.endpoint,
            max_batch: settings.max_batch,
            flush_every: settings.flush_every,
            export_timeout: settings.export_timeout,
            failures: Throttle::default(),
            overflow: Throttle::default(),
            dropped_seen: 0,
        }
    }

    pub(super) async fn run(mut self) {
        // Capped: a huge configured batch should not be allocated before any span exists.
        let mut batch = Vec::with_capacity(self.max_batch.min(1024));
        // Not `interval`: its first tick is immediate, and would send a first span alone.
        let mut tick =
            tokio::time::interval_at(Instant::now() + self.flush_every, self.flush_every);
        // After a long export, send what waits once, not a burst of catch-up ticks.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let room = self.max_batch - batch.len();
            tokio::select! {
                // Shutdown first: with a busy queue the other branches are always ready.
                biased;
                // An error means every handle is gone: stop just the same.
                _ = self.stop.changed() => break,
                received = self.queue.recv_many(&mut batch, room) => {
                    // Zero: the queue is closed, which happens only with every handle gone.
                    if received == 0 {
                        break;
                    }
                    if batch.len() >= self.max_batch {
                        self.export(std::mem::take(&mut batch), None).await;
                    }
                }
                _ = tick.tick() => {
                    self.warn_on_overflow();
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch), None).await;
                    }
                }
            }
        }
        self.drain(batch).await;
    }

    /// Sends what was received and what is still queued, until the shutdown deadline; what
    /// does not fit in the time is dropped.
    async fn drain(&mut self, mut batch: Vec<SpanRecord>) {
        let deadline =
            (*self.stop.borrow()).unwrap_or_else(|| Instant::now() + self.export_timeout);
        // From here on `record` fails fast (and counts) instead of queueing for nobody.
        self.queue.close();
        loop {
            let room = self.max_batch.saturating_sub(batch.len());
            if room > 0 {
                // Closed: returns what is buffered without waiting, zero once empty.
                self.queue.recv_many(&mut batch, room).await;
            }
            if batch.is_empty() {
                break;
            }
            self.export(std::mem::take(&mut batch), Some(deadline))
                .await;
        }
        self.warn_on_overflow();
        // Only releases the client; nothing is buffered inside it.
        let _ = self.exporter.shutdown();
    }

    async fn export(&mut self, batch: Vec<SpanRecord>, deadline: Option<Instant>) {
        let n = batch.len() as u64;
        let limit = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => self.export_timeout,
        };
        if limit.is_zero() {
            self.lose(n);
            return;
        }
        let data = batch
            .into_iter()
            .map(|record| convert::span_data(record, &self.scope))
            .collect();
        // The client has its own timeout (the same value, retries included); this bounds the
        // whole call whatever happens inside it, and the shutdown deadline too.
        let error = match tokio::time::timeout(limit, self.exporter.export(data)).await {
            Ok(Ok(())) => {
                self.counters.exported.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        self.lose(n);
        if let Some(lost) = self.failures.note(n) {
            tracing::warn!(
                collector = %self.endpoint,
                error = %error,
                spans_lost = lost,
                "exporting spans to the OTLP collector failed; they are dropped \
                 (logged at most every 30 s)"
            );
        }
    }

    /// Counts spans this task gave up on, apart from the queue's overflow.
    fn lose(&mut self, n: u64) {
        self.counters.drop_spans(n);
        self.dropped_seen += n;
    }

    /// Reports spans `record` dropped because the queue was full since the last check.
    fn warn_on_overflow(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        let new = dropped.saturating_sub(self.dropped_seen);
        self.dropped_seen = dropped;
        if new == 0 {
            return;
        }
        if let Some(lost) = self.overflow.note(new) {
            tracing::warn!(
                collector = %self.endpoint,
                spans_lost = lost,
                "the span export queue is full; spans are dropped (logged at most every 30 s)"
            );
        }
    }
}

/// One kind of warning, no more than once per [`WARN_EVERY`], counting what it stood for.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    /// Spans lost since the last warning, the one about to be logged included.
    pending: u64,
}

impl Throttle {
    /// Adds `n` lost spans; returns the total to report when a warning is due now.
    fn note(&mut self, n: u64) -> Option<u64> {
        self.pending += n;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}
