//! The stores OpsPilot shares: Postgres (the connection pool with timeouts, the embedded
//! migrations and the repositories every service uses) and Redis ([`redis`]: the pool,
//! its error and the generic key families).

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod agents;
pub mod analysis;
pub mod audit;
mod config;
pub mod conflicts;
pub mod credentials;
pub mod dead_letters;
mod error;
pub mod fleet_actions;
pub mod incidents;
pub mod inventory;
pub mod ledger;
pub mod notifications;
pub mod presence;
pub mod redis;
pub mod retention;
pub mod tokens;
pub mod users;

pub use config::{DbConfig, SslMode};
pub use error::{StorageError, is_transient_sqlx};

use std::time::Duration;

pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema, embedded in every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool and checks that the database answers.
#[tracing::instrument(skip_all, fields(host = %config.display_target()))]
pub async fn connect(config: &DbConfig) -> Result<PgPool, StorageError> {
    let options = config.connect_options()?;
    connect_with(options, config.max_connections, config.acquire_timeout).await
}

/// A pooled connection idle at least this long is pinged before reuse.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Opens a pool from explicit options (tests build their own).
pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, StorageError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // Pinging before every acquire doubles the round trips of a busy pool. A connection
        // in steady use has just proven itself; one that sat idle (the server may have
        // restarted meanwhile) is still checked before it is handed out.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(StorageError::Connect)?;
    let version: String =
        sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await.map_err(StorageError::Connect)?;
    tracing::info!(server_version = %version, max_connections, "connected to postgres");
    Ok(pool)
}

/// Applies pending migrations. Safe from several replicas at once: the migrator holds a
/// Postgres advisory lock while it runs, so the others wait and then find nothing to do.
pub async fn migrate(pool: &PgPool) -> Result<(), StorageError> {
    MIGRATOR.run(pool).await.map_err(StorageError::Migrate)?;
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    tracing::info!(applied, "database schema is up to date");
    Ok(())
}

/// Readiness probe: the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), StorageError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Refuses to run against a schema older than this binary expects (run
/// `api-gateway migrate` first), so a service never half-works on a stale database.
pub async fn check_schema(pool: &PgPool) -> Result<(), StorageError> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .or_else(|err| match &err {
            // 42P01 undefined_table: nothing was ever migrated.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
            _ => Err(err),
        })?;
    match applied {
        Some(version) if version >= expected => Ok(()),
        found => Err(StorageError::Config(format!(
            "database schema is at version {} but this binary needs {expected}; run `api-gateway migrate`",
            found.map_or_else(|| "none".to_owned(), |v| v.to_string())
        ))),
    }
}

/// A `/readyz` check for this pool.
pub fn ready_check(pool: PgPool) -> impl Fn() -> service_kit::admin::CheckFuture + Send + Sync + 'static {
    service_kit::admin::ping_check(pool, |pool| async move { ping(&pool).await })
}

/// Creates the configured database when it does not exist yet (first start of a
/// fresh deployment). Returns whether it was created.
pub async fn ensure_database(config: &DbConfig) -> Result<bool, StorageError> {
    use sqlx::Connection as _;

    let options = config.connect_options()?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    if name.contains('"') || name.contains('\0') || name.is_empty() || name.len() > 63 {
        return Err(StorageError::Config(format!("DB_NAME: {name:?} is not a usable database name")));
    }
    let mut conn = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(StorageError::Connect)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if exists {
        return Ok(false);
    }
    // Identifiers cannot be bound as parameters; the name was checked above and is quoted.
    let created =
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut conn).await;
    match created {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(true)
        }
        // 42P04 duplicate_database: another replica created it first.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(false),
        Err(err) => Err(err.into()),
    }
}
