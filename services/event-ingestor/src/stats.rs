//! Counters behind the periodic summary log line and the Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) messages: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) incidents_created: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    /// Never reset (the summary takes the others).
    pub(crate) total: AtomicU64,
    /// Batches handled, never reset.
    pub(crate) batches_total: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn batches_total(&self) -> u64 {
        self.batches_total.load(Ordering::Relaxed)
    }

    fn take(counter: &AtomicU64) -> u64 {
        counter.swap(0, Ordering::Relaxed)
    }
}

/// Logs one summary line per interval for a consumer (events or inventory).
pub(crate) async fn summarise(
    name: &'static str,
    stats: std::sync::Arc<Stats>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let elapsed = last.elapsed().as_secs_f64().max(0.001);
        last = Instant::now();
        let messages = Stats::take(&stats.messages);
        let batches = Stats::take(&stats.batches);
        let dead_lettered = Stats::take(&stats.dead_lettered);
        let created = Stats::take(&stats.incidents_created);
        let redelivered = Stats::take(&stats.redelivered);
        if messages == 0 && dead_lettered == 0 {
            continue;
        }
        tracing::info!(
            consumer = name,
            per_sec = format!("{:.0}", messages as f64 / elapsed),
            messages,
            avg_batch = format!("{:.1}", messages as f64 / batches.max(1) as f64),
            dead_lettered,
            incidents_created = created,
            redelivered,
            "ingest summary"
        );
    }
}

/// Publishes each consumer's backlog (`opspilot_consumer_pending`) every few seconds:
/// the signal autoscaling acts on.
pub(crate) async fn watch_lag(
    js: async_nats::jetstream::Context,
    specs: Vec<crate::consumer::ConsumerSpec>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        for spec in &specs {
            let Ok(stream) = js.get_stream(&spec.bus.stream).await else { continue };
            let Ok(mut consumer) =
                stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&spec.bus.durable).await
            else {
                continue;
            };
            if let Ok(info) = consumer.info().await {
                metrics::gauge!("opspilot_consumer_pending", "consumer" => spec.label)
                    .set(info.num_pending as f64);
                metrics::gauge!("opspilot_consumer_ack_pending", "consumer" => spec.label)
                    .set(info.num_ack_pending as f64);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
