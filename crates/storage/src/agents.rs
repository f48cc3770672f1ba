//! Agents: enrollment, the known-agent check, inventory bookkeeping, presence mirror.

use sqlx::PgPool;
use wire_models::AgentId;

use crate::StorageError;

/// Which of `ids` are enrolled and not revoked.
pub async fn enrolled(pool: &PgPool, ids: &[&AgentId]) -> Result<Vec<AgentId>, StorageError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let found: Vec<String> =
        sqlx::query_scalar("SELECT id FROM agents WHERE id = ANY($1::text[]) AND revoked_at IS NULL")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    Ok(found.into_iter().filter_map(|id| AgentId::parse(&id).ok()).collect())
}

/// Registers an agent directly (tests, benchmarks, the simulator's fixtures); real
/// agents arrive through enrollment.
pub async fn register(pool: &PgPool, id: &AgentId, hostname: &str) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO agents (id, hostname, enrolled_at) VALUES ($1, $2, now())
         ON CONFLICT (id) DO UPDATE SET revoked_at = NULL",
    )
    .bind(id.as_str())
    .bind(hostname)
    .execute(pool)
    .await?;
    Ok(())
}

/// Registers many agents in one statement.
pub async fn register_many(pool: &PgPool, agents: &[(AgentId, String)]) -> Result<(), StorageError> {
    for chunk in agents.chunks(10_000) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let hosts: Vec<&str> = chunk.iter().map(|(_, h)| h.as_str()).collect();
        sqlx::query(
            "INSERT INTO agents (id, hostname, enrolled_at)
             SELECT id, hostname, now() FROM UNNEST($1::text[], $2::text[]) AS t(id, hostname)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&hosts)
        .execute(pool)
        .await?;
    }
    Ok(())
}
