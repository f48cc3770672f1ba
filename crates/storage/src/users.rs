//! Operators and their roles. Passwords arrive here already hashed (argon2id).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::StorageError;

#[derive(Clone, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Access tokens name the version they were issued at; any other is refused.
    pub token_version: i32,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is as good as the password to anyone who can run a dictionary.
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"[REDACTED]")
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("token_version", &self.token_version)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, email, password_hash, role, disabled, created_at, last_login_at, token_version";

/// Creates a user; a duplicate email (case-insensitive) is a [`StorageError::Conflict`].
pub async fn create(
    pool: &PgPool,
    email: &str,
    password_hash: &str,
    role: &str,
) -> Result<User, StorageError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, email, password_hash, role) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(email)
    .bind(password_hash)
    .bind(role)
    .fetch_one(pool)
    .await
    .map_err(|err| crate::error::unique_to_conflict(err, "a user with this email already exists"))
}

pub async fn by_email(pool: &PgPool, email: &str) -> Result<Option<User>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE lower(email) = lower($1)"
    )))
    .bind(email)
    .fetch_optional(pool)
    .await?)
}

pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<User>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM users WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// Users ordered by email, `limit` at most.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<User>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users ORDER BY lower(email) LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn count(pool: &PgPool) -> Result<i64, StorageError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(pool).await?)
}

pub async fn touch_login(pool: &PgPool, id: Uuid) -> Result<(), StorageError> {
    sqlx::query("UPDATE users SET last_login_at = now() WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Changes a user's role, disabled flag and/or password; `None` leaves a field as it
/// is. Any actual change moves the token version on, so tokens issued before it stop
/// working at once.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    role: Option<&str>,
    disabled: Option<bool>,
    password_hash: Option<&str>,
) -> Result<Option<User>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET role = COALESCE($2, role), disabled = COALESCE($3, disabled),
                          password_hash = COALESCE($4, password_hash),
                          token_version = token_version
                              + CASE WHEN ($2::text IS NOT NULL AND $2 <> role)
                                       OR ($3::bool IS NOT NULL AND $3 <> disabled)
                                       OR $4::text IS NOT NULL
                                     THEN 1 ELSE 0 END
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(role)
    .bind(disabled)
    .bind(password_hash)
    .fetch_optional(pool)
    .await?)
}
