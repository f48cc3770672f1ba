//! Presence for OpsPilot: the Redis key layout of presence ([`Keys`]), the store that
//! decides who is live ([`PresenceStore`]) and the keyspace `expired` events that are
//! the fast offline signal ([`ExpiredKeys`]). The pool, its error and the other key
//! families (rate limits, caches) are `storage::redis`.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod keys;
mod keyspace;
mod store;

pub use keys::Keys;
pub use keyspace::ExpiredKeys;
pub use store::{AgentPresence, HeartbeatRecord, MAX_BATCH, PresenceStore, PresenceView, StateChange};

use storage::redis::{Pool, RedisError};

/// Whether Redis sends keyspace `expired` events (`notify-keyspace-events` contains
/// `E` or `K` together with `x` or `A`).
pub async fn keyspace_expired_events_enabled(pool: &Pool) -> Result<bool, RedisError> {
    let mut conn = pool.get().await?;
    let reply: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut conn).await?;
    let flags = reply.get(1).map(String::as_str).unwrap_or("");
    Ok(flags_send_expired_events(flags))
}

fn flags_send_expired_events(flags: &str) -> bool {
    let class = flags.contains('E') || flags.contains('K');
    let expired = flags.contains('x') || flags.contains('A');
    class && expired
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
