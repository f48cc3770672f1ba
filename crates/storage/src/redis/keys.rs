/// The generic Redis key families. Every key starts with the configured prefix, so
/// several deployments (or tests) can share one Redis; presence's own keys (under
/// `{p}presence:`) are laid out by `presence::Keys`.
///
/// | key                       | type       | holds                                   |
/// |---------------------------|------------|-----------------------------------------|
/// | `{p}rl:{scope}:{subject}` | string+TTL | rate-limit window counter               |
/// | `{p}cache:{name}`         | string+TTL | cached API reads and AI analyses        |
/// | `{p}nonce:enroll:{nonce}` | string+TTL | an unused enrollment challenge          |
/// | `{p}ticket:stream:{hash}` | string+TTL | an unused live-stream ticket (its user) |
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

    pub fn rate_limit(&self, scope: &str, subject: &str) -> String {
        format!("{}rl:{scope}:{subject}", self.prefix)
    }

    pub fn cache(&self, name: &str) -> String {
        format!("{}cache:{name}", self.prefix)
    }

    /// An enrollment challenge, deleted when used (each nonce proves once).
    pub fn enroll_nonce(&self, nonce: &str) -> String {
        format!("{}nonce:enroll:{nonce}", self.prefix)
    }

    /// A live-stream ticket, by the SHA-256 of the ticket (the key never holds it),
    /// deleted when used.
    pub fn stream_ticket(&self, ticket_hash: &str) -> String {
        format!("{}ticket:stream:{ticket_hash}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_sits_under_the_prefix() {
        let keys = Keys::new("t1:");
        assert_eq!(keys.rate_limit("login", "10.0.0.1"), "t1:rl:login:10.0.0.1");
        assert_eq!(keys.cache("incidents:p1"), "t1:cache:incidents:p1");
        assert_eq!(keys.enroll_nonce("abc"), "t1:nonce:enroll:abc");
        assert_eq!(keys.stream_ticket("ff"), "t1:ticket:stream:ff");
    }
}
