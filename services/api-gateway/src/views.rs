//! What the API sends and accepts (documented in the OpenAPI schema).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Role;
use crate::requests::{REDACTED, redacted};

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<storage::users::User> for UserView {
    fn from(u: storage::users::User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            role: Role::parse(&u.role).unwrap_or(Role::Viewer),
            disabled: u.disabled,
            created_at: u.created_at,
            last_login_at: u.last_login_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_in: u64,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

/// Whether an agent is up, since when, and why the backend thinks so.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PresenceInfo {
    /// `online` or `offline`.
    pub state: String,
    /// When the current state began.
    pub since: Option<DateTime<Utc>>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Silence after which the agent counts as offline.
    pub threshold_secs: Option<u32>,
    /// `redis` (live) or `postgres` (the durable record, when Redis has no word).
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub id: String,
    pub hostname: String,
    pub presence: PresenceInfo,
    pub meta: Value,
    /// The agent's labels, what selectors match: its latest inventory's `meta` entries
    /// that are valid labels, overridden by the labels operators set.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Value,
    /// The labels operators set (`PATCH /api/v1/agents/{id}`).
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub operator_labels: Value,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub inventory_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentPage {
    pub items: Vec<AgentView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentView,
    pub latest_inventory: Option<InventoryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnalysisInfo {
    /// `none`, `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// `openrouter` or `rules`.
    pub analyzer: Option<String>,
    pub model: Option<String>,
    pub analyzed_at: Option<DateTime<Utc>>,
    /// An action the model proposed that was refused (not allow-listed or invalid).
    pub dropped_action: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentView {
    pub id: i64,
    pub agent_id: String,
    /// The event kind.
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub raw_error: String,
    pub context: Value,
    pub is_critical: bool,
    pub severity: String,
    /// `new`, `analyzed`, `acknowledged` or `resolved`.
    pub status: String,
    pub fingerprint: String,
    pub occurrences: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub ai_analysis: Option<String>,
    pub suggested_action: Option<Value>,
    pub analysis: AnalysisInfo,
    pub action_result: Option<Value>,
    pub action_executed_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<storage::incidents::IncidentRow> for IncidentView {
    fn from(r: storage::incidents::IncidentRow) -> Self {
        Self {
            id: r.id,
            agent_id: r.agent_id,
            kind: r.kind,
            source: r.source,
            raw_error: r.raw_error,
            context: r.context,
            is_critical: r.is_critical,
            severity: r.severity.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            fingerprint: r.fingerprint,
            occurrences: r.occurrences,
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
            ai_analysis: r.ai_analysis,
            suggested_action: r.suggested_action,
            analysis: AnalysisInfo {
                status: r.analysis_status,
                error: r.analysis_error,
                analyzer: r.analyzer,
                model: r.analyzer_model,
                analyzed_at: r.analyzed_at,
                dropped_action: r.dropped_action,
            },
            action_result: r.action_result,
            action_executed_at: r.action_executed_at,
            acknowledged_at: r.acknowledged_at,
            acknowledged_by: r.acknowledged_by,
            resolved_at: r.resolved_at,
            resolved_by: r.resolved_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentPage {
    pub items: Vec<IncidentView>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<i64>,
}

/// An incident in the fleet-wide list: the incident and its agent's hostname.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetIncidentView {
    #[serde(flatten)]
    pub incident: IncidentView,
    pub hostname: String,
}

impl From<storage::incidents::fleet::FleetIncident> for FleetIncidentView {
    fn from(r: storage::incidents::fleet::FleetIncident) -> Self {
        Self { incident: r.incident.into(), hostname: r.hostname }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FleetIncidentPage {
    pub items: Vec<FleetIncidentView>,
    /// Pass as `cursor` (with the same filters and sort) for the next, older page;
    /// absent on the last page.
    pub next_cursor: Option<String>,
}

/// How many incidents a filter keeps, per status.
#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentSummary {
    pub total: i64,
    /// Of `total`, how many are critical.
    pub critical: i64,
    pub new: i64,
    pub analyzed: i64,
    pub acknowledged: i64,
    pub resolved: i64,
}

impl From<storage::incidents::fleet::FleetSummary> for IncidentSummary {
    fn from(s: storage::incidents::fleet::FleetSummary) -> Self {
        let count = |status: storage::incidents::IncidentStatus| {
            s.by_status.get(status.as_str()).copied().unwrap_or(0)
        };
        Self {
            total: s.total,
            critical: s.critical,
            new: count(storage::incidents::IncidentStatus::New),
            analyzed: count(storage::incidents::IncidentStatus::Analyzed),
            acknowledged: count(storage::incidents::IncidentStatus::Acknowledged),
            resolved: count(storage::incidents::IncidentStatus::Resolved),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryView {
    pub id: i64,
    pub hash: String,
    pub collected_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub data: Value,
}

impl From<storage::inventory::InventoryRow> for InventoryView {
    fn from(r: storage::inventory::InventoryRow) -> Self {
        Self { id: r.id, hash: r.hash, collected_at: r.collected_at, created_at: r.created_at, data: r.data }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryPage {
    pub items: Vec<InventoryView>,
    pub next_cursor: Option<i64>,
}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct InventoryChange {
    /// Dotted path; list items with a `name` are addressed by it (`services.nginx.state`).
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub op: String,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryDiff {
    pub from: i64,
    pub to: i64,
    pub changes: Vec<InventoryChange>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RpcErrorView {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    pub request_id: Uuid,
    pub agent_id: String,
    pub command: String,
    pub params: Value,
    /// The agent's answer: `ok` or `error` (the command ran and failed).
    pub status: String,
    pub output: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<RpcErrorView>,
    /// How long the agent says the command took.
    pub duration_ms: u64,
    /// Request to reply, as the gateway measured it.
    pub round_trip_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentExecuteResponse {
    pub result: ExecuteResponse,
    pub incident: IncidentView,
}

/// A single-use nonce to sign for a re-enrollment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollChallenge {
    pub nonce: String,
    pub expires_at: DateTime<Utc>,
}

/// An identity conflict: an enrolled machine came back with an unknown key.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityConflictView {
    pub id: i64,
    /// The agent the machine's fingerprint points at.
    pub agent_id: Option<String>,
    /// The key the machine presented.
    pub public_key: String,
    pub hostname: String,
    pub source_ip: String,
    pub attempts: i32,
    /// `pending`, `moved`, `split` or `rejected`.
    pub status: String,
    /// The agent the key now belongs to (after a move or a split).
    pub resolved_agent_id: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl From<storage::conflicts::Conflict> for IdentityConflictView {
    fn from(c: storage::conflicts::Conflict) -> Self {
        Self {
            id: c.id,
            agent_id: c.agent_id,
            public_key: c.public_key,
            hostname: c.hostname,
            source_ip: c.source_ip,
            attempts: c.attempts,
            status: c.status,
            resolved_agent_id: c.resolved_agent_id,
            resolved_by: c.resolved_by,
            resolved_at: c.resolved_at,
            first_seen_at: c.first_seen_at,
            last_seen_at: c.last_seen_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityConflictPage {
    pub items: Vec<IdentityConflictView>,
    pub next_cursor: Option<i64>,
}

/// The agent's own NATS identity.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct NatsCredentials {
    pub user_public_key: String,
    /// The user JWT (signed by the OpsPilot account).
    pub jwt: String,
    /// The NKey seed, when the backend generated the key pair.
    pub seed: Option<String>,
    /// JWT and seed as a `.creds` file, when the seed is known.
    pub creds: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// The inbox prefix the agent must use (`custom_inbox_prefix`): replies to its
    /// requests (JetStream acks) arrive there and nowhere else.
    pub inbox_prefix: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentSubjects {
    pub events: String,
    pub inventory: String,
    pub rpc: String,
    pub heartbeat_bucket: String,
    pub heartbeat_key: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    pub agent_id: String,
    /// `enrolled` for a new agent, `re-enrolled` for a machine seen before.
    pub status: String,
    pub nats_urls: Vec<String>,
    pub subject_root: String,
    pub heartbeat_interval_secs: u32,
    pub subjects: AgentSubjects,
    /// Absent only when the deployment runs without bus security (development).
    pub nats_credentials: Option<NatsCredentials>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_uses: Option<i32>,
    pub use_count: i32,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `active`, `expired`, `exhausted` or `revoked`.
    pub state: String,
}

impl From<storage::tokens::EnrollmentToken> for TokenView {
    fn from(t: storage::tokens::EnrollmentToken) -> Self {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at <= Utc::now() {
            "expired"
        } else if t.max_uses.is_some_and(|m| t.use_count >= m) {
            "exhausted"
        } else {
            "active"
        };
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            use_count: t.use_count,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            state: state.to_owned(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token itself: shown once, only its hash is stored.
    pub token: String,
    #[serde(flatten)]
    pub details: TokenView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub request_id: Uuid,
    pub actor: String,
    pub action: String,
    pub agent_id: Option<String>,
    pub incident_id: Option<i64>,
    pub command: Option<String>,
    pub params: Option<Value>,
    /// `pending`, `ok`, `error`, `offline`, `timeout`, `invalid_reply`, `failed`.
    pub outcome: String,
    pub result: Option<Value>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

impl From<storage::audit::AuditEntry> for AuditView {
    fn from(a: storage::audit::AuditEntry) -> Self {
        Self {
            id: a.id,
            request_id: a.request_id,
            actor: a.actor,
            action: a.action,
            agent_id: a.agent_id,
            incident_id: a.incident_id,
            command: a.command,
            params: a.params,
            outcome: a.outcome,
            result: a.result,
            started_at: a.started_at,
            finished_at: a.finished_at,
            duration_ms: a.duration_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next_cursor: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceTransitionView {
    pub id: i64,
    /// `online` or `offline`.
    pub state: String,
    pub changed_at: DateTime<Utc>,
    /// When the next transition ended this state; absent for the current state.
    pub until: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub threshold_secs: u32,
    /// `heartbeat`, `timeout` or `key_expired`.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceHistory {
    pub agent_id: String,
    pub current: PresenceInfo,
    pub transitions: Vec<PresenceTransitionView>,
    pub next_cursor: Option<i64>,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("access_token", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCredentials")
            .field("user_public_key", &self.user_public_key)
            .field("jwt", &REDACTED)
            .field("seed", &redacted(&self.seed))
            .field("creds", &redacted(&self.creds))
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken").field("token", &REDACTED).field("details", &self.details).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_responses_never_reach_debug_output() {
        let secret = "hunter2-correct-horse-battery";
        let text = format!(
            "{:?}",
            NatsCredentials {
                user_public_key: "U".into(),
                jwt: secret.into(),
                seed: Some(secret.into()),
                creds: Some(secret.into()),
                expires_at: Utc::now(),
                inbox_prefix: "_INBOX_x".into(),
            }
        );
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains(REDACTED), "{text}");
    }
}
