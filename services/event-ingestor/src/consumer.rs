//! The machinery both consumers share: a durable pull consumer shared by every
//! replica, batches formed from whatever is ready, transient failures retried in place
//! (extending the ack deadline), poison messages dead-lettered, and redelivery capped.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use service_kit::backoff::Backoff;
use service_kit::service::sleep_or_shutdown;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, DlqOrigin, Subjects};

use crate::known::KnownAgents;

/// Where a consumer reads and how.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSpec {
    pub(crate) label: &'static str,
    /// The durable consumer itself (stream, name, filter, ack deadline, redeliveries).
    pub(crate) bus: natsbus::DurableSpec,
    pub(crate) origin: DlqOrigin,
    pub(crate) batch_size: usize,
    /// Payload bytes a batch may hold (at least one message always fits).
    pub(crate) batch_bytes: usize,
    /// Batches handled at once (1 keeps stream order, which inventory needs).
    pub(crate) concurrency: usize,
    /// How long a batch waits for more messages after its first.
    pub(crate) linger: Duration,
}

/// Why a message was refused, as it goes into the dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

impl Rejection {
    pub(crate) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// Handles one batch: decides, writes, then acknowledges or dead-letters each message.
pub(crate) trait BatchHandler: Send + Sync + 'static {
    fn handle(&self, batch: Vec<Message>, shutdown: &CancellationToken) -> impl Future<Output = ()> + Send;
}

/// Runs one consumer until `shutdown`: the batch in flight finishes (and is acked),
/// messages already fetched but not started are handed back with a NAK.
pub(crate) async fn run<H: BatchHandler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handler = std::sync::Arc::new(handler);
    // Batches in flight at once: while one waits on Postgres the next is decoded and
    // written on another connection; acks follow each batch's own commit.
    let mut inflight: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut started_once = false;
    let limits = natsbus::PullLimits { messages: spec.batch_size, bytes: Some(spec.batch_bytes) };
    while let Some(messages) = natsbus::pull_until(&js, &spec.bus, limits, spec.label, &shutdown).await {
        if started_once {
            tracing::info!(consumer = spec.label, durable = %spec.bus.durable, "{} consumer resumed", spec.label);
        } else {
            tracing::info!(consumer = spec.label, durable = %spec.bus.durable, stream = %spec.bus.stream, "{} consumer started", spec.label);
            started_once = true;
        }

        let mut messages = messages;
        loop {
            while inflight.len() >= spec.concurrency.max(1) {
                inflight.join_next().await;
            }
            while inflight.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    hand_back_ready(&mut messages).await;
                    while inflight.join_next().await.is_some() {}
                    return Ok(());
                }
                first = messages.next() => first,
            };
            let Some(first) = first else {
                tracing::warn!(consumer = spec.label, "message stream ended; re-subscribing");
                break;
            };
            let (batch, broken) =
                gather(first, &mut messages, (spec.batch_size, spec.batch_bytes), spec.linger).await;
            if !batch.is_empty() {
                let (handler, shutdown) = (std::sync::Arc::clone(&handler), shutdown.clone());
                inflight.spawn(async move { handler.handle(batch, &shutdown).await });
            }
            if let Some(err) = broken {
                // Heartbeats missed (server restart), consumer deleted, ...: start over.
                tracing::warn!(consumer = spec.label, error = %err, "consumer stream error; re-subscribing");
                sleep_or_shutdown(Duration::from_millis(200), &shutdown).await;
                break;
            }
        }
    }
    while inflight.join_next().await.is_some() {}
    Ok(())
}

type Item = Result<Message, async_nats::jetstream::consumer::pull::MessagesError>;

/// Forms a batch: the first message, then whatever arrives within `linger` of it, up to
/// `max` messages and bytes (the first message counts whatever its size). Messages come off the socket in read-buffer-sized runs (about a hundred);
/// lingering a few milliseconds turns a backlog into full batches, while a trickle
/// waits at most `linger`.
async fn gather<S>(
    first: Item,
    messages: &mut S,
    (max, max_bytes): (usize, usize),
    linger: Duration,
) -> (Vec<Message>, Option<async_nats::jetstream::consumer::pull::MessagesError>)
where
    S: futures::Stream<Item = Item> + Unpin,
{
    let mut batch = Vec::with_capacity(max.min(1024));
    let mut bytes = match first {
        Ok(msg) => {
            let size = msg.payload.len();
            batch.push(msg);
            size
        }
        Err(err) => return (batch, Some(err)),
    };
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max && bytes < max_bytes {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(msg))) => {
                bytes += msg.payload.len();
                batch.push(msg);
            }
            Ok(Some(Err(err))) => return (batch, Some(err)),
            Ok(None) | Err(_) => break,
        }
    }
    (batch, None)
}

/// NAKs messages that were fetched but will not be handled, so another replica gets
/// them now rather than after the ack deadline.
async fn hand_back_ready<S>(messages: &mut S)
where
    S: futures::Stream<Item = Item> + Unpin,
{
    let mut handed_back = 0usize;
    while let Some(Some(item)) = messages.next().now_or_never() {
        if let Ok(msg) = item {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            handed_back += 1;
        }
    }
    if handed_back > 0 {
        tracing::info!(handed_back, "handed unstarted messages back to the stream");
    }
}

/// A batch after decoding and the enrollment check, each item with its index in the
/// batch.
pub(crate) struct Checked<T> {
    pub(crate) good: Vec<(usize, T)>,
    pub(crate) rejected: Vec<(usize, Rejection)>,
}

/// The first half of every batch: decode each message on a blocking thread (CPU work),
/// then refuse those from agents that are not enrolled. `None` when the batch was handed
/// back: the decoding task died, the enrollment check failed for good, or shutdown.
pub(crate) async fn decode_enrolled<T, D>(
    batch: &[Message],
    known: &KnownAgents,
    pool: &PgPool,
    ack_wait: Duration,
    shutdown: &CancellationToken,
    decode: D,
    agent_of: fn(&T) -> &AgentId,
) -> Option<Checked<T>>
where
    T: Send + 'static,
    D: Fn(&str, &[u8]) -> Result<T, Rejection> + Send + 'static,
{
    let inputs: Vec<(String, Bytes)> =
        batch.iter().map(|m| (m.subject.to_string(), m.payload.clone())).collect();
    let decoded = match tokio::task::spawn_blocking(move || {
        inputs.iter().map(|(s, p)| decode(s, p)).collect::<Vec<_>>()
    })
    .await
    {
        Ok(decoded) => decoded,
        Err(err) => {
            tracing::error!(error = %err, "decoding task failed; handing the batch back");
            nak_all(batch).await;
            return None;
        }
    };

    let ids: Vec<AgentId> =
        decoded.iter().filter_map(|r| r.as_ref().ok().map(|t| agent_of(t).clone())).collect();
    let enrolled = match retry_transient("known agents", batch, ack_wait, shutdown, || {
        known.filter_enrolled(pool, ids.iter())
    })
    .await
    {
        Some(Ok(enrolled)) => enrolled,
        Some(Err(err)) => {
            tracing::error!(error = %err, "checking enrolled agents failed; handing the batch back");
            nak_all(batch).await;
            return None;
        }
        None => {
            nak_all(batch).await;
            return None;
        }
    };

    let mut checked = Checked { good: Vec::with_capacity(batch.len()), rejected: Vec::new() };
    for (i, result) in decoded.into_iter().enumerate() {
        match result {
            Ok(item) if enrolled.contains(agent_of(&item)) => checked.good.push((i, item)),
            Ok(item) => checked.rejected.push((
                i,
                Rejection::new("unknown_agent", format!("agent {} is not enrolled", agent_of(&item))),
            )),
            Err(rejection) => checked.rejected.push((i, rejection)),
        }
    }
    Some(checked)
}

/// Runs `op` until it succeeds or fails permanently. Transient failures (database down,
/// deadlock, timeout) are retried with backoff while the batch's ack deadline is
/// extended, so no other replica receives it meanwhile. Returns `None` when shutdown
/// interrupted the retries (the caller hands the batch back).
pub(crate) async fn retry_transient<T, F, Fut>(
    what: &'static str,
    batch: &[Message],
    ack_wait: Duration,
    shutdown: &CancellationToken,
    mut op: F,
) -> Option<Result<T, storage::StorageError>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, storage::StorageError>>,
{
    let mut attempt: u32 = 0;
    let mut last_progress = tokio::time::Instant::now();
    loop {
        match op().await {
            Ok(value) => {
                if attempt > 0 {
                    tracing::info!(what, attempts = attempt + 1, "recovered after transient failures");
                }
                return Some(Ok(value));
            }
            Err(err) if err.is_transient() => {
                attempt += 1;
                metrics::counter!("opspilot_ingest_retries_total", "what" => what).increment(1);
                if service_kit::backoff::worth_logging(attempt) {
                    tracing::warn!(what, attempt, error = %err, "transient failure; retrying the batch");
                }
                if last_progress.elapsed() >= ack_wait / 3 {
                    for msg in batch {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                    last_progress = tokio::time::Instant::now();
                }
                if sleep_or_shutdown(Backoff::RECONNECT.delay(attempt), shutdown).await {
                    return None;
                }
            }
            Err(err) => return Some(Err(err)),
        }
    }
}

/// Hands a whole batch back (NAK) for redelivery, e.g. when shutdown interrupted it.
pub(crate) async fn nak_all(batch: &[Message]) {
    for msg in batch {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
}

/// Dead-letters each rejected message (waiting for the dead-letter stream's ack), then
/// terminates it so it is never redelivered. A message whose dead-letter publish fails
/// is left unacknowledged: it comes back and is dead-lettered then.
pub(crate) async fn dead_letter_all(
    js: &jetstream::Context,
    pool: &storage::PgPool,
    subjects: &Subjects,
    budget: &natsbus::DeadLetterBudget,
    origin: DlqOrigin,
    rejected: Vec<(&Message, Rejection)>,
) -> u64 {
    let results = futures::future::join_all(rejected.into_iter().map(|(msg, rejection)| async move {
        // One agent's garbage is charged to that agent; subjects without a valid id
        // share one allowance.
        let agent = subjects.agent_of(msg.subject.as_str()).map_or_else(|| "unidentified".to_owned(), |a| a.to_string());
        let sequence = msg.info().ok().map(|info| info.stream_sequence);
        let letter = natsbus::DeadLetter {
            origin,
            subject: msg.subject.as_str(),
            payload: msg.payload.clone(),
            stream_sequence: sequence,
            reason: rejection.reason,
            detail: &rejection.detail,
        };
        let charge = |bytes| {
            let agent = agent.as_str();
            async move {
                let usage = storage::dead_letters::charge(pool, agent, bytes).await?;
                Ok::<_, storage::StorageError>(natsbus::Usage { letters: usage.letters, bytes: usage.bytes })
            }
        };
        match natsbus::dead_letter_within(js, subjects, budget, &agent, letter, charge).await {
            Ok(parked) => {
                tracing::debug!(reason = rejection.reason, detail = %rejection.detail, subject = %msg.subject, parked, "message dead-lettered");
                let _ = msg.ack_with(AckKind::Term).await;
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "dead-letter publish failed; the message will be redelivered");
                false
            }
        }
    }))
    .await;
    results.into_iter().filter(|ok| *ok).count() as u64
}

/// Dead-letters messages JetStream gave up on (`max_deliver` reached), so nothing is
/// ever dropped silently. Served in a queue group: one replica handles each advisory.
pub(crate) async fn watch_max_deliveries(
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    spec: ConsumerSpec,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    let subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}", spec.bus.stream, spec.bus.durable);
    let mut sub = client.queue_subscribe(subject, format!("{}-advisories", spec.bus.durable)).await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = sub.next() => match msg { Some(msg) => msg, None => return Ok(()) },
        };
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&msg.payload) else { continue };
        let stream = match js.get_stream(&spec.bus.stream).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a message that reached max deliveries");
                continue;
            }
        };
        let Ok(original) = stream.get_raw_message(advisory.stream_seq).await else { continue };
        let detail = format!("delivered {} times without being acknowledged", advisory.deliveries);
        let letter = natsbus::DeadLetter {
            origin: spec.origin,
            subject: original.subject.as_str(),
            payload: original.payload.clone(),
            stream_sequence: Some(advisory.stream_seq),
            reason: "max_deliveries",
            detail: &detail,
        };
        match natsbus::dead_letter(&js, &subjects, letter).await {
            Ok(()) => tracing::warn!(
                sequence = advisory.stream_seq,
                deliveries = advisory.deliveries,
                "message reached max deliveries; dead-lettered"
            ),
            Err(err) => {
                tracing::error!(error = %err, sequence = advisory.stream_seq, "dead-lettering a max-deliveries message failed")
            }
        }
    }
}
