//! Subject builders and parsers. No other crate formats or splits a subject.
//!
//! Agent subjects: `{root}.{agent_id}.events.{kind}`, `{root}.{agent_id}.inventory`,
//! `{root}.{agent_id}.rpc`. Backend subjects live under `{root}.sys.`, which can never
//! collide with an agent subject because `sys` is not a valid agent id.

use std::fmt;

use crate::agent_id::{AgentId, AgentIdError};
use crate::messages::EventKind;

/// The first token(s) of every subject, `ops` by default. Tests give each run its own
/// root so that many runs share one server without seeing each other's messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectRoot(String);

impl SubjectRoot {
    pub const DEFAULT: &'static str = "ops";

    /// Dot-separated tokens of `[A-Za-z0-9_-]`, at most 64 bytes in all.
    pub fn parse(s: &str) -> Result<Self, SubjectError> {
        if s.is_empty() || s.len() > 64 {
            return Err(SubjectError::InvalidRoot(s.to_owned()));
        }
        let valid_token =
            |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !s.split('.').all(valid_token) {
            return Err(SubjectError::InvalidRoot(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn token_count(&self) -> usize {
        self.0.split('.').count()
    }
}

impl Default for SubjectRoot {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for SubjectRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a subject (or subject root) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("invalid subject root {0:?}: expected dot-separated tokens of [A-Za-z0-9_-]")]
    InvalidRoot(String),
    #[error("subject does not start with the root {root:?}")]
    WrongRoot { root: String },
    #[error("subject is not an agent subject ({{root}}.{{agent_id}}.events.{{kind}}, .inventory or .rpc)")]
    Shape,
    #[error("invalid agent id in subject: {0}")]
    AgentId(#[from] AgentIdError),
    #[error("invalid event kind in subject: {0}")]
    Kind(String),
}

impl SubjectError {
    /// A stable code for dead-letter headers and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            SubjectError::AgentId(_) => "invalid_agent_id",
            SubjectError::Kind(_) => "invalid_kind",
            SubjectError::InvalidRoot(_) | SubjectError::WrongRoot { .. } | SubjectError::Shape => {
                "invalid_subject"
            }
        }
    }
}

/// What an agent subject says about itself once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSubject {
    Event { agent_id: AgentId, kind: EventKind },
    Inventory { agent_id: AgentId },
    Rpc { agent_id: AgentId },
}

impl AgentSubject {
    pub fn agent_id(&self) -> &AgentId {
        match self {
            AgentSubject::Event { agent_id, .. }
            | AgentSubject::Inventory { agent_id }
            | AgentSubject::Rpc { agent_id } => agent_id,
        }
    }
}

/// Where a dead-lettered message came from; names its dead-letter subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqOrigin {
    Events,
    Inventory,
    Heartbeats,
}

impl DlqOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqOrigin::Events => "events",
            DlqOrigin::Inventory => "inventory",
            DlqOrigin::Heartbeats => "heartbeats",
        }
    }
}

/// Builds and parses every subject under one root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subjects {
    root: SubjectRoot,
}

impl Subjects {
    pub fn new(root: SubjectRoot) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &SubjectRoot {
        &self.root
    }

    // --- agent subjects -------------------------------------------------------------

    pub fn event(&self, agent: &AgentId, kind: &EventKind) -> String {
        format!("{}.{agent}.events.{kind}", self.root)
    }

    /// Every agent's events: the events stream's subject filter.
    pub fn all_events(&self) -> String {
        format!("{}.*.events.>", self.root)
    }

    /// One agent's events (`{root}.{id}.events.>`).
    pub fn agent_events(&self, agent: &AgentId) -> String {
        format!("{}.{agent}.events.>", self.root)
    }

    pub fn inventory(&self, agent: &AgentId) -> String {
        format!("{}.{agent}.inventory", self.root)
    }

    /// Every agent's inventory: the inventory stream's subject filter.
    pub fn all_inventory(&self) -> String {
        format!("{}.*.inventory", self.root)
    }

    pub fn rpc(&self, agent: &AgentId) -> String {
        format!("{}.{agent}.rpc", self.root)
    }

    /// Every agent's RPC subject; only the simulator (which plays many agents at once)
    /// subscribes to it.
    pub fn all_rpc(&self) -> String {
        format!("{}.*.rpc", self.root)
    }

    /// The subjects of the agent named by `token`, which is an agent id, the wildcard
    /// `*` (every agent) or a permission template such as `{{tag(agent)}}` that the
    /// server fills in: never a value from outside the backend.
    pub fn agent_patterns(&self, token: &str) -> AgentPatterns {
        AgentPatterns {
            events: format!("{}.{token}.events.>", self.root),
            inventory: format!("{}.{token}.inventory", self.root),
            rpc: format!("{}.{token}.rpc", self.root),
        }
    }

    // --- backend subjects -----------------------------------------------------------

    /// Published by the ingestor after an incident was committed.
    pub fn incident_created(&self) -> String {
        format!("{}.sys.incidents.created", self.root)
    }

    /// Published when an incident changes after its creation (at most once).
    pub fn incident_updated(&self) -> String {
        format!("{}.sys.incidents.updated", self.root)
    }

    /// Every incident message (created and updated).
    pub fn all_incident_messages(&self) -> String {
        format!("{}.sys.incidents.>", self.root)
    }

    /// Published by the api-gateway when an action it sent ended.
    pub fn action_finished(&self) -> String {
        format!("{}.sys.actions.finished", self.root)
    }

    /// Published by the api-gateway as a fleet-wide action progresses and ends.
    pub fn fleet_action_progress(&self) -> String {
        format!("{}.sys.actions.fleet", self.root)
    }

    pub fn all_action_messages(&self) -> String {
        format!("{}.sys.actions.>", self.root)
    }

    /// What operators are shown as it happens, in the order it happened: incidents,
    /// presence and actions. The incidents stream keeps all three, so a client that
    /// missed some replays them by sequence.
    pub fn change_feed(&self) -> Vec<String> {
        vec![self.all_incident_messages(), self.all_presence_changes(), self.all_action_messages()]
    }

    /// Published by the presence tracker on every online/offline transition.
    pub fn presence_changed(&self, agent: &AgentId) -> String {
        format!("{}.sys.presence.{agent}", self.root)
    }

    pub fn all_presence_changes(&self) -> String {
        format!("{}.sys.presence.*", self.root)
    }

    /// Request-reply subject served by the ai-analyzer in a queue group.
    pub fn analyze(&self) -> String {
        format!("{}.sys.analyze", self.root)
    }

    pub fn dead_letter(&self, origin: DlqOrigin) -> String {
        format!("{}.sys.dlq.{}", self.root, origin.as_str())
    }

    pub fn all_dead_letters(&self) -> String {
        format!("{}.sys.dlq.>", self.root)
    }

    // --- parsing --------------------------------------------------------------------

    /// Parses an agent subject, validating the agent id and the event kind.
    pub fn parse(&self, subject: &str) -> Result<AgentSubject, SubjectError> {
        let mut tokens = subject.split('.');
        for expected in self.root.as_str().split('.') {
            if tokens.next() != Some(expected) {
                return Err(SubjectError::WrongRoot { root: self.root.to_string() });
            }
        }
        let agent = tokens.next().ok_or(SubjectError::Shape)?;
        let rest: Vec<&str> = tokens.collect();
        let parsed = match rest.as_slice() {
            ["events", kind] => {
                let agent_id = AgentId::parse(agent)?;
                let kind = EventKind::parse(kind).map_err(SubjectError::Kind)?;
                AgentSubject::Event { agent_id, kind }
            }
            ["inventory"] => AgentSubject::Inventory { agent_id: AgentId::parse(agent)? },
            ["rpc"] => AgentSubject::Rpc { agent_id: AgentId::parse(agent)? },
            _ => return Err(SubjectError::Shape),
        };
        debug_assert!(self.root.token_count() > 0);
        Ok(parsed)
    }

    /// The agent an agent subject belongs to, whatever follows its id (for charging
    /// what the subject costs to that agent); `None` when there is no valid id.
    pub fn agent_of(&self, subject: &str) -> Option<AgentId> {
        let mut tokens = subject.split('.');
        for expected in self.root.as_str().split('.') {
            if tokens.next() != Some(expected) {
                return None;
            }
        }
        AgentId::parse(tokens.next()?).ok()
    }

    /// The KV bucket's internal subject for a key as it arrived (valid or not: it names
    /// where a refused heartbeat came from), or a pattern (`*`, a permission template).
    pub fn kv_subject(bucket: &str, key: &str) -> String {
        format!("$KV.{bucket}.{key}")
    }

    /// The JetStream API subject an agent binding to the bucket calls (its stream info).
    pub fn kv_stream_info(bucket: &str) -> String {
        format!("$JS.API.STREAM.INFO.KV_{bucket}")
    }

    /// The KV bucket's internal subject for one key (`$KV.{bucket}.{key}`); used when
    /// writing per-agent permissions.
    pub fn kv_key_subject(bucket: &str, agent: &AgentId) -> String {
        Self::kv_subject(bucket, agent.as_str())
    }
}

/// One agent's (or a pattern's) subjects, from [`Subjects::agent_patterns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPatterns {
    pub events: String,
    pub inventory: String,
    pub rpc: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_for_an_agent_a_wildcard_or_a_template() {
        let s = Subjects::default();
        let one = s.agent_patterns(id().as_str());
        assert_eq!(one.events, s.agent_events(&id()));
        assert_eq!(one.inventory, s.inventory(&id()));
        assert_eq!(one.rpc, s.rpc(&id()));
        assert_eq!(s.agent_patterns("*").events, "ops.*.events.>");
        assert_eq!(s.agent_patterns("*").rpc, s.all_rpc());
        assert_eq!(Subjects::kv_subject("AGENTS", "*"), "$KV.AGENTS.*");
        assert_eq!(Subjects::kv_key_subject("AGENTS", &id()), "$KV.AGENTS.a1b2c3d4e5f6");
    }

    #[test]
    fn the_agent_of_a_subject() {
        let s = Subjects::default();
        assert_eq!(s.agent_of("ops.a1b2c3d4e5f6.events.a.b.c"), Some(id()));
        assert_eq!(s.agent_of("ops.a1b2c3d4e5f6.inventory"), Some(id()));
        assert_eq!(s.agent_of("ops.A1B2C3D4E5F6.inventory"), None);
        assert_eq!(s.agent_of("other.a1b2c3d4e5f6.inventory"), None);
        assert_eq!(s.agent_of("ops"), None);
    }

    fn id() -> AgentId {
        AgentId::parse("a1b2c3d4e5f6").unwrap()
    }

    #[test]
    fn builds_the_documented_subjects() {
        let s = Subjects::default();
        let kind = EventKind::parse("service_down").unwrap();
        assert_eq!(s.event(&id(), &kind), "ops.a1b2c3d4e5f6.events.service_down");
        assert_eq!(s.inventory(&id()), "ops.a1b2c3d4e5f6.inventory");
        assert_eq!(s.rpc(&id()), "ops.a1b2c3d4e5f6.rpc");
        assert_eq!(s.all_events(), "ops.*.events.>");
        assert_eq!(s.all_inventory(), "ops.*.inventory");
        assert_eq!(s.incident_created(), "ops.sys.incidents.created");
        assert_eq!(s.presence_changed(&id()), "ops.sys.presence.a1b2c3d4e5f6");
        assert_eq!(s.analyze(), "ops.sys.analyze");
        assert_eq!(s.dead_letter(DlqOrigin::Events), "ops.sys.dlq.events");
    }

    #[test]
    fn parses_what_it_builds() {
        let s = Subjects::new(SubjectRoot::parse("t_123.ops").unwrap());
        let kind = EventKind::parse("oom").unwrap();
        assert_eq!(s.parse(&s.event(&id(), &kind)).unwrap(), AgentSubject::Event { agent_id: id(), kind });
        assert_eq!(s.parse(&s.inventory(&id())).unwrap(), AgentSubject::Inventory { agent_id: id() });
        assert_eq!(s.parse(&s.rpc(&id())).unwrap(), AgentSubject::Rpc { agent_id: id() });
    }

    #[test]
    fn refuses_bad_subjects() {
        let s = Subjects::default();
        for bad in [
            "",
            "ops",
            "ops.",
            "other.a1b2c3d4e5f6.inventory",
            "ops.a1b2c3d4e5f6",
            "ops.a1b2c3d4e5f6.events",
            "ops.a1b2c3d4e5f6.events.a.b",
            "ops.a1b2c3d4e5f6.inventory.x",
            "ops.A1B2C3D4E5F6.inventory",
            "ops.sys.events.x",
            "ops.*.inventory",
            "ops.>.rpc",
            "ops.a1b2c3d4e5f6.events.*",
            "ops.a1b2c3d4e5f6.events.>",
            "ops.a1b2c3d4e5f6.unknown",
        ] {
            assert!(s.parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn error_codes_are_stable() {
        let s = Subjects::default();
        assert_eq!(s.parse("ops.xyz.inventory").unwrap_err().code(), "invalid_agent_id");
        assert_eq!(s.parse("ops.a1b2c3d4e5f6.events.BAD").unwrap_err().code(), "invalid_kind");
        assert_eq!(s.parse("nope").unwrap_err().code(), "invalid_subject");
    }

    #[test]
    fn roots_are_validated() {
        for bad in ["", ".", "ops.", ".ops", "ops.*", "o ps", "ops.>", &"x".repeat(65)] {
            assert!(SubjectRoot::parse(bad).is_err(), "{bad:?} must be refused");
        }
        SubjectRoot::parse("ops").unwrap();
        SubjectRoot::parse("test-1.ops_2").unwrap();
    }
}
