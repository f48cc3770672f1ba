//! NATS credentials issued to agents, and the revocation list built from them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wire_models::AgentId;

use crate::StorageError;

/// Records credentials issued to an agent. Re-issuing a key extends its recorded
/// expiry (a JWT can never outlive the revocation list's knowledge of it); a key that
/// another agent was given, or that was revoked, is refused as a conflict.
pub async fn record(
    pool: &PgPool,
    agent: &AgentId,
    user_public_key: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    let recorded: Option<String> = sqlx::query_scalar(
        "INSERT INTO agent_credentials (user_public_key, agent_id, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_public_key) DO UPDATE
            SET expires_at = GREATEST(agent_credentials.expires_at, EXCLUDED.expires_at), issued_at = now()
            WHERE agent_credentials.agent_id = EXCLUDED.agent_id AND agent_credentials.revoked_at IS NULL
         RETURNING user_public_key",
    )
    .bind(user_public_key)
    .bind(agent.as_str())
    .bind(expires_at)
    .fetch_optional(pool)
    .await?;
    match recorded {
        Some(_) => Ok(()),
        None => {
            Err(StorageError::Conflict("this public key belongs to another identity or was revoked".into()))
        }
    }
}

/// Records a backend service's credentials (`nats-init`), so they can be revoked.
pub async fn record_service(
    pool: &PgPool,
    identity: &str,
    user_public_key: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO agent_credentials (user_public_key, agent_id, identity, expires_at) VALUES ($1, NULL, $2, $3)
         ON CONFLICT (user_public_key) DO NOTHING",
    )
    .bind(user_public_key)
    .bind(identity)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Revokes the given keys (a rotation's replaced service keys, or any key by hand);
/// a key never recorded is recorded as revoked, expiring after `expires_at`.
pub async fn revoke_keys(
    pool: &PgPool,
    identity: &str,
    keys: &[String],
    expires_at: DateTime<Utc>,
) -> Result<u64, StorageError> {
    Ok(sqlx::query(
        "INSERT INTO agent_credentials (user_public_key, agent_id, identity, expires_at, revoked_at)
         SELECT key, NULL, $2, $3, now() FROM UNNEST($1::text[]) AS t(key)
         ON CONFLICT (user_public_key) DO UPDATE SET revoked_at = COALESCE(agent_credentials.revoked_at, now())",
    )
    .bind(keys)
    .bind(identity)
    .bind(expires_at)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Revokes an agent's credentials except `keep` (the ones it just proved it holds or
/// was just given): every successful re-enrollment ends the keys it replaces.
pub(crate) async fn revoke_others(
    conn: &mut sqlx::PgConnection,
    agent: &AgentId,
    keep: Option<&str>,
) -> Result<Vec<String>, StorageError> {
    Ok(sqlx::query_scalar(
        "UPDATE agent_credentials SET revoked_at = now()
         WHERE agent_id = $1 AND revoked_at IS NULL AND user_public_key IS DISTINCT FROM $2
         RETURNING user_public_key",
    )
    .bind(agent.as_str())
    .bind(keep)
    .fetch_all(&mut *conn)
    .await?)
}

/// Revokes every credential of an agent; returns how many.
pub async fn revoke_agent(pool: &PgPool, agent: &AgentId) -> Result<u64, StorageError> {
    let mut conn = pool.acquire().await?;
    Ok(revoke_others(&mut conn, agent, None).await?.len() as u64)
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
