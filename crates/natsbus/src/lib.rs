//! NATS for OpsPilot: connecting (every URL, reconnect forever), the JetStream
//! topology (streams, the `AGENTS` KV bucket) created idempotently, W3C trace context
//! in message headers, and dead-lettering.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod auth;
mod config;
mod connect;
mod consumer;
mod deadletter;
mod error;
pub mod feed;
pub mod metrics;
mod request;
mod topology;
pub mod trace;

#[doc(hidden)]
pub use tracing as __tracing;

pub use config::{NatsConfig, ServerUrls, parse_server_urls};
pub use connect::{
    MIN_SERVER_VERSION, check_server_version, connect, connect_as, connect_until, connect_with,
    creds_file_options,
};
pub use consumer::{DurableSpec, PullLimits, ensure_durable, pull_until};
pub use deadletter::{
    Admission, DeadLetter, DeadLetterBudget, Parked, Usage, dead_letter, dead_letter_within,
};
pub use error::NatsError;
pub use request::{RequestError, request};
pub use topology::{StreamBytes, Topology, ensure_topology};

use async_nats::HeaderMap;
use bytes::Bytes;
use tracing::Instrument;
use wire_models::{HEADER_MSG_ID, WireMessage};

/// Publishes a message to JetStream, with the current trace context and an optional
/// `Nats-Msg-Id`, and waits for the stream's acknowledgement.
pub async fn js_publish<T: WireMessage>(
    js: &async_nats::jetstream::Context,
    subject: String,
    msg: &T,
    msg_id: Option<&str>,
) -> Result<(), NatsError> {
    let payload = Bytes::from(wire_models::encode(msg)?);
    let span = trace::send_span(trace::Send::Publish, &subject, payload.len());
    if let Some(id) = msg_id {
        span.record("messaging.message.id", id);
    }
    async move {
        let mut headers = HeaderMap::new();
        trace::inject_current(&mut headers);
        if let Some(id) = msg_id {
            headers.insert(HEADER_MSG_ID, id);
        }
        js.publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))?
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))?;
        Ok(())
    }
    .instrument(span)
    .await
}

/// Publishes a message on core NATS (no stream) with the current trace context.
pub async fn publish<T: WireMessage>(
    client: &async_nats::Client,
    subject: String,
    msg: &T,
) -> Result<(), NatsError> {
    publish_as(client, trace::Send::Publish, subject, msg).await
}

/// Publishes the reply to a request (to the requester's inbox) with the current trace
/// context.
pub async fn reply<T: WireMessage>(
    client: &async_nats::Client,
    inbox: String,
    msg: &T,
) -> Result<(), NatsError> {
    publish_as(client, trace::Send::Reply, inbox, msg).await
}

async fn publish_as<T: WireMessage>(
    client: &async_nats::Client,
    operation: trace::Send,
    subject: String,
    msg: &T,
) -> Result<(), NatsError> {
    let payload = Bytes::from(wire_models::encode(msg)?);
    let span = trace::send_span(operation, &subject, payload.len());
    async move {
        let mut headers = HeaderMap::new();
        trace::inject_current(&mut headers);
        client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))
    }
    .instrument(span)
    .await
}

/// A `/readyz` check: the client is connected.
pub fn ready_check(
    client: async_nats::Client,
) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
    move || {
        std::future::ready(match client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!("nats connection is {state:?}")),
        })
    }
}
