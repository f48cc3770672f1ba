//! Enrollment: a machine gets an agent id and its own NATS credentials. A machine
//! already enrolled gets its identity back only by proving it holds the key on
//! record (a signature over a fresh nonce); anything else is an identity conflict
//! for an administrator. See docs/PROTOCOL.md, section 3.1.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use chrono::Utc;
use rand::Rng as _;
use serde_json::json;

use crate::client_ip::ClientIp;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::requests::*;
use crate::state::AppState;
use crate::views::*;

/// How long a challenge nonce can be used.
const NONCE_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// A single-use nonce for a re-enrollment proof (good for two minutes).
#[utoipa::path(
    post, path = "/api/v1/agents/enroll/challenge", tag = "agents",
    responses(
        (status = 201, description = "A nonce to sign", body = EnrollChallenge),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn challenge(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
) -> ApiResult<(StatusCode, Json<EnrollChallenge>)> {
    state.limiter.enroll(ip).await?;
    let bytes: [u8; 32] = rand::rng().random();
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut conn = state.redis.get().await.map_err(|_| unavailable_nonces())?;
    let ttl_ms = u64::try_from(NONCE_TTL.as_millis()).unwrap_or(120_000);
    let _: () = redis::cmd("SET")
        .arg(state.keys.enroll_nonce(&nonce))
        .arg(1)
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut conn)
        .await
        .map_err(|_| unavailable_nonces())?;
    let expires_at =
        Utc::now() + chrono::Duration::from_std(NONCE_TTL).unwrap_or(chrono::Duration::seconds(120));
    Ok((StatusCode::CREATED, Json(EnrollChallenge { nonce, expires_at })))
}

fn unavailable_nonces() -> ApiError {
    ApiError::Unavailable("enrollment challenges are unavailable (Redis); retry shortly".into())
}

/// Uses a nonce: true only the first time, within its lifetime.
async fn take_nonce(state: &AppState, nonce: &str) -> ApiResult<bool> {
    let mut conn = state.redis.get().await.map_err(|_| unavailable_nonces())?;
    let deleted: i64 = redis::cmd("DEL")
        .arg(state.keys.enroll_nonce(nonce))
        .query_async(&mut conn)
        .await
        .map_err(|_| unavailable_nonces())?;
    Ok(deleted == 1)
}

/// A request with every field checked; nothing is spent or written before this.
struct Checked<'a> {
    token: Option<&'a str>,
    fingerprint: &'a str,
    hostname: &'a str,
    nats_public_key: Option<&'a str>,
    proof: Option<(&'a str, &'a str, Vec<u8>)>,
}

fn check(body: &EnrollRequest) -> ApiResult<Checked<'_>> {
    let token = body.token.as_deref();
    if let Some(token) = token
        && (token.is_empty() || token.chars().count() > 256)
    {
        return Err(ApiError::bad_request("invalid-body", "token must be 1 to 256 characters"));
    }
    let fingerprint = body.machine_fingerprint.trim();
    if !(8..=512).contains(&fingerprint.chars().count()) || fingerprint.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid-body",
            "machine_fingerprint must be 8 to 512 printable characters",
        ));
    }
    let hostname = body.hostname.trim();
    if hostname.is_empty()
        || hostname.chars().count() > 253
        || hostname.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::bad_request(
            "invalid-body",
            "hostname must be 1 to 253 characters without spaces",
        ));
    }
    let nats_public_key = body.nats_public_key.as_deref();
    if let Some(key) = nats_public_key
        && natsbus::auth::check_user_key(key).is_err()
    {
        return Err(ApiError::bad_request(
            "invalid-public-key",
            "nats_public_key must be a user NKey (U...)",
        ));
    }
    let proof = match &body.proof {
        None => None,
        Some(proof) => {
            if natsbus::auth::check_user_key(&proof.public_key).is_err() {
                return Err(ApiError::bad_request(
                    "invalid-proof",
                    "proof.public_key must be a user NKey (U...)",
                ));
            }
            if !(16..=128).contains(&proof.nonce.len())
                || !proof.nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ApiError::bad_request(
                    "invalid-proof",
                    "proof.nonce is not a nonce this API issued",
                ));
            }
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(proof.signature.as_bytes())
                .ok()
                .filter(|s| s.len() == 64)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-proof",
                        "proof.signature must be 64 bytes, base64url without padding",
                    )
                })?;
            Some((proof.public_key.as_str(), proof.nonce.as_str(), signature))
        }
    };
    if token.is_none() && proof.is_none() {
        return Err(ApiError::bad_request("invalid-body", "token is required (or a proof, to enroll again)"));
    }
    Ok(Checked { token, fingerprint, hostname, nats_public_key, proof })
}

/// Writes an enrollment event to the audit log; a failure to write it is logged, and
/// does not change the answer (the outcome is already decided and committed).
async fn audit(
    state: &AppState,
    action: &str,
    agent: Option<&str>,
    outcome: &str,
    detail: serde_json::Value,
) {
    let entry = storage::audit::NewAudit {
        request_id: uuid::Uuid::now_v7(),
        actor: "enrollment",
        action,
        agent_id: agent,
        incident_id: None,
        command: None,
        params: Some(&detail),
    };
    if let Err(err) = storage::audit::record(&state.pool, &entry, outcome, None).await {
        tracing::warn!(action, error = %err, "writing the enrollment audit entry failed");
    }
}

/// Enrolls an agent with an enrollment token, or enrolls an enrolled machine again
/// with a proof that it holds its key on record.
#[utoipa::path(
    post, path = "/api/v1/agents/enroll", tag = "agents",
    request_body = EnrollRequest,
    responses(
        (status = 201, description = "A new agent", body = EnrollResponse),
        (status = 200, description = "A machine enrolled before, proven by its key", body = EnrollResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Token unknown, expired, revoked or used up; or an invalid proof", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The machine's agent was revoked", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The machine is enrolled and the request did not prove its key (identity-proof-required), or the key is another agent's (key-in-use)", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    state.limiter.enroll(ip).await?;
    let req = check(&body)?;
    let fingerprint_hash = wire_models::sha256_hex(req.fingerprint.as_bytes());
    let source_ip = ip.to_string();

    let mut proven_key = None;
    if let Some((key, nonce, signature)) = &req.proof {
        let message = wire_models::enroll_proof_message(nonce, req.fingerprint, req.nats_public_key);
        let fresh = take_nonce(&state, nonce).await?;
        let valid = fresh
            && natsbus::auth::KeyPair::from_public_key(key)
                .is_ok_and(|pair| pair.verify(&message, signature).is_ok());
        if !valid {
            tracing::warn!(client_ip = %ip, hostname = req.hostname, key, "enrollment proof refused");
            audit(
                &state,
                "enroll_invalid_proof",
                None,
                "refused",
                json!({"source_ip": source_ip, "hostname": req.hostname, "public_key": key, "nonce_fresh": fresh}),
            )
            .await;
            let why =
                if fresh { "the signature does not verify" } else { "the nonce is unknown, used or expired" };
            return Err(ApiError::InvalidProof(format!("{why}; ask for a new challenge and sign it")));
        }
        proven_key = Some(*key);
    }

    let token_hash = req.token.map(|t| wire_models::sha256_hex(t.as_bytes()));
    let bootstrap = token_hash.is_some() && state.bootstrap_token_hash.as_deref() == token_hash.as_deref();
    let pending = state.bus_auth.prepare_key(req.nats_public_key)?;
    let candidate = wire_models::AgentId::random();
    let outcome = storage::agents::enroll(
        &state.pool,
        &storage::agents::EnrollmentRequest {
            candidate: &candidate,
            fingerprint_hash: &fingerprint_hash,
            hostname: req.hostname,
            token_hash: token_hash.as_deref().filter(|_| !bootstrap),
            bootstrap,
            proven_key,
            new_key: pending.as_ref().map(|k| k.public.as_str()),
            source_ip: &source_ip,
        },
    )
    .await?;
    let (status, agent, label, replaced) = match outcome {
        storage::agents::Enrollment::New(id) => (StatusCode::CREATED, id, "enrolled", Vec::new()),
        storage::agents::Enrollment::Existing { id, replaced_keys } => {
            (StatusCode::OK, id, "re-enrolled", replaced_keys)
        }
        storage::agents::Enrollment::Revoked(id) => {
            tracing::warn!(agent_id = %id, client_ip = %ip, "revoked agent tried to enroll again");
            return Err(ApiError::Revoked(format!(
                "agent {id} of this machine was revoked; an admin must delete it \
                 (DELETE /api/v1/revoked-agents/{id}) before the machine can enroll again"
            )));
        }
        storage::agents::Enrollment::TokenRefused(reason) => {
            tracing::info!(client_ip = %ip, reason = reason.as_str(), "enrollment refused");
            return Err(ApiError::EnrollmentRefused(reason.as_str().to_owned()));
        }
        storage::agents::Enrollment::KeyInUse => {
            return Err(ApiError::KeyInUse(
                "nats_public_key belongs to another agent; generate a new key".into(),
            ));
        }
        storage::agents::Enrollment::ProofRequired { agent, conflict } => {
            let key = req.nats_public_key;
            tracing::warn!(agent_id = %agent, client_ip = %ip, hostname = req.hostname, key, "enrollment without proof for an enrolled machine");
            audit(
                &state,
                "enroll_identity_conflict",
                Some(agent.as_str()),
                "refused",
                json!({"source_ip": source_ip, "hostname": req.hostname, "public_key": key,
                       "conflict_id": conflict.map(|(id, _)| id), "proof_key": proven_key}),
            )
            .await;
            metrics::counter!("opspilot_enrollments_total", "outcome" => "identity_conflict").increment(1);
            let detail = match conflict {
                Some((id, true)) => {
                    format!("this machine's key was rejected by an administrator (identity conflict {id})")
                }
                Some((id, false)) => format!(
                    "this machine is enrolled and the request did not prove it holds the agent's key; \
                     recorded as identity conflict {id} for an administrator to approve"
                ),
                None => "this machine is enrolled and the request did not prove it holds the agent's key; \
                         send nats_public_key so an administrator can approve it"
                    .to_owned(),
            };
            return Err(ApiError::IdentityProofRequired(detail));
        }
    };
    let issued = match pending {
        Some(key) => state.bus_auth.issue(&agent, key)?,
        None => None,
    };
    if let Some(creds) = &issued {
        storage::credentials::record(&state.pool, &agent, &creds.user_public_key, creds.expires_at)
            .await
            .map_err(|err| match err {
                storage::StorageError::Conflict(msg) => ApiError::KeyInUse(msg),
                other => other.into(),
            })?;
    }
    if !replaced.is_empty() {
        // The replaced keys are revoked in the database already; the push makes the
        // servers drop them now rather than at the next resync.
        if let Err(err) = state.bus_auth.sync(&state.pool).await {
            tracing::warn!(agent_id = %agent, error = %err, "revocation not yet pushed to the bus; the resync will retry");
        }
    }
    audit(
        &state,
        if status == StatusCode::CREATED { "enroll_agent" } else { "reenroll_agent" },
        Some(agent.as_str()),
        "ok",
        json!({"source_ip": source_ip, "hostname": req.hostname,
               "public_key": issued.as_ref().map(|c| c.user_public_key.clone()),
               "proven_by": proven_key, "revoked_keys": replaced}),
    )
    .await;
    tracing::info!(agent_id = %agent, hostname = req.hostname, status = label, "agent enrolled");
    metrics::counter!("opspilot_enrollments_total", "outcome" => label).increment(1);
    let info = &state.enrollment;
    let subjects = &state.subjects;
    Ok((
        status,
        Json(EnrollResponse {
            agent_id: agent.to_string(),
            status: label.to_owned(),
            nats_urls: info.nats_urls.clone(),
            subject_root: info.subject_root.clone(),
            heartbeat_interval_secs: info.heartbeat_interval_secs,
            subjects: AgentSubjects {
                events: subjects.agent_events(&agent),
                inventory: subjects.inventory(&agent),
                rpc: subjects.rpc(&agent),
                heartbeat_bucket: info.agents_bucket.clone(),
                heartbeat_key: agent.to_string(),
            },
            nats_credentials: issued.map(|c| NatsCredentials {
                creds: c.creds_file(),
                user_public_key: c.user_public_key.clone(),
                jwt: c.jwt.clone(),
                seed: c.seed.as_ref().map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned()),
                expires_at: c.expires_at,
                inbox_prefix: natsbus::auth::Identity::Agent(agent.clone()).inbox_prefix(),
            }),
        }),
    ))
}
