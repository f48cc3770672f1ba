//! The durable pull consumers the backend shares between replicas: one definition, so
//! every shared consumer acknowledges explicitly and, unless told otherwise, starts from
//! the stream's start.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self};

use crate::NatsError;

/// A durable consumer every replica of a service pulls from.
#[derive(Debug, Clone)]
pub struct DurableSpec {
    pub stream: String,
    pub durable: String,
    /// Who shares it, for operators reading the consumer list.
    pub description: String,
    pub filter: String,
    /// Redelivery deadline of an unacknowledged message.
    pub ack_wait: Duration,
    /// Deliveries after which JetStream gives up on a message (and sends an advisory).
    pub max_deliver: i64,
    /// Messages delivered and not yet acknowledged, over every replica.
    pub max_ack_pending: i64,
    /// Start at the messages published after the consumer's creation instead of the
    /// stream's start: for a consumer added to a deployment whose history it must not
    /// act on (notifications of last week's incidents).
    pub from_now: bool,
}

/// Creates the consumer, or updates it to `spec` (idempotent, from every replica).
pub async fn ensure_durable(js: &jetstream::Context, spec: &DurableSpec) -> Result<PullConsumer, NatsError> {
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|e| NatsError::Stream { name: spec.stream.clone(), detail: e.to_string() })?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some(spec.description.clone()),
        filter_subject: spec.filter.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: if spec.from_now { DeliverPolicy::New } else { DeliverPolicy::All },
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(|e| NatsError::Stream {
        name: format!("{} consumer {}", spec.stream, spec.durable),
        detail: e.to_string(),
    })
}

/// How much one pull asks for.
#[derive(Debug, Clone, Copy)]
pub struct PullLimits {
    pub messages: usize,
    /// Bytes per pull, when bounded.
    pub bytes: Option<usize>,
}

/// The messages of `spec`'s durable consumer, creating (or updating) it first; retried
/// with backoff until it works, `None` once `shutdown` is cancelled. `label` names the
/// consumer in the warnings, which come at growing intervals during an outage.
pub async fn pull_until(
    js: &jetstream::Context,
    spec: &DurableSpec,
    limits: PullLimits,
    label: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<pull::Stream> {
    use service_kit::backoff::{Backoff, worth_logging};
    let mut attempt: u32 = 0;
    while !shutdown.is_cancelled() {
        let started = match ensure_durable(js, spec).await {
            Ok(consumer) => {
                let mut stream = consumer
                    .stream()
                    .max_messages_per_batch(limits.messages)
                    .heartbeat(std::time::Duration::from_secs(5))
                    .expires(std::time::Duration::from_secs(30));
                if let Some(bytes) = limits.bytes {
                    stream = stream.max_bytes_per_batch(bytes);
                }
                stream.messages().await.map_err(|e| e.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        match started {
            Ok(messages) => return Some(messages),
            Err(err) => {
                attempt = attempt.saturating_add(1);
                if worth_logging(attempt) {
                    tracing::warn!(consumer = label, attempt, error = %err, "cannot start consumer; retrying");
                }
                if service_kit::service::sleep_or_shutdown(Backoff::RECONNECT.delay(attempt), shutdown).await
                {
                    break;
                }
            }
        }
    }
    None
}
