use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use wire_models::Subjects;

use crate::NatsError;

/// Names of everything OpsPilot keeps in JetStream. Tests give each run its own root
/// and names so runs never see each other.
#[derive(Debug, Clone)]
pub struct Topology {
    pub subjects: Subjects,
    pub events_stream: String,
    pub inventory_stream: String,
    pub dlq_stream: String,
    pub incidents_stream: String,
    pub agents_bucket: String,
    pub replicas: usize,
    pub events_max_age: Duration,
    pub dedup_window: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            subjects: Subjects::default(),
            events_stream: "EVENTS".into(),
            inventory_stream: "INVENTORY".into(),
            dlq_stream: "DEADLETTER".into(),
            incidents_stream: "INCIDENTS".into(),
            agents_bucket: "AGENTS".into(),
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 86400),
            dedup_window: Duration::from_secs(120),
        }
    }
}

impl Topology {
    pub fn events_config(&self) -> stream::Config {
        stream::Config {
            name: self.events_stream.clone(),
            description: Some("OpsPilot agent events".into()),
            subjects: vec![self.subjects.all_events()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.events_max_age,
            duplicate_window: self.dedup_window,
            num_replicas: self.replicas,
            // Well above the event size limit: an oversize event still lands in the
            // stream so the ingestor can dead-letter it with a reason instead of the
            // agent getting a bare publish error.
            max_message_size: 1024 * 1024,
            ..Default::default()
        }
    }

    pub fn inventory_config(&self) -> stream::Config {
        stream::Config {
            name: self.inventory_stream.clone(),
            description: Some("OpsPilot agent inventory snapshots".into()),
            subjects: vec![self.subjects.all_inventory()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.events_max_age,
            duplicate_window: self.dedup_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn dlq_config(&self) -> stream::Config {
        stream::Config {
            name: self.dlq_stream.clone(),
            description: Some("OpsPilot dead-lettered messages, with their reason".into()),
            subjects: vec![self.subjects.all_dead_letters()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(30 * 86400),
            duplicate_window: self.dedup_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Incident-created messages, kept a day so an analyzer that was down catches up.
    pub fn incidents_config(&self) -> stream::Config {
        stream::Config {
            name: self.incidents_stream.clone(),
            description: Some("OpsPilot incident-created notifications".into()),
            subjects: vec![self.subjects.all_incident_messages()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(86400),
            duplicate_window: self.dedup_window,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn agents_bucket_config(&self) -> kv::Config {
        kv::Config {
            bucket: self.agents_bucket.clone(),
            description: "OpsPilot agent heartbeats (key = agent id)".into(),
            history: 1,
            // An agent silent for a day is long offline; its last heartbeat can go.
            max_age: Duration::from_secs(86400),
            max_value_size: 4096,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Creates or updates every stream and the KV bucket. Idempotent: running it from
/// every service at every start is how the topology is kept current.
pub async fn ensure_topology(js: &jetstream::Context, topology: &Topology) -> Result<(), NatsError> {
    for config in [
        topology.events_config(),
        topology.inventory_config(),
        topology.dlq_config(),
        topology.incidents_config(),
    ] {
        let name = config.name.clone();
        let subjects = config.subjects.join(",");
        let info = js
            .create_or_update_stream(config)
            .await
            .map_err(|e| NatsError::Stream { name: name.clone(), detail: e.to_string() })?;
        tracing::info!(stream = %name, subjects, messages = info.state.messages, "stream ready");
    }
    let bucket = topology.agents_bucket.clone();
    js.create_or_update_key_value(topology.agents_bucket_config())
        .await
        .map_err(|e| NatsError::KeyValue { name: bucket.clone(), detail: e.to_string() })?;
    tracing::info!(bucket = %bucket, "key-value bucket ready");
    Ok(())
}
