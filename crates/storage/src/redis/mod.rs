//! Redis for OpsPilot: the pool every service shares (with timeouts), its error, and the
//! generic key families (rate limits, caches, single-use nonces). Presence keeps its own
//! key layout and store in the `presence` crate; this is the plumbing under both.

mod config;
mod keys;
mod pool;

pub use config::RedisConfig;
pub use keys::Keys;
pub use pool::{Connection, Pool};

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid redis configuration: {0}")]
    Config(String),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis did not answer within the timeout: {0}")]
    Timeout(&'static str),
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
}

impl From<deadpool::managed::PoolError<::redis::RedisError>> for RedisError {
    fn from(err: deadpool::managed::PoolError<::redis::RedisError>) -> Self {
        RedisError::Pool(err.to_string())
    }
}

/// Builds the pool and checks that Redis answers.
pub async fn connect(config: &RedisConfig) -> Result<Pool, RedisError> {
    let pool = config.build_pool()?;
    ping(&pool).await?;
    tracing::info!(target = %config.display_target(), prefix = %config.prefix, "connected to redis");
    Ok(pool)
}

/// Readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), RedisError> {
    let mut conn = pool.get().await?;
    let _: String = ::redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

/// A `/readyz` check for this pool.
pub fn ready_check(pool: Pool) -> impl Fn() -> service_kit::admin::CheckFuture + Send + Sync + 'static {
    service_kit::admin::ping_check(pool, |pool| async move { ping(&pool).await })
}
