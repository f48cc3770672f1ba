//! What each identity may publish and subscribe to. Nothing else is allowed: NATS
//! denies any subject not listed.

use wire_models::{AgentId, Subjects};

use crate::Topology;

/// Publish / subscribe allow-lists, whether replies to received requests are allowed
/// (NATS "allow responses": one reply per request, to its reply subject only), and
/// the connection's limits (`None` = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub allow_responses: bool,
    pub max_subscriptions: Option<u64>,
    pub max_payload: Option<u64>,
}

/// Subscriptions an agent connection may hold: its RPC subject and its inbox need
/// two; the rest is room for a client library's own. A host cannot make the server
/// track thousands of interests for it.
pub const AGENT_MAX_SUBSCRIPTIONS: u64 = 8;

/// The largest message an agent may publish: the protocol's largest message (an
/// inventory report) plus room for headers. The server refuses anything larger and
/// closes the connection, so oversize data never reaches a stream.
pub const AGENT_MAX_PAYLOAD: u64 = 512 * 1024 + 8 * 1024;

/// The user-JWT tag that names an agent (`agent:{id}`); the agent template of the
/// scoped signing key reads it.
pub const AGENT_TAG: &str = "agent";

/// What the scoped agent signing key grants, with `{{tag(agent)}}` where the agent
/// id goes: the server fills it in from the user JWT's `agent:{id}` tag when the
/// agent connects.
pub fn agent_template(topology: &Topology) -> Permissions {
    agent_permissions(&format!("{{{{tag({AGENT_TAG})}}}}"), topology)
}

fn agent_permissions(id: &str, topology: &Topology) -> Permissions {
    let own = topology.subjects.agent_patterns(id);
    let bucket = &topology.agents_bucket;
    Permissions {
        publish: vec![
            own.events,
            own.inventory,
            Subjects::kv_subject(bucket, id),
            // Binding to the bucket (`get_key_value`) reads its stream info.
            Subjects::kv_stream_info(bucket),
        ],
        subscribe: vec![own.rpc, format!("{}.>", inbox_prefix(&format!("agent-{id}")))],
        allow_responses: true,
        max_subscriptions: Some(AGENT_MAX_SUBSCRIPTIONS),
        max_payload: Some(AGENT_MAX_PAYLOAD),
    }
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
    let bucket = &topology.agents_bucket;
    let inbox = format!("{}.>", identity.inbox_prefix());
    // Every backend service creates or updates the streams at start and uses
    // consumers, so it speaks the JetStream API.
    let js_api = "$JS.API.>".to_owned();
    let ack = |stream: &str| format!("$JS.ACK.{stream}.>");
    match identity {
        Identity::Agent(id) => agent_permissions(id.as_str(), topology),
        Identity::ApiGateway => Permissions {
            publish: vec![
                s.all_rpc(),
                s.analyze(),
                s.incident_updated(),
                s.action_finished(),
                s.fleet_action_progress(),
                // Operators' live streams read the change feed (the incidents stream)
                // with ordered consumers of their own: no other stream, no durable.
                // After a reconnect the consumer asks for its own info to learn
                // whether the server still has it.
                format!("$JS.API.STREAM.INFO.{}", topology.incidents_stream),
                format!("$JS.API.CONSUMER.INFO.{}.>", topology.incidents_stream),
                format!("$JS.API.CONSUMER.CREATE.{}", topology.incidents_stream),
                format!("$JS.API.CONSUMER.CREATE.{}.>", topology.incidents_stream),
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.>", topology.incidents_stream),
                format!("$JS.API.CONSUMER.DELETE.{}.>", topology.incidents_stream),
            ],
            subscribe: vec![inbox],
            allow_responses: false,
            ..Permissions::default()
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
            ..Permissions::default()
        },
        Identity::PresenceTracker => Permissions {
            publish: vec![
                js_api,
                s.all_presence_changes(),
                // The agent_offline incidents it opens and resolves, on the change feed.
                s.incident_created(),
                s.incident_updated(),
                s.dead_letter(wire_models::DlqOrigin::Heartbeats),
            ],
            subscribe: vec![inbox],
            // Flow-control and heartbeat replies of the KV watch's ordered consumer.
            allow_responses: true,
            ..Permissions::default()
        },
        Identity::AiAnalyzer => Permissions {
            publish: vec![js_api, ack(&topology.incidents_stream), s.incident_updated()],
            subscribe: vec![inbox, s.analyze()],
            allow_responses: true,
            ..Permissions::default()
        },
        Identity::SimulatorFleet => Permissions {
            publish: vec![
                s.agent_patterns("*").events,
                s.all_inventory(),
                Subjects::kv_subject(bucket, "*"),
                Subjects::kv_stream_info(bucket),
            ],
            subscribe: vec![s.all_rpc(), inbox],
            allow_responses: true,
            ..Permissions::default()
        },
        Identity::Superuser => Permissions {
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            allow_responses: true,
            ..Permissions::default()
        },
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
        assert_eq!(p.max_subscriptions, Some(AGENT_MAX_SUBSCRIPTIONS));
        assert_eq!(p.max_payload, Some(AGENT_MAX_PAYLOAD));
    }

    #[test]
    fn the_agent_template_is_the_agent_permissions_with_a_tag() {
        let topology = Topology::default();
        let template = agent_template(&topology);
        assert_eq!(template.publish[0], "ops.{{tag(agent)}}.events.>");
        assert_eq!(template.subscribe[1], "_INBOX_agent-{{tag(agent)}}.>");
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let filled = |list: &[String]| -> Vec<String> {
            list.iter().map(|s| s.replace("{{tag(agent)}}", id.as_str())).collect()
        };
        let p = permissions(&Identity::Agent(id.clone()), &topology);
        assert_eq!(filled(&template.publish), p.publish);
        assert_eq!(filled(&template.subscribe), p.subscribe);
    }

    #[test]
    fn the_largest_protocol_message_fits_the_agent_payload_limit() {
        use wire_models::WireMessage as _;
        assert!(wire_models::InventoryReport::MAX_BYTES as u64 + 4096 <= AGENT_MAX_PAYLOAD);
        assert!(wire_models::Event::MAX_BYTES as u64 <= AGENT_MAX_PAYLOAD);
    }

    #[test]
    fn the_ingestor_cannot_send_actions() {
        let p = permissions(&Identity::EventIngestor, &Topology::default());
        assert!(!p.publish.iter().any(|s| s.ends_with(".rpc") || s == ">"));
        assert!(!p.allow_responses);
    }
}
