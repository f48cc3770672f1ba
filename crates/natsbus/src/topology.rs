use std::time::Duration;

use async_nats::jetstream::{self, stream};
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
    /// How long a dead-lettered message is kept for inspection and replay.
    pub dlq_max_age: Duration,
    pub dedup_window: Duration,
    /// Bytes each stream and the bucket may hold: nothing one host sends can fill the
    /// disk, and every stream states its size so the account's `max_bytes_required`
    /// holds.
    pub max_bytes: StreamBytes,
}

/// The storage bound of each stream (bytes, per replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamBytes {
    pub events: u64,
    pub inventory: u64,
    pub dlq: u64,
    pub incidents: u64,
    pub agents_bucket: u64,
}

impl StreamBytes {
    const GIB: u64 = 1024 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;

    /// The production defaults (about 8.3 GiB per replica in all).
    pub const DEFAULT: StreamBytes = StreamBytes {
        events: 4 * Self::GIB,
        inventory: 2 * Self::GIB,
        dlq: Self::GIB,
        incidents: 256 * Self::MIB,
        agents_bucket: Self::GIB,
    };

    /// Small bounds for tests and local runs (a stream's size is reserved against the
    /// server's disk when it is created).
    pub const SMALL: StreamBytes = StreamBytes {
        events: 256 * Self::MIB,
        inventory: 128 * Self::MIB,
        dlq: 64 * Self::MIB,
        incidents: 32 * Self::MIB,
        agents_bucket: 64 * Self::MIB,
    };

    /// What every stream together reserves, per replica.
    pub fn total(&self) -> u64 {
        self.events + self.inventory + self.dlq + self.incidents + self.agents_bucket
    }
}

fn bytes_limit(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
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
            dlq_max_age: Duration::from_secs(30 * 86400),
            dedup_window: Duration::from_secs(120),
            max_bytes: StreamBytes::DEFAULT,
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
            // agent getting a bare publish error. Agents' own credentials stop anything
            // larger than the protocol's largest message before it gets here.
            max_message_size: 1024 * 1024,
            max_bytes: bytes_limit(self.max_bytes.events),
            // A full stream drops its oldest messages. While the ingestor keeps up
            // those are stored already; refusing new ones instead would let one host
            // that fills the stream stop every other host's events for days. The
            // bound is the backlog the stream rides out when the ingestor is down.
            discard: stream::DiscardPolicy::Old,
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
            max_bytes: bytes_limit(self.max_bytes.inventory),
            discard: stream::DiscardPolicy::Old,
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
            max_age: self.dlq_max_age,
            duplicate_window: self.dedup_window,
            num_replicas: self.replicas,
            max_bytes: bytes_limit(self.max_bytes.dlq),
            // Parked messages are kept for people to look at; when the space is used
            // up the oldest go first, so a flood never stops new parking.
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// The change feed (incidents created and updated, presence, actions finished),
    /// kept a day: an analyzer that was down catches up on new incidents, and an
    /// operator's stream that dropped resumes from it.
    pub fn incidents_config(&self) -> stream::Config {
        stream::Config {
            name: self.incidents_stream.clone(),
            description: Some(
                "OpsPilot change feed: incidents created and updated, presence, actions finished".into(),
            ),
            subjects: self.subjects.change_feed(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(86400),
            duplicate_window: self.dedup_window,
            num_replicas: self.replicas,
            max_bytes: bytes_limit(self.max_bytes.incidents),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// The stream behind the `AGENTS` bucket, written here rather than by the client
    /// library's bucket helper, which always turns rollups on: with rollups allowed,
    /// an agent putting its own key with `Nats-Rollup: all` purges every other
    /// agent's heartbeat. Nothing in OpsPilot purges the bucket, so both rollups and
    /// purges are refused; puts, deletes of a key and watches work as in any bucket.
    pub fn agents_bucket_config(&self) -> stream::Config {
        stream::Config {
            name: self.agents_bucket_stream(),
            description: Some("OpsPilot agent heartbeats (key = agent id)".into()),
            subjects: vec![format!("$KV.{}.>", self.agents_bucket)],
            max_messages_per_subject: 1,
            // An agent silent for a day is long offline; its last heartbeat can go.
            max_age: Duration::from_secs(86400),
            max_message_size: 4096,
            max_bytes: bytes_limit(self.max_bytes.agents_bucket),
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            discard: stream::DiscardPolicy::New,
            allow_rollup: false,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The name of the stream that holds the bucket (`KV_{bucket}`).
    pub fn agents_bucket_stream(&self) -> String {
        format!("KV_{}", self.agents_bucket)
    }
}

/// Creates or updates every stream and the KV bucket. Idempotent: running it from
/// every service at every start is how the topology is kept current, and how a bucket
/// created by an older version loses its rollup and purge permissions.
pub async fn ensure_topology(js: &jetstream::Context, topology: &Topology) -> Result<(), NatsError> {
    for config in [
        topology.events_config(),
        topology.inventory_config(),
        topology.dlq_config(),
        topology.incidents_config(),
        topology.agents_bucket_config(),
    ] {
        let name = config.name.clone();
        let subjects = config.subjects.join(",");
        let info = js
            .create_or_update_stream(config)
            .await
            .map_err(|e| NatsError::Stream { name: name.clone(), detail: e.to_string() })?;
        tracing::info!(stream = %name, subjects, messages = info.state.messages, "stream ready");
    }
    Ok(())
}
