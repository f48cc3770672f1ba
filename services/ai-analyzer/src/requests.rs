//! `AnalyzeRequest`s on `{root}.sys.analyze`, served in a queue group so that every
//! replica takes a share. Each request gets exactly one `AnalyzeReply`; a request that
//! does not decode gets a `Failed` reply saying why.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::{Message, Subscriber};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wire_models::{AnalyzeOutcome, AnalyzeReply, AnalyzeRequest, PROTOCOL_VERSION, Subjects};

use crate::engine::{Engine, Trigger};

/// The queue group every replica joins.
pub(crate) const QUEUE_GROUP: &str = "ai-analyzer";

/// Requests handled at once per replica; more wait in the subscription (analyses beyond
/// AI_CONCURRENCY wait for the limit inside the engine anyway).
const MAX_IN_FLIGHT: usize = 256;

/// Joins the queue group on the analyze subject.
pub(crate) async fn subscribe(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> anyhow::Result<Subscriber> {
    let subscriber = client.queue_subscribe(subjects.analyze(), QUEUE_GROUP.to_owned()).await?;
    // The server knows the subscription once the client has flushed it.
    client.flush().await?;
    tracing::info!(subject = %subjects.analyze(), queue_group = QUEUE_GROUP, "serving analyze requests");
    Ok(subscriber)
}

/// Serves until `shutdown`: then stops taking requests (draining the subscription, so
/// requests already delivered to this replica are still answered) and waits for the
/// ones in flight.
pub(crate) async fn serve(
    client: async_nats::Client,
    mut subscriber: Subscriber,
    engine: Arc<Engine>,
    handled: Arc<AtomicU64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut draining = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                if let Err(err) = subscriber.drain().await {
                    tracing::warn!(error = %err, "draining the analyze subscription failed");
                    break;
                }
                continue;
            }
            next = subscriber.next() => next,
        };
        let Some(msg) = next else { break };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let (client, engine, handled) = (client.clone(), Arc::clone(&engine), Arc::clone(&handled));
        tasks.spawn(async move {
            handle(&client, &engine, msg).await;
            handled.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn handle(client: &async_nats::Client, engine: &Engine, msg: Message) {
    let span =
        natsbus::process_span!(&msg.subject, msg.headers.as_ref(), incident_id = tracing::field::Empty);
    async move {
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!("analyze request without a reply subject; ignored");
            return;
        };
        let reply = match wire_models::decode::<AnalyzeRequest>(&msg.payload) {
            Ok(request) => {
                tracing::Span::current().record("incident_id", request.incident_id);
                let outcome = match engine.analyze(request.incident_id, request.force, Trigger::Request).await
                {
                    Ok(outcome) => outcome.reply,
                    Err(err) => {
                        tracing::error!(error = format!("{err:#}"), "analysis could not be completed");
                        let reason = if err.is_transient() {
                            format!("the database is unavailable ({err}); try again later")
                        } else {
                            format!("internal error ({err})")
                        };
                        AnalyzeOutcome::Failed { reason }
                    }
                };
                AnalyzeReply { v: PROTOCOL_VERSION, incident_id: request.incident_id, outcome }
            }
            Err(err) => {
                tracing::info!(error = %err, "invalid analyze request");
                metrics::counter!("opspilot_analyses_total", "trigger" => "request", "outcome" => "invalid")
                    .increment(1);
                AnalyzeReply {
                    v: PROTOCOL_VERSION,
                    incident_id: peek_incident_id(&msg.payload).unwrap_or(0),
                    outcome: AnalyzeOutcome::Failed { reason: format!("invalid analyze request: {err}") },
                }
            }
        };
        if let Err(err) = natsbus::reply(client, reply_to.to_string(), &reply).await {
            tracing::warn!(error = %err, "sending the analyze reply failed");
        }
    }
    .instrument(span)
    .await;
}

/// The incident id of a request that does not decode as a whole, for the reply.
fn peek_incident_id(payload: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Peek {
        incident_id: i64,
    }
    serde_json::from_slice::<Peek>(payload).ok().map(|p| p.incident_id)
}
