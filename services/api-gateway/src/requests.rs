//! What clients send: the request bodies, each checked by its handler before anything
//! is spent or written. Bodies that carry a secret redact it in `Debug`.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Role;
use crate::routes::schema::{
    AgentIdDoc, CommandNameDoc, EmailDoc, FingerprintDoc, HostnameDoc, LabelChangesDoc, NonceDoc,
    PasswordDoc, SignatureDoc, TokenNameDoc, UserKeyDoc,
};

// Request and response bodies that carry a password, a token, a seed or a signature
// print "[REDACTED]" in its place: a body that ends up in a log line by `{:?}` must not
// take its secret along.
pub(crate) const REDACTED: &str = "[REDACTED]";

pub(crate) fn redacted<T>(value: &Option<T>) -> Option<&'static str> {
    value.as_ref().map(|_| REDACTED)
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    #[schema(max_length = 254, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", example = "ops@example.com")]
    pub email: String,
    #[schema(max_length = 1024, example = "correct horse battery staple")]
    pub password: String,
}

/// Changes to an agent. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    /// Labels to set (`"key": "value"`) or remove (`"key": null`); the others stay.
    /// At least one; an agent has at most 64 operator labels.
    #[schema(value_type = LabelChangesDoc, inline)]
    pub labels: std::collections::BTreeMap<String, Option<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PatchIncident {
    pub status: TargetStatus,
}

/// What an operator may move an incident to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetStatus {
    Acknowledged,
    Resolved,
}

/// A command for one agent. Each command takes its own `params` (none, `service`, or
/// `path` and `lines`); the document lists them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecuteRequest {
    /// Optional; when given it must equal the agent id in the path (400
    /// `agent-mismatch` otherwise; `x-equals-path-parameter` says so to tools).
    #[schema(value_type = Option<AgentIdDoc>, inline)]
    pub agent_id: Option<String>,
    /// An allow-listed command.
    #[schema(value_type = CommandNameDoc, inline)]
    pub command: String,
    /// The command's parameters.
    #[serde(default)]
    pub params: Value,
}

/// The suggested action exactly as the operator was shown it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecuteSuggested {
    /// The suggestion's command.
    #[schema(value_type = CommandNameDoc, inline)]
    pub command: String,
    /// The suggestion's params.
    #[serde(default)]
    pub params: Value,
}

#[derive(Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// An enrollment (bootstrap) token. Required for a machine not enrolled yet; a
    /// request with a valid `proof` needs none. A request has a token, a proof, or both.
    #[schema(min_length = 1, max_length = 256, example = "opt_3b1f0c9e")]
    pub token: Option<String>,
    /// Stable identity of the machine (e.g. /etc/machine-id). It is not a secret: it
    /// finds the agent, and the `proof` shows the request comes from it.
    #[schema(value_type = FingerprintDoc, inline)]
    pub machine_fingerprint: String,
    #[schema(value_type = HostnameDoc, inline)]
    pub hostname: String,
    /// An `U...` NKey the agent generated; when given, the response carries only a
    /// JWT for it and the private seed never leaves the agent. It becomes the key on
    /// record that later re-enrollments must prove.
    #[schema(value_type = Option<UserKeyDoc>, inline)]
    pub nats_public_key: Option<String>,
    /// Proof that the caller holds the key on record for this machine's agent.
    pub proof: Option<EnrollProof>,
}

/// A signature, by the key on record, over
/// `opspilot-enroll-v1\n{nonce}\n{sha256 hex of the fingerprint}\n{nats_public_key or empty}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EnrollProof {
    /// The key on record (`U...`).
    #[schema(value_type = UserKeyDoc, inline)]
    pub public_key: String,
    /// A nonce from `POST /api/v1/agents/enroll/challenge`, good once.
    #[schema(value_type = NonceDoc, inline)]
    pub nonce: String,
    /// The Ed25519 signature, base64url without padding.
    #[schema(value_type = SignatureDoc, inline)]
    pub signature: String,
}

/// How to resolve an identity conflict.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConflictResolution {
    /// The agent now belongs to the presented key; its old keys are revoked.
    Move,
    /// The machine becomes a new agent (a cloned image).
    Split,
    /// Refuse the key for good.
    Reject,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResolveConflict {
    pub resolution: ConflictResolution,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateToken {
    /// 1 to 128 characters, no control characters, no white space around.
    #[schema(value_type = TokenNameDoc, inline)]
    pub name: String,
    /// Lifetime in seconds, 60 to 90 days (default 86400).
    #[schema(minimum = 60, maximum = 7776000, example = 86400)]
    pub expires_in_secs: Option<u64>,
    /// How many enrollments it allows, 1 to 1000000 (default: unlimited until it
    /// expires).
    #[schema(minimum = 1, maximum = 1000000, example = 10)]
    pub max_uses: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateUser {
    #[schema(value_type = EmailDoc, inline)]
    pub email: String,
    /// 12 to 1024 characters.
    #[schema(value_type = PasswordDoc, inline)]
    pub password: String,
    pub role: Role,
}

#[derive(Deserialize, ToSchema)]
pub struct UpdateUser {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// 12 to 1024 characters.
    #[schema(value_type = Option<PasswordDoc>, inline)]
    pub password: Option<String>,
}

impl From<TargetStatus> for storage::incidents::IncidentStatus {
    fn from(target: TargetStatus) -> Self {
        match target {
            TargetStatus::Acknowledged => storage::incidents::IncidentStatus::Acknowledged,
            TargetStatus::Resolved => storage::incidents::IncidentStatus::Resolved,
        }
    }
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest").field("email", &self.email).field("password", &REDACTED).finish()
    }
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("role", &self.role)
            .finish()
    }
}

impl std::fmt::Debug for UpdateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateUser")
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("password", &redacted(&self.password))
            .finish()
    }
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &redacted(&self.token))
            .field("machine_fingerprint", &self.machine_fingerprint)
            .field("hostname", &self.hostname)
            .field("nats_public_key", &self.nats_public_key)
            .field("proof", &self.proof)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_bodies_never_reach_debug_output() {
        let secret = "hunter2-correct-horse-battery";
        let texts = [
            format!("{:?}", LoginRequest { email: "a@b.c".into(), password: secret.into() }),
            format!("{:?}", CreateUser { email: "a@b.c".into(), password: secret.into(), role: Role::Admin }),
            format!("{:?}", UpdateUser { role: None, disabled: None, password: Some(secret.into()) }),
            format!(
                "{:?}",
                EnrollRequest {
                    token: Some(secret.into()),
                    machine_fingerprint: "m".into(),
                    hostname: "h".into(),
                    nats_public_key: None,
                    proof: None,
                }
            ),
        ];
        for text in texts {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
    }
}
