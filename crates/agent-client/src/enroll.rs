//! Enrollment through the API (docs/PROTOCOL.md, section 3.1): the agent sends its
//! machine fingerprint and the public half of an NKey it generated, and, when its
//! machine is enrolled already, proves it holds the key on record by signing a fresh
//! challenge. The seed never leaves the caller.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use natsbus::auth::KeyPair;
use serde::{Deserialize, Serialize};
use wire_models::AgentId;

/// The body of `POST /api/v1/agents/enroll`.
#[derive(Debug, Serialize)]
pub struct EnrollRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<&'a str>,
    pub machine_fingerprint: &'a str,
    pub hostname: &'a str,
    pub nats_public_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// A signature over a fresh challenge by the key on record.
#[derive(Debug, Serialize)]
pub struct Proof {
    pub public_key: String,
    pub nonce: String,
    pub signature: String,
}

#[derive(Deserialize)]
struct Challenge {
    nonce: String,
}

/// What the backend answers to a successful enrollment. Fields the agent does not use
/// are ignored, so the backend can add some.
#[derive(Debug, Clone, Deserialize)]
pub struct EnrollResponse {
    pub agent_id: AgentId,
    #[serde(default)]
    pub status: String,
    pub nats_urls: Vec<String>,
    #[serde(default)]
    pub subject_root: Option<String>,
    #[serde(default)]
    pub heartbeat_interval_secs: Option<u32>,
    #[serde(default)]
    pub subjects: Option<EnrolledSubjects>,
    #[serde(default)]
    pub nats_credentials: Option<NatsCredentials>,
}

/// The subjects and bucket the backend assigned.
#[derive(Debug, Clone, Deserialize)]
pub struct EnrolledSubjects {
    pub heartbeat_bucket: String,
}

/// The agent's NATS identity: a user JWT for its own key.
#[derive(Debug, Clone, Deserialize)]
pub struct NatsCredentials {
    pub jwt: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why an enrollment did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The backend answered with a problem document: `slug` is the last part of its
    /// `type` (`identity-proof-required`, `revoked`, ...).
    #[error("enrollment refused ({status} {slug}): {detail}")]
    Refused { status: u16, slug: String, detail: String },
    #[error("reaching the api: {0}")]
    Http(#[from] reqwest::Error),
    #[error("signing the proof: {0}")]
    Sign(String),
    #[error("the api answered {0}")]
    Invalid(String),
}

impl EnrollError {
    /// Whether trying again later may succeed (rate limits, an identity conflict an
    /// administrator has yet to resolve, a backend that is down).
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Refused { status, .. } => matches!(status, 409 | 429) || *status >= 500,
            EnrollError::Http(_) => true,
            EnrollError::Sign(_) | EnrollError::Invalid(_) => false,
        }
    }
}

/// An HTTP client for one API.
#[derive(Clone)]
pub struct EnrollClient {
    http: reqwest::Client,
    base: String,
}

impl EnrollClient {
    pub fn new(api_base: &str) -> Result<Self, EnrollError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self { http, base: api_base.trim_end_matches('/').to_owned() })
    }

    /// The API this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the API answers: `GET /healthz`, public and cheap, served by the same
    /// listener as enrollment.
    pub async fn health(&self) -> Result<(), EnrollError> {
        let response = self.http.get(format!("{}/healthz", self.base)).send().await?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(EnrollError::Invalid(format!("{status} to GET /healthz"))),
        }
    }

    /// A proof that the caller holds `key`, for new credentials for `requested_key`
    /// on the machine `fingerprint`: a fresh challenge, signed.
    pub async fn prove(
        &self,
        key: &KeyPair,
        fingerprint: &str,
        requested_key: &str,
    ) -> Result<Proof, EnrollError> {
        let response = self.http.post(format!("{}/api/v1/agents/enroll/challenge", self.base)).send().await?;
        let challenge: Challenge = checked(response).await?.json().await?;
        let message = wire_models::enroll_proof_message(&challenge.nonce, fingerprint, Some(requested_key));
        let signature = key.sign(&message).map_err(|e| EnrollError::Sign(e.to_string()))?;
        Ok(Proof {
            public_key: key.public_key(),
            nonce: challenge.nonce,
            signature: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature),
        })
    }

    /// Sends one enrollment request.
    pub async fn enroll(&self, request: &EnrollRequest<'_>) -> Result<EnrollResponse, EnrollError> {
        let response =
            self.http.post(format!("{}/api/v1/agents/enroll", self.base)).json(request).send().await?;
        let response = checked(response).await?;
        let body: EnrollResponse =
            response.json().await.map_err(|e| EnrollError::Invalid(format!("an unreadable body: {e}")))?;
        Ok(body)
    }
}

/// Turns a problem document into [`EnrollError::Refused`].
async fn checked(response: reqwest::Response) -> Result<reqwest::Response, EnrollError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let slug = body["type"].as_str().and_then(|t| t.rsplit(':').next()).unwrap_or("unknown").to_owned();
    let detail = body["detail"].as_str().or(body["title"].as_str()).unwrap_or("refused").to_owned();
    Err(EnrollError::Refused { status: status.as_u16(), slug, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_waiting_can_help_with_conflicts_limits_and_outages() {
        let refused = |status| EnrollError::Refused { status, slug: "x".into(), detail: String::new() };
        assert!(refused(409).is_transient());
        assert!(refused(429).is_transient());
        assert!(refused(503).is_transient());
        assert!(!refused(401).is_transient());
        assert!(!refused(403).is_transient());
        assert!(!EnrollError::Invalid("x".into()).is_transient());
    }

    #[test]
    fn a_request_without_token_or_proof_leaves_them_out() {
        let request = EnrollRequest {
            token: None,
            machine_fingerprint: "machine-1",
            hostname: "h",
            nats_public_key: "UABC",
            proof: None,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert!(json.get("token").is_none() && json.get("proof").is_none(), "{json}");
    }
}
