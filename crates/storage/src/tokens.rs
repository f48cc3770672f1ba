//! Enrollment (bootstrap) tokens. Only a SHA-256 of each token is stored.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::StorageError;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentToken {
    pub id: Uuid,
    pub name: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub max_uses: Option<i32>,
    pub use_count: i32,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, name, created_by, created_at, expires_at, max_uses, use_count, last_used_at, revoked_at";

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    Revoked,
    Exhausted,
}

impl TokenRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Unknown => "unknown token",
            TokenRefusal::Expired => "token expired",
            TokenRefusal::Revoked => "token revoked",
            TokenRefusal::Exhausted => "token has no uses left",
        }
    }
}

pub async fn create(
    pool: &PgPool,
    name: &str,
    token_hash: &str,
    created_by: Option<Uuid>,
    expires_at: DateTime<Utc>,
    max_uses: Option<i32>,
) -> Result<EnrollmentToken, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO enrollment_tokens (id, name, token_hash, created_by, expires_at, max_uses)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(token_hash)
    .bind(created_by)
    .bind(expires_at)
    .bind(max_uses)
    .fetch_one(pool)
    .await?)
}

pub async fn list(pool: &PgPool) -> Result<Vec<EnrollmentToken>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC LIMIT 1000"
    )))
    .fetch_all(pool)
    .await?)
}

/// Revokes a token; returns it, or `None` if there is no such token.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<Option<EnrollmentToken>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// revoked_at, expires_at, max_uses, use_count
type TokenState = (Option<DateTime<Utc>>, DateTime<Utc>, Option<i32>, i32);

/// Uses a token once, atomically (two enrollments racing for the last use: one wins).
pub async fn consume(
    conn: &mut sqlx::PgConnection,
    token_hash: &str,
) -> Result<Result<Uuid, TokenRefusal>, StorageError> {
    let used: Option<Uuid> = sqlx::query_scalar(
        "UPDATE enrollment_tokens SET use_count = use_count + 1, last_used_at = now()
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
           AND (max_uses IS NULL OR use_count < max_uses)
         RETURNING id",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = used {
        return Ok(Ok(id));
    }
    let state: Option<TokenState> = sqlx::query_as(
        "SELECT revoked_at, expires_at, max_uses, use_count FROM enrollment_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Err(match state {
        None => TokenRefusal::Unknown,
        Some((Some(_), ..)) => TokenRefusal::Revoked,
        Some((None, expires_at, ..)) if expires_at <= Utc::now() => TokenRefusal::Expired,
        Some(_) => TokenRefusal::Exhausted,
    }))
}

/// Whether a token could be used now, without using it.
pub async fn check(
    conn: &mut sqlx::PgConnection,
    token_hash: &str,
) -> Result<Result<(), TokenRefusal>, StorageError> {
    let state: Option<TokenState> = sqlx::query_as(
        "SELECT revoked_at, expires_at, max_uses, use_count FROM enrollment_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match state {
        None => Err(TokenRefusal::Unknown),
        Some((Some(_), ..)) => Err(TokenRefusal::Revoked),
        Some((None, expires_at, ..)) if expires_at <= Utc::now() => Err(TokenRefusal::Expired),
        Some((None, _, Some(max), used)) if used >= max => Err(TokenRefusal::Exhausted),
        Some(_) => Ok(()),
    })
}
