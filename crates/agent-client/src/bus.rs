//! The agent's side of NATS: heartbeats into the KV bucket, events and inventory into
//! JetStream (acknowledged), and its own connection.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use wire_models::{AgentId, Event, HEADER_MSG_ID, Heartbeat, InventoryReport, Subjects};

/// Why a publish or a put did not get its acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("encoding the message: {0}")]
    Encode(#[from] wire_models::EncodeError),
    #[error("binding to the heartbeat bucket: {0}")]
    Bind(String),
    #[error("putting the heartbeat: {0}")]
    Put(String),
    #[error("publishing: {0}")]
    Publish(String),
}

/// What an agent (or a simulated fleet) uses to talk to the backend.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub kv: kv::Store,
}

impl Bus {
    /// Binds to an existing topology (the backend creates streams and the bucket).
    pub async fn new(client: async_nats::Client, subjects: Subjects, bucket: &str) -> Result<Self, BusError> {
        let js = jetstream::new(client.clone());
        let kv = js.get_key_value(bucket).await.map_err(|e| BusError::Bind(e.to_string()))?;
        Ok(Self { client, js, subjects, kv })
    }

    /// Puts a heartbeat under the agent's own key.
    pub async fn put_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), BusError> {
        let payload = Bytes::from(wire_models::encode(heartbeat)?);
        self.kv.put(heartbeat.agent_id.as_str(), payload).await.map_err(|e| BusError::Put(e.to_string()))?;
        Ok(())
    }

    /// Publishes an event with `Nats-Msg-Id` and waits for the stream's ack. Returns
    /// whether JetStream reported it as a duplicate.
    pub async fn publish_event(&self, event: &Event) -> Result<bool, BusError> {
        let subject = self.subjects.event(&event.agent_id, &event.kind);
        let payload = Bytes::from(wire_models::encode(event)?);
        self.publish_raw_event(subject, &event.event_id.to_string(), payload).await
    }

    /// Publishes arbitrary bytes on an event subject (hostile-input tests use it).
    pub async fn publish_raw_event(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<bool, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, msg_id);
        natsbus::trace::inject_current(&mut headers);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| BusError::Publish(e.to_string()))?
            .await
            .map_err(|e| BusError::Publish(e.to_string()))?;
        Ok(ack.duplicate)
    }

    /// Publishes an inventory snapshot and waits for the stream's ack.
    pub async fn publish_inventory(&self, report: &InventoryReport) -> Result<(), BusError> {
        let subject = self.subjects.inventory(&report.agent_id);
        let payload = Bytes::from(wire_models::encode(report)?);
        let mut headers = HeaderMap::new();
        natsbus::trace::inject_current(&mut headers);
        self.js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| BusError::Publish(e.to_string()))?
            .await
            .map_err(|e| BusError::Publish(e.to_string()))?;
        Ok(())
    }
}

/// Connects as agent `id` with `options` (its credentials): the connection name and
/// the inbox prefix follow from the identity, as its permissions expect
/// (docs/PROTOCOL.md, section 3.1). Waits until one of `urls` accepts.
pub async fn connect(
    options: async_nats::ConnectOptions,
    urls: &[String],
    id: &AgentId,
    request_timeout: Duration,
) -> Result<async_nats::Client, natsbus::NatsError> {
    let name = natsbus::auth::Identity::Agent(id.clone()).name();
    natsbus::connect_with(options, urls, &name, request_timeout).await
}
