//! The fast offline signal: Redis keyspace `expired` events for the agents' TTL keys.
//!
//! Redis sends them only when it actually deletes a key (which can lag by seconds or
//! minutes when many keys carry TTLs) and pub/sub drops them while the subscriber is
//! disconnected, so they only ever speed detection up; the deadline scan is what
//! bounds it.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use storage::redis::{RedisConfig, RedisError};
use wire_models::AgentId;

use crate::Keys;

/// A dedicated pub/sub connection subscribed to `__keyevent@{db}__:expired`, yielding
/// the agents whose TTL key (under this deployment's prefix) expired.
pub struct ExpiredKeys {
    sink: PubSubSink,
    stream: PubSubStream,
    keys: Keys,
    channel: String,
    timeout: Duration,
}

impl std::fmt::Debug for ExpiredKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiredKeys").field("channel", &self.channel).field("keys", &self.keys).finish()
    }
}

impl ExpiredKeys {
    /// Connects (its own connection: a subscribed connection can do nothing else) and
    /// subscribes, within the configured timeout.
    pub async fn subscribe(config: &RedisConfig) -> Result<Self, RedisError> {
        let client = config.client()?;
        let channel = expired_channel(client.get_connection_info().redis_settings().db());
        let timeout = config.timeout;
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::Timeout("opening the keyspace events connection"))??;
        let (mut sink, stream) = pubsub.split();
        tokio::time::timeout(timeout, sink.subscribe(&channel))
            .await
            .map_err(|_| RedisError::Timeout("subscribing to keyspace events"))??;
        Ok(Self { sink, stream, keys: Keys::for_config(config), channel, timeout })
    }

    /// The channel subscribed to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next agent whose TTL key expired; keys of other families or other prefixes
    /// (other deployments or tests sharing the database) are skipped. `None` once the
    /// connection is gone. Cancel-safe.
    pub async fn next(&mut self) -> Option<AgentId> {
        loop {
            let msg = self.stream.next().await?;
            let Ok(key) = msg.get_payload::<String>() else { continue };
            if let Some(id) = self.keys.agent_from_key(&key) {
                return Some(id);
            }
        }
    }

    /// Checks the connection is alive (a half-open TCP connection delivers nothing and
    /// reports no error).
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        let _: redis::Value = tokio::time::timeout(self.timeout, self.sink.ping())
            .await
            .map_err(|_| RedisError::Timeout("pinging the keyspace events connection"))??;
        Ok(())
    }
}

/// The channel Redis publishes expired-key events of database `db` on.
pub(crate) fn expired_channel(db: i64) -> String {
    format!("__keyevent@{db}__:expired")
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_names_the_database() {
        assert_eq!(super::expired_channel(0), "__keyevent@0__:expired");
        assert_eq!(super::expired_channel(5), "__keyevent@5__:expired");
    }
}
