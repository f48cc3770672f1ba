//! The agent's side of NATS: heartbeats into the KV bucket, events and inventory into
//! JetStream (acknowledged), RPC answers by reply.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use wire_models::{Event, HEADER_MSG_ID, Heartbeat, InventoryReport, Subjects};

/// What a simulated agent (or a fleet of them) uses to talk to the backend.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub kv: kv::Store,
}

impl Bus {
    /// Binds to an existing topology (the backend creates streams and the bucket).
    pub async fn new(client: async_nats::Client, subjects: Subjects, bucket: &str) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let kv = js.get_key_value(bucket).await?;
        Ok(Self { client, js, subjects, kv })
    }

    /// Puts a heartbeat under the agent's own key.
    pub async fn put_heartbeat(&self, heartbeat: &Heartbeat) -> anyhow::Result<()> {
        let payload = Bytes::from(wire_models::encode(heartbeat)?);
        self.kv.put(heartbeat.agent_id.as_str(), payload).await?;
        Ok(())
    }

    /// Publishes an event with `Nats-Msg-Id` and waits for the stream's ack. Returns
    /// whether JetStream reported it as a duplicate.
    pub async fn publish_event(&self, event: &Event) -> anyhow::Result<bool> {
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
    ) -> anyhow::Result<bool> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, msg_id);
        natsbus::trace::inject_current(&mut headers);
        let ack = self.js.publish_with_headers(subject, headers, payload).await?.await?;
        Ok(ack.duplicate)
    }

    /// Publishes an inventory snapshot and waits for the stream's ack.
    pub async fn publish_inventory(&self, report: &InventoryReport) -> anyhow::Result<()> {
        let subject = self.subjects.inventory(&report.agent_id);
        let payload = Bytes::from(wire_models::encode(report)?);
        let mut headers = HeaderMap::new();
        natsbus::trace::inject_current(&mut headers);
        self.js.publish_with_headers(subject, headers, payload).await?.await?;
        Ok(())
    }
}
