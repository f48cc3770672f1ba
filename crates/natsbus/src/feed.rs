//! The change feed: what operators are shown as it happens. The incidents stream keeps
//! it (`Subjects::change_feed`: incidents created and updated, presence, actions
//! finished), so every gateway replica reads it from NATS and a client that dropped
//! replays what it missed by stream sequence.
//!
//! `IncidentCreated` is published by the ingestor exactly as before (acknowledged,
//! deduplicated). The other messages here are at most once: the record is in Postgres,
//! a lost message only means a client re-reads later than it could have.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use wire_models::{
    ActionFinished, FleetActionProgress, IncidentCreated, IncidentUpdated, PresenceChanged, Subjects,
    WireMessage, decode,
};

use crate::NatsError;

/// Publishes the at-most-once feed messages. A failure is logged and counted, never
/// returned: nothing that publishes here should fail or wait because of the feed.
#[derive(Clone)]
pub struct FeedPublisher {
    client: async_nats::Client,
    subjects: Subjects,
}

impl FeedPublisher {
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self { client, subjects }
    }

    pub async fn incident_updated(&self, msg: &IncidentUpdated) {
        self.publish(self.subjects.incident_updated(), msg).await;
    }

    pub async fn action_finished(&self, msg: &ActionFinished) {
        self.publish(self.subjects.action_finished(), msg).await;
    }

    pub async fn fleet_action(&self, msg: &FleetActionProgress) {
        self.publish(self.subjects.fleet_action_progress(), msg).await;
    }

    async fn publish<M: WireMessage>(&self, subject: String, msg: &M) {
        if let Err(err) = crate::publish(&self.client, subject, msg).await {
            metrics::counter!("opspilot_feed_publish_failures_total", "message" => M::NAME).increment(1);
            tracing::warn!(error = %err, message = M::NAME, "publishing to the change feed failed");
        }
    }
}

/// Finished actions waiting for their batch at most; past this an announcement is
/// dropped (and counted), never waited for.
const ANNOUNCE_QUEUE: usize = 8192;
/// Announcements published together at most.
const ANNOUNCE_BATCH: usize = 512;

enum Announcement {
    Finished(ActionFinished),
    /// Answered once everything queued before it is published.
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// Announces finished actions on the change feed a batch at a time. One publish per
/// execute woke the NATS connection, the server's stream and every replica's feed reader
/// once per request: about a fifth of the gateway's CPU per execute at concurrency 1.
/// Announcements gathered for `linger` go out back to back in one write, and are read
/// back in one. An operator's stream shows an action that much later.
#[derive(Clone)]
pub struct ActionAnnouncer {
    tx: tokio::sync::mpsc::Sender<Announcement>,
}

impl ActionAnnouncer {
    /// Starts the task that publishes; it ends when every handle is dropped, after
    /// publishing what it holds.
    pub fn start(feed: FeedPublisher, linger: std::time::Duration) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel(ANNOUNCE_QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(ANNOUNCE_BATCH);
            while rx.recv_many(&mut batch, ANNOUNCE_BATCH).await > 0 {
                let deadline = tokio::time::Instant::now() + linger;
                while batch.len() < ANNOUNCE_BATCH
                    && !batch.iter().any(|a| matches!(a, Announcement::Settled(_)))
                {
                    let room = ANNOUNCE_BATCH - batch.len();
                    match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                let mut settled = Vec::new();
                for announcement in batch.drain(..) {
                    match announcement {
                        Announcement::Finished(msg) => feed.action_finished(&msg).await,
                        Announcement::Settled(done) => settled.push(done),
                    }
                }
                for done in settled {
                    let _ = done.send(());
                }
            }
        });
        Self { tx }
    }

    /// Queues `msg` for the next batch; never waits. A full queue (the NATS connection
    /// far behind) drops it: the action's record is in Postgres either way.
    pub fn announce(&self, msg: ActionFinished) {
        if self.tx.try_send(Announcement::Finished(msg)).is_err() {
            metrics::counter!("opspilot_feed_publish_failures_total", "message" => ActionFinished::NAME)
                .increment(1);
        }
    }

    /// Returns once everything announced before the call is published (handed to the
    /// NATS client, which flushes it on its own).
    pub async fn settled(&self) {
        let (done, settled) = tokio::sync::oneshot::channel();
        if self.tx.send(Announcement::Settled(done)).await.is_ok() {
            let _ = settled.await;
        }
    }
}

/// One change, as the feed carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    IncidentCreated(IncidentCreated),
    IncidentUpdated(IncidentUpdated),
    Presence(PresenceChanged),
    ActionFinished(ActionFinished),
    FleetAction(FleetActionProgress),
}

impl Change {
    /// The event name operators' streams use.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::IncidentCreated(_) => "incident.created",
            Change::IncidentUpdated(_) => "incident.updated",
            Change::Presence(_) => "presence",
            Change::ActionFinished(_) => "action.finished",
            Change::FleetAction(_) => "fleet_action",
        }
    }

    /// The agent the change is about; `None` for one about many (a fleet action).
    pub fn agent_id(&self) -> Option<&wire_models::AgentId> {
        match self {
            Change::IncidentCreated(m) => Some(&m.agent_id),
            Change::IncidentUpdated(m) => Some(&m.agent_id),
            Change::Presence(m) => Some(&m.agent_id),
            Change::ActionFinished(m) => Some(&m.agent_id),
            Change::FleetAction(_) => None,
        }
    }

    /// The message as JSON, the body of the stream's event.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Change::IncidentCreated(m) => serde_json::to_value(m),
            Change::IncidentUpdated(m) => serde_json::to_value(m),
            Change::Presence(m) => serde_json::to_value(m),
            Change::ActionFinished(m) => serde_json::to_value(m),
            Change::FleetAction(m) => serde_json::to_value(m),
        };
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Decodes a feed message by its subject; `None` for a subject or body that is not
    /// one (the stream only takes the backend's own subjects, so this is a bug or a
    /// newer publisher, and is skipped).
    pub fn decode(subjects: &Subjects, subject: &str, payload: &[u8]) -> Option<Self> {
        let root = subjects.root().as_str();
        let rest = subject.strip_prefix(root)?.strip_prefix(".sys.")?;
        let change = if rest == "incidents.created" {
            Change::IncidentCreated(decode(payload).ok()?)
        } else if rest == "incidents.updated" {
            Change::IncidentUpdated(decode(payload).ok()?)
        } else if rest == "actions.finished" {
            Change::ActionFinished(decode(payload).ok()?)
        } else if rest == "actions.fleet" {
            Change::FleetAction(decode(payload).ok()?)
        } else if rest.starts_with("presence.") {
            Change::Presence(decode(payload).ok()?)
        } else {
            return None;
        };
        Some(change)
    }
}

/// A change with its place in the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    /// The incidents stream's sequence number: the resume point.
    pub seq: u64,
    pub change: Change,
}

/// Where the feed is: the oldest sequence it still holds and the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedBounds {
    pub first_seq: u64,
    pub last_seq: u64,
}

pub async fn bounds(js: &jetstream::Context, name: &str) -> Result<FeedBounds, NatsError> {
    let failed =
        |e: &dyn std::fmt::Display| NatsError::Stream { name: name.to_owned(), detail: e.to_string() };
    let mut stream = js.get_stream(name).await.map_err(|e| failed(&e))?;
    let info = stream.info().await.map_err(|e| failed(&e))?;
    Ok(FeedBounds { first_seq: info.state.first_sequence, last_seq: info.state.last_sequence })
}

/// The feed from `start` on (the next new message when `None`), in order, with an
/// ordered consumer of its own: no durable state on the server, recreated by the client
/// library if it falls behind or the connection drops.
pub async fn read_from(
    js: &jetstream::Context,
    stream: &str,
    subjects: Subjects,
    start: Option<u64>,
) -> Result<impl futures::Stream<Item = Result<FeedEntry, NatsError>> + use<>, NatsError> {
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|e| NatsError::Stream { name: stream.to_owned(), detail: e.to_string() })?;
    let deliver_policy = match start {
        Some(seq) => consumer::DeliverPolicy::ByStartSequence { start_sequence: seq },
        None => consumer::DeliverPolicy::New,
    };
    let config = consumer::pull::OrderedConfig { deliver_policy, ..Default::default() };
    let messages = handle
        .create_consumer(config)
        .await
        .map_err(|e| NatsError::Stream { name: stream.to_owned(), detail: e.to_string() })?
        .messages()
        .await
        .map_err(|e| NatsError::Stream { name: stream.to_owned(), detail: e.to_string() })?;
    let stream_name = stream.to_owned();
    Ok(messages.filter_map(move |msg| {
        let result = match msg {
            Err(err) => Some(Err(NatsError::Stream { name: stream_name.clone(), detail: err.to_string() })),
            Ok(msg) => match msg.info() {
                Err(err) => Some(Err(NatsError::Stream { name: stream_name.clone(), detail: err.to_string() })),
                Ok(info) => {
                    let seq = info.stream_sequence;
                    match Change::decode(&subjects, msg.subject.as_str(), &msg.payload) {
                        Some(change) => Some(Ok(FeedEntry { seq, change })),
                        None => {
                            tracing::debug!(subject = %msg.subject, seq, "skipping a message the feed does not know");
                            None
                        }
                    }
                }
            },
        };
        std::future::ready(result)
    }))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use wire_models::{AgentId, IncidentChange, PROTOCOL_VERSION, SubjectRoot};

    use super::*;

    #[test]
    fn feed_subjects_decode_to_their_change() {
        let subjects = Subjects::new(SubjectRoot::parse("ops").unwrap());
        let agent = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let updated = IncidentUpdated {
            v: PROTOCOL_VERSION,
            incident_id: 7,
            agent_id: agent.clone(),
            change: IncidentChange::Status,
            status: Some("resolved".into()),
            occurrences: None,
            last_seen_at: None,
            analysis_status: None,
            updated_at: Utc::now(),
        };
        let body = wire_models::encode(&updated).unwrap();
        let change = Change::decode(&subjects, &subjects.incident_updated(), &body).unwrap();
        assert_eq!(change.kind(), "incident.updated");
        assert_eq!(change.agent_id(), Some(&agent));
        assert_eq!(change.to_json()["change"], "status");
        // The body must match the subject; other roots and subjects are not the feed.
        assert_eq!(Change::decode(&subjects, &subjects.incident_created(), &body), None);
        assert_eq!(Change::decode(&subjects, "other.sys.incidents.updated", &body), None);
        assert_eq!(Change::decode(&subjects, "ops.sys.dlq.events", &body), None);

        // A fleet action's progress is about no one agent.
        let body = serde_json::to_vec(&serde_json::json!({
            "v": PROTOCOL_VERSION, "action_id": "0192f0c4-7d1e-7a3b-8c4d-5e6f7a8b9c0d", "command": "ping",
            "state": "running", "total": 3, "done": 1, "ok": 1, "error": 0, "timeout": 0, "skipped": 0,
            "cancelled": 0, "at": Utc::now(),
        }))
        .unwrap();
        let change = Change::decode(&subjects, &subjects.fleet_action_progress(), &body).unwrap();
        assert_eq!(change.kind(), "fleet_action");
        assert_eq!(change.agent_id(), None);
        assert_eq!(change.to_json()["done"], 1);
    }
}
