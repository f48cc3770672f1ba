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

/// An agent as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub hostname: String,
    pub status: String,
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status_changed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub meta: serde_json::Value,
    pub enrolled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub inventory_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const AGENT_COLUMNS: &str = "id, hostname, status, last_seen_at, status_changed_at, meta, enrolled_at, revoked_at, inventory_at, created_at";

/// Filters of the agent list.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter<'a> {
    pub status: Option<&'a str>,
    pub hostname_prefix: Option<&'a str>,
    /// Keyset cursor: the last id of the previous page.
    pub after: Option<&'a str>,
    pub limit: i64,
    pub include_revoked: bool,
}

/// Agents ordered by id (keyset pagination).
pub async fn list(pool: &PgPool, filter: &AgentFilter<'_>) -> Result<Vec<AgentRow>, StorageError> {
    // LIKE metacharacters in the prefix are escaped: a prefix is a prefix, not a pattern.
    let pattern = filter.hostname_prefix.map(|p| {
        let escaped = p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("{escaped}%")
    });
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR hostname LIKE $2)
           AND ($3::text IS NULL OR id > $3)
           AND ($5 OR revoked_at IS NULL)
         ORDER BY id LIMIT $4"
    )))
    .bind(filter.status)
    .bind(pattern)
    .bind(filter.after)
    .bind(filter.limit)
    .bind(filter.include_revoked)
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, id: &AgentId) -> Result<Option<AgentRow>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?)
}

/// Revokes an agent (it stays in the database, refused everywhere). Returns whether
/// it existed and was not already revoked.
pub async fn revoke(pool: &PgPool, id: &AgentId) -> Result<bool, StorageError> {
    let result = sqlx::query(
        "UPDATE agents SET revoked_at = now(), status = 'offline', status_changed_at = now(), updated_at = now()
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// How an enrollment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// A new agent.
    New(AgentId),
    /// The same machine enrolled before: its agent id is returned again.
    Existing(AgentId),
    /// The machine's agent was revoked; it cannot come back through enrollment.
    Revoked(AgentId),
    /// The token was refused.
    TokenRefused(crate::tokens::TokenRefusal),
}

/// Enrolls a machine. `token_hash` is `None` when the caller already checked a
/// bootstrap token from the environment. One transaction: a refused enrollment uses
/// no token, and two enrollments of one machine racing get the same agent id.
pub async fn enroll(
    pool: &PgPool,
    candidate: &AgentId,
    fingerprint_hash: &str,
    hostname: &str,
    token_hash: Option<&str>,
) -> Result<Enrollment, StorageError> {
    let mut tx = pool.begin().await?;
    let existing: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("SELECT id, revoked_at FROM agents WHERE machine_fingerprint = $1 FOR UPDATE")
            .bind(fingerprint_hash)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((id, Some(_))) = &existing {
        let id = AgentId::parse(id).map_err(|e| StorageError::Conflict(e.to_string()))?;
        return Ok(Enrollment::Revoked(id));
    }
    if let Some(token_hash) = token_hash
        && let Err(refusal) = crate::tokens::consume(&mut tx, token_hash).await?
    {
        return Ok(Enrollment::TokenRefused(refusal));
    }
    let outcome = match existing {
        Some((id, None)) => {
            sqlx::query(
                "UPDATE agents SET hostname = $2, enrolled_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(&id)
            .bind(hostname)
            .execute(&mut *tx)
            .await?;
            Enrollment::Existing(AgentId::parse(&id).map_err(|e| StorageError::Conflict(e.to_string()))?)
        }
        _ => {
            // ON CONFLICT: another enrollment of the same machine won the race.
            let id: String = sqlx::query_scalar(
                "INSERT INTO agents (id, hostname, machine_fingerprint, enrolled_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (machine_fingerprint) DO UPDATE SET enrolled_at = now()
                 RETURNING id",
            )
            .bind(candidate.as_str())
            .bind(hostname)
            .bind(fingerprint_hash)
            .fetch_one(&mut *tx)
            .await?;
            let id = AgentId::parse(&id).map_err(|e| StorageError::Conflict(e.to_string()))?;
            if &id == candidate { Enrollment::New(id) } else { Enrollment::Existing(id) }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}
