use wire_models::AgentId;

/// The Redis key layout. Every key starts with the configured prefix.
///
/// | key                              | type       | holds                                     |
/// |----------------------------------|------------|-------------------------------------------|
/// | `{p}presence:agent:{id}`         | string+TTL | last heartbeat (ms); expires = offline    |
/// | `{p}presence:last_seen`          | sorted set | agent id scored by last heartbeat (ms)    |
/// | `{p}presence:state`              | hash       | agent id -> `online:{since_ms}` / `offline:{since_ms}` |
/// | `{p}rl:{scope}:{subject}`        | string+TTL | rate-limit window counter                 |
/// | `{p}cache:{name}`                | string+TTL | cached API reads and AI analyses          |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
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

    pub fn last_seen(&self) -> String {
        format!("{}presence:last_seen", self.prefix)
    }

    pub fn state(&self) -> String {
        format!("{}presence:state", self.prefix)
    }

    pub fn rate_limit(&self, scope: &str, subject: &str) -> String {
        format!("{}rl:{scope}:{subject}", self.prefix)
    }

    pub fn cache(&self, name: &str) -> String {
        format!("{}cache:{name}", self.prefix)
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
