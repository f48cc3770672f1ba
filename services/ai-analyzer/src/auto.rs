//! Automatic analysis of new critical incidents, from the incident-created messages on
//! the INCIDENTS stream. A durable pull consumer is shared by every replica; each
//! replica works on at most AI_CONCURRENCY messages at once (and its analyses count
//! against the same global limit as requested ones). A message is acknowledged once the
//! outcome is recorded, success or failure; non-critical incidents are skipped.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind, Message};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wire_models::IncidentCreated;

use crate::engine::{Engine, Trigger};

/// How long a delivered message may go without an acknowledgement (or a progress
/// signal, sent every third of it while an analysis runs) before it is redelivered.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries after which a message that keeps failing is given up on; the incident
/// stays unanalyzed and can be analyzed on request.
const MAX_DELIVER: i64 = 5;
/// Delay before a message whose outcome could not be recorded comes back.
const RETRY_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct AutoSpec {
    pub(crate) bus: natsbus::DurableSpec,
    /// The incident-created subject; other incident messages are acknowledged and left.
    pub(crate) created_subject: String,
    pub(crate) concurrency: usize,
}

impl AutoSpec {
    /// The shared durable consumer on `stream`, reading `filter` under `durable`.
    pub(crate) fn new(
        stream: String,
        durable: String,
        filter: String,
        created_subject: String,
        concurrency: usize,
    ) -> Self {
        let bus = natsbus::DurableSpec {
            stream,
            durable,
            description:
                "OpsPilot automatic analysis of critical incidents (shared by every analyzer replica)".into(),
            filter,
            ack_wait: ACK_WAIT,
            max_deliver: MAX_DELIVER,
            max_ack_pending: 1000,
            from_now: false,
        };
        Self { bus, created_subject, concurrency }
    }
}

/// Runs until `shutdown`: the analyses in flight finish (and are acknowledged);
/// messages fetched but not started are handed back.
pub(crate) async fn run(
    js: jetstream::Context,
    spec: AutoSpec,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(spec.concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let limits = natsbus::PullLimits { messages: spec.concurrency, bytes: None };
    'outer: while let Some(mut messages) =
        natsbus::pull_until(&js, &spec.bus, limits, "auto-analysis", &shutdown).await
    {
        tracing::info!(durable = %spec.bus.durable, stream = %spec.bus.stream, "auto-analysis consumer started");
        loop {
            while tasks.try_join_next().is_some() {}
            // A free slot first, then a message. At most one pull batch (AI_CONCURRENCY
            // messages) waits buffered; a redelivered one finds the incident analyzed.
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    hand_back_ready(&mut messages).await;
                    break 'outer;
                }
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'outer,
                },
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    hand_back_ready(&mut messages).await;
                    break 'outer;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) if msg.subject.as_str() != spec.created_subject => {
                    // Another kind of incident message: not ours to act on.
                    let _ = msg.ack().await;
                }
                Some(Ok(msg)) => {
                    let engine = Arc::clone(&engine);
                    tasks.spawn(async move {
                        process(&engine, msg).await;
                        drop(permit);
                    });
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "auto-analysis consumer stream error; re-subscribing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                None => {
                    tracing::warn!("auto-analysis message stream ended; re-subscribing");
                    break;
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn process(engine: &Engine, msg: Message) {
    let created = match wire_models::decode::<IncidentCreated>(&msg.payload) {
        Ok(created) => created,
        Err(err) => {
            tracing::warn!(error = %err, subject = %msg.subject, "undecodable incident-created message; dropped");
            metrics::counter!("opspilot_analyses_total", "trigger" => "auto", "outcome" => "invalid")
                .increment(1);
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    // The tracker's own incident: no error text from the agent to explain, and a
    // fleet-wide outage must not become one AI call per host. Operators can still ask.
    if !created.is_critical || created.kind.as_str() == storage::incidents::OFFLINE_INCIDENT_TYPE {
        metrics::counter!("opspilot_analyses_total", "trigger" => "auto", "outcome" => "skipped")
            .increment(1);
        let _ = msg.ack().await;
        return;
    }
    let span = natsbus::process_span!(&msg.subject, msg.headers.as_ref(), incident_id = created.incident_id);
    async {
        let analysis = engine.analyze(created.incident_id, false, Trigger::Auto);
        let outcome = with_progress(&msg, analysis).await;
        match outcome {
            Ok(_) => {
                let _ = msg.ack().await;
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "auto-analysis could not be recorded; it will be retried"
                );
                let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Awaits `work`, telling JetStream every third of the ack wait that the message is
/// still being worked on (waiting for the concurrency limit included).
async fn with_progress<T>(msg: &Message, work: impl std::future::Future<Output = T>) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval(ACK_WAIT / 3);
    ticks.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticks.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// NAKs messages already fetched but not started, so another replica takes them now.
async fn hand_back_ready(messages: &mut pull::Stream) {
    let mut handed_back = 0usize;
    while let Some(Some(Ok(msg))) = messages.next().now_or_never() {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
        handed_back += 1;
    }
    if handed_back > 0 {
        tracing::info!(handed_back, "handed unstarted incident messages back to the stream");
    }
}
