//! Message payloads. Every message is JSON with a protocol version in `v`; unknown
//! fields are ignored so that newer agents can add fields without breaking us.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::agent_id::AgentId;
use crate::canonical::{canonical_json, sha256_hex};
use crate::codec::{DecodeError, WireMessage};
use crate::command::Command;
use crate::text::{bounded, json_without_nul, label, null_as_default, optional_label};

// --- event kinds and severities ------------------------------------------------------

/// The last token of an event subject: 1-64 characters of `[a-z0-9_-]`, starting with a
/// letter or digit (`service_down`, `oom`, `disk-full`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventKind(String);

impl EventKind {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!("event kind must be 1 to {} characters", Self::MAX_LEN));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err("event kind must start with a lowercase letter or digit".into());
        }
        if let Some(c) =
            s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            return Err(format!("character {c:?} is not allowed in an event kind"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKind({})", self.0)
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        EventKind::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How bad an event is. Only `critical` marks the incident critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn is_critical(self) -> bool {
        self == Severity::Critical
    }

    pub const ALL: [Severity; 4] = [Severity::Info, Severity::Warning, Severity::Error, Severity::Critical];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|severity| severity.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl TryFrom<String> for Severity {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("unknown severity {s:?}"))
    }
}

// --- heartbeat -----------------------------------------------------------------------

/// The value an agent puts in the `AGENTS` KV bucket under its own id, every
/// `interval_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u16,
    pub agent_id: AgentId,
    /// Monotonic per agent process; a restart starts again at 0.
    pub seq: u64,
    pub sent_at: DateTime<Utc>,
    /// The agent's heartbeat interval; the backend derives its offline threshold.
    pub interval_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

impl Heartbeat {
    pub const MAX_INTERVAL_SECS: u32 = 3600;
}

impl WireMessage for Heartbeat {
    const NAME: &'static str = "heartbeat";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_INTERVAL_SECS).contains(&self.interval_secs) {
            return Err(format!("interval_secs must be between 1 and {}", Self::MAX_INTERVAL_SECS));
        }
        optional_label("hostname", self.hostname.as_deref(), 253)?;
        optional_label("agent_version", self.agent_version.as_deref(), 64)
    }
}

// --- events --------------------------------------------------------------------------

/// Something that happened on a host, published on `{root}.{agent_id}.events.{kind}`
/// with `Nats-Msg-Id: {event_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u16,
    /// Unique per event; also the `Nats-Msg-Id` header and the database's idempotency key.
    pub event_id: Uuid,
    pub agent_id: AgentId,
    pub kind: EventKind,
    pub severity: Severity,
    /// What produced the event (a service, a check, a log file).
    pub source: String,
    /// The error text as the host saw it.
    pub raw_error: String,
    /// Free-form structured detail (a JSON object).
    #[serde(default, deserialize_with = "null_as_default")]
    pub context: Map<String, Value>,
    pub occurred_at: DateTime<Utc>,
}

impl Event {
    pub const MAX_RAW_ERROR: usize = 16 * 1024;

    /// Checks the body against what the subject says (agent id and kind).
    pub fn check_subject(&self, agent_id: &AgentId, kind: &EventKind) -> Result<(), DecodeError> {
        if &self.agent_id != agent_id {
            return Err(DecodeError::AgentMismatch {
                message: Self::NAME,
                subject: agent_id.to_string(),
                body: self.agent_id.to_string(),
            });
        }
        if &self.kind != kind {
            return Err(DecodeError::KindMismatch {
                message: Self::NAME,
                subject: kind.to_string(),
                body: self.kind.to_string(),
            });
        }
        Ok(())
    }
}

impl WireMessage for Event {
    const NAME: &'static str = "event";
    const MAX_BYTES: usize = 64 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        label("source", &self.source, 256)?;
        bounded("raw_error", &self.raw_error, 0, Self::MAX_RAW_ERROR)?;
        self.context.iter().try_for_each(|(k, v)| {
            bounded("context", k, 0, 1024)?;
            json_without_nul("context", v)
        })
    }
}

// --- inventory -----------------------------------------------------------------------

/// An inventory snapshot, published on `{root}.{agent_id}.inventory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryReport {
    pub v: u16,
    pub agent_id: AgentId,
    pub collected_at: DateTime<Utc>,
    pub snapshot: Inventory,
}

impl InventoryReport {
    /// SHA-256 (hex) of the snapshot's canonical JSON: key order, whitespace and the
    /// envelope (`v`, `collected_at`) do not change it; any change of content does.
    pub fn snapshot_hash(&self) -> String {
        // Serializing a struct of strings, vectors and JSON maps cannot fail.
        let value = serde_json::to_value(&self.snapshot).unwrap_or(Value::Null);
        sha256_hex(canonical_json(&value).as_bytes())
    }

    pub fn check_subject(&self, agent_id: &AgentId) -> Result<(), DecodeError> {
        if &self.agent_id != agent_id {
            return Err(DecodeError::AgentMismatch {
                message: Self::NAME,
                subject: agent_id.to_string(),
                body: self.agent_id.to_string(),
            });
        }
        Ok(())
    }
}

/// What an agent reports about its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub os: OsInfo,
    #[serde(default, deserialize_with = "null_as_default")]
    pub services: Vec<ServiceInfo>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub packages: Vec<PackageInfo>,
    /// Labels and other metadata; copied to `agents.meta`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Anything else the agent reports is kept as is (and hashed).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsInfo {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// `running`, `stopped`, `failed`, ... as the service manager says.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
}

impl WireMessage for InventoryReport {
    const NAME: &'static str = "inventory";
    const MAX_BYTES: usize = 512 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.snapshot;
        label("snapshot.hostname", &s.hostname, 253)?;
        label("snapshot.os.name", &s.os.name, 128)?;
        bounded("snapshot.os.version", &s.os.version, 0, 128)?;
        optional_label("snapshot.os.kernel", s.os.kernel.as_deref(), 128)?;
        optional_label("snapshot.os.arch", s.os.arch.as_deref(), 32)?;
        if s.services.len() > 4096 || s.packages.len() > 20_000 {
            return Err("snapshot has too many services or packages".into());
        }
        for svc in &s.services {
            label("snapshot.services[].name", &svc.name, 256)?;
            label("snapshot.services[].state", &svc.state, 64)?;
        }
        for pkg in &s.packages {
            label("snapshot.packages[].name", &pkg.name, 256)?;
            bounded("snapshot.packages[].version", &pkg.version, 0, 128)?;
        }
        for (field, map) in [("snapshot.meta", &s.meta), ("snapshot", &s.extra)] {
            for (k, v) in map {
                bounded(field, k, 0, 1024)?;
                json_without_nul(field, v)?;
            }
        }
        Ok(())
    }
}

// --- rpc -----------------------------------------------------------------------------

/// An action the backend asks an agent to run, sent by request-reply on
/// `{root}.{agent_id}.rpc`. The command and its params are flattened into the envelope:
/// `{"v":1,"request_id":"...","command":"restart_service","params":{"service":"nginx"},...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    pub v: u16,
    pub request_id: Uuid,
    #[serde(flatten)]
    pub command: Command,
    pub issued_at: DateTime<Utc>,
    /// How long the backend waits for the reply; an agent may give up after it.
    pub timeout_ms: u32,
}

impl WireMessage for RpcRequest {
    const NAME: &'static str = "rpc request";
    const MAX_BYTES: usize = 16 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.timeout_ms > 300_000 {
            return Err("timeout_ms must be between 1 and 300000".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RpcStatus {
    Ok,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// A stable machine code (`unknown_service`, `timeout`, `not_permitted`, ...).
    pub code: String,
    pub message: String,
}

/// An agent's answer to an [`RpcRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcReply {
    pub v: u16,
    pub request_id: Uuid,
    pub status: RpcStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    pub duration_ms: u64,
}

impl RpcReply {
    pub const MAX_OUTPUT: usize = 64 * 1024;
}

impl WireMessage for RpcReply {
    const NAME: &'static str = "rpc reply";
    const MAX_BYTES: usize = 96 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(out) = &self.output {
            bounded("output", out, 0, Self::MAX_OUTPUT)?;
        }
        match (&self.status, &self.error) {
            (RpcStatus::Error, None) => Err("status error requires an error object".into()),
            (RpcStatus::Ok, Some(_)) => Err("status ok must not carry an error object".into()),
            (_, Some(e)) => {
                label("error.code", &e.code, 64)?;
                bounded("error.message", &e.message, 0, 4096)
            }
            (RpcStatus::Ok, None) => Ok(()),
        }
    }
}

// --- backend messages ----------------------------------------------------------------

/// Published by the event-ingestor on `{root}.sys.incidents.created` after the incident
/// was committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentCreated {
    pub v: u16,
    pub incident_id: i64,
    pub agent_id: AgentId,
    pub kind: EventKind,
    pub severity: Severity,
    pub is_critical: bool,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

impl WireMessage for IncidentCreated {
    const NAME: &'static str = "incident-created";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Online,
    Offline,
}

impl PresenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceState::Online => "online",
            PresenceState::Offline => "offline",
        }
    }
}

impl fmt::Display for PresenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Published by the presence-tracker on `{root}.sys.presence.{agent_id}` once per
/// transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceChanged {
    pub v: u16,
    pub agent_id: AgentId,
    pub state: PresenceState,
    pub changed_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The silence after which the agent counts as offline, in seconds.
    pub threshold_secs: u32,
    /// `heartbeat`, `timeout` or `key_expired`.
    pub reason: String,
}

impl WireMessage for PresenceChanged {
    const NAME: &'static str = "presence-changed";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }
}

/// What changed about an incident after it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentChange {
    /// It recurred: `occurrences` and `last_seen_at` moved.
    Occurrences,
    /// An analysis finished (`analysis_status` says how).
    Analysis,
    /// An operator acknowledged or resolved it.
    Status,
    /// Its suggested action ran (the outcome is in the matching `ActionFinished`).
    Action,
}

/// Published on `{root}.sys.incidents.updated` when an incident changes after its
/// creation. At most once, and occurrences are coalesced (about one message a second
/// per incident and ingestor): the incident itself is the record, this says when to
/// read it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentUpdated {
    pub v: u16,
    pub incident_id: i64,
    pub agent_id: AgentId,
    pub change: IncidentChange,
    /// `new`, `analyzed`, `acknowledged` or `resolved`, when the publisher knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrences: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<DateTime<Utc>>,
    /// `ok` or `failed`, for an `analysis` change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_status: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl WireMessage for IncidentUpdated {
    const NAME: &'static str = "incident-updated";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        if self.incident_id <= 0 {
            return Err("incident_id must be positive".into());
        }
        optional_label("status", self.status.as_deref(), 32)?;
        optional_label("analysis_status", self.analysis_status.as_deref(), 32)
    }
}

/// Published by the api-gateway on `{root}.sys.actions.finished` when an action it sent
/// to an agent ended, whatever the outcome. At most once: the audit log is the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionFinished {
    pub v: u16,
    /// The audit log's request id.
    pub request_id: Uuid,
    pub agent_id: AgentId,
    pub command: String,
    /// `ok`, `error`, `offline`, `timeout`, `invalid_reply`, ...
    pub outcome: String,
    /// The incident whose suggested action this was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<i64>,
    pub duration_ms: i64,
    pub finished_at: DateTime<Utc>,
}

impl WireMessage for ActionFinished {
    const NAME: &'static str = "action-finished";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        label("command", &self.command, 64)?;
        label("outcome", &self.outcome, 64)
    }
}

/// Published by the api-gateway on `{root}.sys.actions.fleet` while a fleet-wide action
/// runs (at most a few times a second) and once when it ends. At most once each: the
/// action's rows in Postgres are the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetActionProgress {
    pub v: u16,
    pub action_id: Uuid,
    pub command: String,
    /// `running`, `finished`, `cancelled` or `unfinished`.
    pub state: String,
    /// Agents targeted.
    pub total: u32,
    /// Agents with an outcome so far, and how many of each.
    pub done: u32,
    pub ok: u32,
    pub error: u32,
    pub timeout: u32,
    pub skipped: u32,
    pub cancelled: u32,
    pub at: DateTime<Utc>,
}

impl WireMessage for FleetActionProgress {
    const NAME: &'static str = "fleet-action-progress";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        label("command", &self.command, 64)?;
        label("state", &self.state, 32)
    }
}

/// Request on `{root}.sys.analyze`, served by the ai-analyzer queue group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyzeRequest {
    pub v: u16,
    pub incident_id: i64,
    /// Analyze again even if the incident was analyzed before.
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl WireMessage for AnalyzeRequest {
    const NAME: &'static str = "analyze request";
    const MAX_BYTES: usize = 4 * 1024;

    fn version(&self) -> u16 {
        self.v
    }

    fn validate(&self) -> Result<(), String> {
        if self.incident_id <= 0 {
            return Err("incident_id must be positive".into());
        }
        optional_label("requested_by", self.requested_by.as_deref(), 256)
    }
}

/// How an analysis ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AnalyzeOutcome {
    /// Stored on the incident; the caller re-reads it.
    Analyzed {
        analyzer: String,
        model: Option<String>,
        cached: bool,
    },
    /// Recorded on the incident with this reason.
    Failed {
        reason: String,
    },
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyzeReply {
    pub v: u16,
    pub incident_id: i64,
    #[serde(flatten)]
    pub outcome: AnalyzeOutcome,
}

impl WireMessage for AnalyzeReply {
    const NAME: &'static str = "analyze reply";
    const MAX_BYTES: usize = 16 * 1024;

    fn version(&self) -> u16 {
        self.v
    }
}
