//! Identity conflicts: a machine whose fingerprint is enrolled came back with a key
//! that is not on record and without proof. Kept for an administrator to resolve.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wire_models::AgentId;

use crate::StorageError;
use crate::agents::EnrollmentRequest;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Conflict {
    pub id: i64,
    pub agent_id: Option<String>,
    pub public_key: String,
    pub hostname: String,
    pub source_ip: String,
    pub attempts: i32,
    pub status: String,
    pub resolved_agent_id: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, agent_id, public_key, hostname, source_ip, attempts, status, resolved_agent_id, \
                       resolved_by, resolved_at, first_seen_at, last_seen_at";

/// How an administrator resolves a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The agent now belongs to the presented key; its other keys are revoked.
    Move,
    /// The presenting machine becomes an agent of its own (a clone).
    Split,
    /// The attempt is refused for good.
    Reject,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Move => "moved",
            Resolution::Split => "split",
            Resolution::Reject => "rejected",
        }
    }
}

/// What resolving did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Done; `agent` is the agent the key now belongs to (none when rejected), and
    /// `revoked_keys` the keys a move took away.
    Done {
        conflict: Box<Conflict>,
        agent: Option<AgentId>,
        revoked_keys: Vec<String>,
    },
    NotFound,
    /// Already resolved, or its agent is gone.
    NotPending,
    /// The key became another agent's in the meantime.
    KeyInUse,
}

/// Records (or counts again) a pending conflict; returns its id and whether an
/// earlier one for this machine and key was rejected.
pub(crate) async fn record(
    conn: &mut sqlx::PgConnection,
    agent: &AgentId,
    req: &EnrollmentRequest<'_>,
    key: &str,
) -> Result<(i64, bool), StorageError> {
    let rejected: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM identity_conflicts
         WHERE machine_fingerprint = $1 AND public_key = $2 AND status = 'rejected'
         ORDER BY id DESC LIMIT 1",
    )
    .bind(req.fingerprint_hash)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = rejected {
        sqlx::query(
            "UPDATE identity_conflicts SET attempts = attempts + 1, last_seen_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        return Ok((id, true));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO identity_conflicts (agent_id, machine_fingerprint, public_key, hostname, source_ip)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (machine_fingerprint, public_key) WHERE status = 'pending'
         DO UPDATE SET attempts = identity_conflicts.attempts + 1, last_seen_at = now(),
                       hostname = EXCLUDED.hostname, source_ip = EXCLUDED.source_ip
         RETURNING id",
    )
    .bind(agent.as_str())
    .bind(req.fingerprint_hash)
    .bind(key)
    .bind(req.hostname)
    .bind(req.source_ip)
    .fetch_one(&mut *conn)
    .await?;
    Ok((id, false))
}

/// Conflicts, newest first, optionally only those with `status`.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Conflict>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identity_conflicts
         WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    )))
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Resolves a pending conflict. `new_agent` is the id a split gives the machine.
pub async fn resolve(
    pool: &PgPool,
    id: i64,
    resolution: Resolution,
    by: &str,
    new_agent: &AgentId,
) -> Result<Resolved, StorageError> {
    let mut tx = pool.begin().await?;
    let conflict: Option<Conflict> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identity_conflicts WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(conflict) = conflict else { return Ok(Resolved::NotFound) };
    let fingerprint: String =
        sqlx::query_scalar("SELECT machine_fingerprint FROM identity_conflicts WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    let Some(agent) = conflict.agent_id.as_deref().filter(|_| conflict.status == "pending") else {
        return Ok(Resolved::NotPending);
    };
    let agent = AgentId::parse(agent).map_err(|e| StorageError::Conflict(e.to_string()))?;
    let key_taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM agents WHERE identity_key = $1)
             OR EXISTS (SELECT 1 FROM agent_credentials WHERE user_public_key = $1)",
    )
    .bind(&conflict.public_key)
    .fetch_one(&mut *tx)
    .await?;
    if key_taken && resolution != Resolution::Reject {
        return Ok(Resolved::KeyInUse);
    }
    let (owner, revoked_keys) = match resolution {
        Resolution::Move => {
            let moved = sqlx::query(
                "UPDATE agents SET identity_key = $2, hostname = $3, updated_at = now()
                 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(agent.as_str())
            .bind(&conflict.public_key)
            .bind(&conflict.hostname)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                return Ok(Resolved::NotPending);
            }
            let revoked = crate::credentials::revoke_others(&mut tx, &agent, None).await?;
            (Some(agent), revoked)
        }
        Resolution::Split => {
            sqlx::query(
                "INSERT INTO agents (id, hostname, machine_fingerprint, identity_key, enrolled_at)
                 VALUES ($1, $2, $3, $4, now())",
            )
            .bind(new_agent.as_str())
            .bind(&conflict.hostname)
            .bind(&fingerprint)
            .bind(&conflict.public_key)
            .execute(&mut *tx)
            .await?;
            (Some(new_agent.clone()), Vec::new())
        }
        Resolution::Reject => (None, Vec::new()),
    };
    let updated: Conflict = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE identity_conflicts SET status = $2, resolved_agent_id = $3, resolved_by = $4, resolved_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(resolution.as_str())
    .bind(owner.as_ref().map(AgentId::as_str))
    .bind(by)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Resolved::Done { conflict: Box::new(updated), agent: owner, revoked_keys })
}
