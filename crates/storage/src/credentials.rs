//! NATS credentials issued to agents, and the revocation list built from them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wire_models::AgentId;

use crate::StorageError;

pub async fn record(
    pool: &PgPool,
    agent: &AgentId,
    user_public_key: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO agent_credentials (user_public_key, agent_id, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_public_key) DO NOTHING",
    )
    .bind(user_public_key)
    .bind(agent.as_str())
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Revokes every credential of an agent; returns how many.
pub async fn revoke_agent(pool: &PgPool, agent: &AgentId) -> Result<u64, StorageError> {
    Ok(sqlx::query(
        "UPDATE agent_credentials SET revoked_at = now() WHERE agent_id = $1 AND revoked_at IS NULL",
    )
    .bind(agent.as_str())
    .execute(pool)
    .await?
    .rows_affected())
}

/// Revoked credentials that have not expired yet (expired ones cannot connect anyway),
/// as the account JWT's revocation map: user key -> unix time of the revocation.
pub async fn revocations(pool: &PgPool) -> Result<BTreeMap<String, i64>, StorageError> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT user_public_key, revoked_at FROM agent_credentials WHERE revoked_at IS NOT NULL AND expires_at > now()",
    )
    .fetch_all(pool)
    .await?;
    // +1 s: NATS revokes JWTs issued *before* the time; one issued in the same second
    // as the revocation must be covered too.
    Ok(rows.into_iter().map(|(key, at)| (key, at.timestamp() + 1)).collect())
}
