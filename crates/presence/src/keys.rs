use storage::redis::RedisConfig;
use wire_models::AgentId;

/// The presence key layout. Every key starts with the configured prefix (the same
/// `REDIS_PREFIX` as the generic families of `storage::redis::Keys`).
///
/// | key                       | type       | holds                                                 |
/// |---------------------------|------------|-------------------------------------------------------|
/// | `{p}presence:agent:{id}`  | string+TTL | last heartbeat (ms); expires at the deadline          |
/// | `{p}presence:deadlines`   | sorted set | agent id scored by its deadline (ms)                  |
/// | `{p}presence:state`       | hash       | agent id -> `{state}:{since}:{last_seen}:{threshold}` |
/// | `{p}presence:epoch`       | string     | random token; gone = Redis lost the presence data     |
///
/// Presence, in detail:
/// - An agent's *deadline* is its last heartbeat plus its own threshold (its interval
///   times the missed-heartbeat count, or a fixed timeout). Scoring the sorted set by
///   deadline rather than by last heartbeat makes the offline scan one
///   `ZRANGEBYSCORE deadlines -inf now`, whatever each agent's interval.
/// - The TTL key expires at the deadline; its `expired` keyspace event is the fast
///   offline signal. The sorted set is the reliable one.
/// - The state hash is what the API shows: `state` is `online` or `offline` as
///   Postgres last decided, or `unknown` (heard from, nothing decided yet); `since`,
///   `last_seen` and `threshold` are milliseconds (Unix time, duration).
/// - An offline agent that stays silent has no TTL key and no deadline; its state
///   field stays, so the API can say "offline since".
/// - The presence scripts touch several keys at once: one Redis, not a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The presence keys under the prefix the Redis settings name.
    pub fn for_config(config: &RedisConfig) -> Self {
        Self::new(&config.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-agent TTL key; its expiry is the fast offline signal.
    pub fn agent(&self, id: &AgentId) -> String {
        format!("{}presence:agent:{id}", self.prefix)
    }

    /// The prefix of [`Keys::agent`] keys, to recognise them in keyspace events.
    pub fn agent_key_prefix(&self) -> String {
        format!("{}presence:agent:", self.prefix)
    }

    /// Parses an agent id back out of an [`Keys::agent`] key.
    pub fn agent_from_key(&self, key: &str) -> Option<AgentId> {
        key.strip_prefix(&self.agent_key_prefix()).and_then(|id| AgentId::parse(id).ok())
    }

    /// The sorted set of deadlines (ms) the offline scan ranges over.
    pub fn deadlines(&self) -> String {
        format!("{}presence:deadlines", self.prefix)
    }

    pub fn state(&self) -> String {
        format!("{}presence:state", self.prefix)
    }

    /// The token whose disappearance says Redis lost the presence data.
    pub fn epoch(&self) -> String {
        format!("{}presence:epoch", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_keys_round_trip() {
        let keys = Keys::new("t1:");
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let key = keys.agent(&id);
        assert_eq!(key, "t1:presence:agent:a1b2c3d4e5f6");
        assert_eq!(keys.agent_from_key(&key), Some(id));
        assert_eq!(keys.agent_from_key("t2:presence:agent:a1b2c3d4e5f6"), None);
        assert_eq!(keys.agent_from_key("t1:presence:agent:nothex"), None);
    }
}
