//! Redis for OpsPilot: the pool (with timeouts), the key layout ([`Keys`]) and the
//! presence store ([`PresenceStore`]). Presence is the main tenant (a TTL key per agent,
//! a sorted set of deadlines and a state hash); rate limits and caches share the pool
//! under their own key families.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod config;
mod keys;
mod keyspace;
mod store;

pub use config::RedisConfig;
pub use deadpool_redis::Pool;
pub use keys::Keys;
pub use keyspace::ExpiredKeys;
pub use store::{AgentPresence, HeartbeatRecord, MAX_BATCH, PresenceStore, PresenceView, StateChange};

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("invalid redis configuration: {0}")]
    Config(String),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis did not answer within the timeout: {0}")]
    Timeout(&'static str),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl From<deadpool_redis::PoolError> for PresenceError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        PresenceError::Pool(err.to_string())
    }
}

/// Builds the pool and checks that Redis answers.
pub async fn connect(config: &RedisConfig) -> Result<Pool, PresenceError> {
    let pool = config.build_pool()?;
    ping(&pool).await?;
    tracing::info!(target = %config.display_target(), prefix = %config.prefix, "connected to redis");
    Ok(pool)
}

/// Readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), PresenceError> {
    let mut conn = pool.get().await?;
    let _: String = redis::cmd("PING").query_async(&mut *conn).await?;
    Ok(())
}

/// Whether Redis sends keyspace `expired` events (`notify-keyspace-events` contains
/// `E` or `K` together with `x` or `A`).
pub async fn keyspace_expired_events_enabled(pool: &Pool) -> Result<bool, PresenceError> {
    let mut conn = pool.get().await?;
    let reply: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut *conn).await?;
    let flags = reply.get(1).map(String::as_str).unwrap_or("");
    Ok(flags_send_expired_events(flags))
}

fn flags_send_expired_events(flags: &str) -> bool {
    let class = flags.contains('E') || flags.contains('K');
    let expired = flags.contains('x') || flags.contains('A');
    class && expired
}

/// A `/readyz` check for this pool.
pub fn ready_check(
    pool: Pool,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ 'static {
    move || {
        let pool = pool.clone();
        Box::pin(async move { ping(&pool).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::flags_send_expired_events;

    #[test]
    fn keyspace_flags() {
        assert!(flags_send_expired_events("Ex"));
        assert!(flags_send_expired_events("xE"));
        assert!(flags_send_expired_events("KEA"));
        assert!(!flags_send_expired_events(""));
        assert!(!flags_send_expired_events("E"));
        assert!(!flags_send_expired_events("x"));
    }
}
