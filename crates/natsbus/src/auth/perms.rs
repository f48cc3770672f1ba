//! What each identity may publish and subscribe to. Nothing else is allowed: NATS
//! denies any subject not listed.

use wire_models::{AgentId, Subjects};

use crate::Topology;

/// Publish / subscribe allow-lists, plus whether replies to received requests are
/// allowed (NATS "allow responses": one reply per request, to its reply subject only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub allow_responses: bool,
}

/// Who connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// One enrolled agent: its own subjects, its own KV key, its own inbox.
    Agent(AgentId),
    ApiGateway,
    EventIngestor,
    PresenceTracker,
    AiAnalyzer,
    /// The simulator playing a whole fleet at once (development and benchmarks only).
    SimulatorFleet,
    /// Everything; for test harnesses and operators' own debugging.
    Superuser,
}

impl Identity {
    /// The connection name and the inbox prefix token of the identity.
    pub fn name(&self) -> String {
        match self {
            Identity::Agent(id) => format!("agent-{id}"),
            Identity::ApiGateway => "api-gateway".into(),
            Identity::EventIngestor => "event-ingestor".into(),
            Identity::PresenceTracker => "presence-tracker".into(),
            Identity::AiAnalyzer => "ai-analyzer".into(),
            Identity::SimulatorFleet => "agent-sim".into(),
            Identity::Superuser => "superuser".into(),
        }
    }

    /// The inbox prefix this identity must use (its replies arrive there, and nobody
    /// else may subscribe to it).
    pub fn inbox_prefix(&self) -> String {
        inbox_prefix(&self.name())
    }
}

/// `_INBOX_{name}`: each identity gets an inbox namespace of its own.
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX_{name}")
}

/// The permissions of `identity` on `topology`.
pub fn permissions(identity: &Identity, topology: &Topology) -> Permissions {
    let s: &Subjects = &topology.subjects;
    let root = s.root();
    let bucket = &topology.agents_bucket;
    let inbox = format!("{}.>", identity.inbox_prefix());
    // Every backend service creates or updates the streams at start and uses
    // consumers, so it speaks the JetStream API.
    let js_api = "$JS.API.>".to_owned();
    let ack = |stream: &str| format!("$JS.ACK.{stream}.>");
    match identity {
        Identity::Agent(id) => Permissions {
            publish: vec![
                s.agent_events(id),
                s.inventory(id),
                Subjects::kv_key_subject(bucket, id),
                // Binding to the bucket (`get_key_value`) reads its stream info.
                format!("$JS.API.STREAM.INFO.KV_{bucket}"),
            ],
            subscribe: vec![s.rpc(id), inbox],
            allow_responses: true,
        },
        Identity::ApiGateway => Permissions {
            publish: vec![s.all_rpc(), s.analyze()],
            subscribe: vec![inbox],
            allow_responses: false,
        },
        Identity::EventIngestor => Permissions {
            publish: vec![
                js_api,
                ack(&topology.events_stream),
                ack(&topology.inventory_stream),
                s.all_dead_letters(),
                s.all_incident_messages(),
            ],
            subscribe: vec![inbox, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>".into()],
            allow_responses: false,
        },
        Identity::PresenceTracker => Permissions {
            publish: vec![
                js_api,
                s.all_presence_changes(),
                s.dead_letter(wire_models::DlqOrigin::Heartbeats),
            ],
            subscribe: vec![inbox],
            // Flow-control and heartbeat replies of the KV watch's ordered consumer.
            allow_responses: true,
        },
        Identity::AiAnalyzer => Permissions {
            publish: vec![js_api, ack(&topology.incidents_stream)],
            subscribe: vec![inbox, s.analyze()],
            allow_responses: true,
        },
        Identity::SimulatorFleet => Permissions {
            publish: vec![
                format!("{root}.*.events.>"),
                s.all_inventory(),
                format!("$KV.{bucket}.*"),
                format!("$JS.API.STREAM.INFO.KV_{bucket}"),
            ],
            subscribe: vec![s.all_rpc(), inbox],
            allow_responses: true,
        },
        Identity::Superuser => {
            Permissions { publish: vec![">".into()], subscribe: vec![">".into()], allow_responses: true }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_gets_only_its_own_subjects() {
        let topology = Topology::default();
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let p = permissions(&Identity::Agent(id), &topology);
        assert_eq!(
            p.publish,
            vec![
                "ops.a1b2c3d4e5f6.events.>",
                "ops.a1b2c3d4e5f6.inventory",
                "$KV.AGENTS.a1b2c3d4e5f6",
                "$JS.API.STREAM.INFO.KV_AGENTS"
            ]
        );
        assert_eq!(p.subscribe, vec!["ops.a1b2c3d4e5f6.rpc", "_INBOX_agent-a1b2c3d4e5f6.>"]);
        assert!(p.allow_responses);
    }

    #[test]
    fn the_ingestor_cannot_send_actions() {
        let p = permissions(&Identity::EventIngestor, &Topology::default());
        assert!(!p.publish.iter().any(|s| s.ends_with(".rpc") || s == ">"));
        assert!(!p.allow_responses);
    }
}
