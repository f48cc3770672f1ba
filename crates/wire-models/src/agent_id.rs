use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An agent's identity: exactly 12 lowercase hexadecimal characters.
///
/// This is the only way an agent id reaches a subject, a Redis key or a query, so
/// anything that could change a subject's meaning (`.`, `*`, `>`, whitespace) or alias
/// another agent (upper case) is refused at construction.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

/// Why a string is not an [`AgentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    #[error("agent id must be exactly {expected} characters, got {actual}")]
    Length { expected: usize, actual: usize },
    #[error(
        "agent id may contain only lowercase hex characters [0-9a-f], found {found:?} at position {position}"
    )]
    Character { found: char, position: usize },
}

impl AgentId {
    /// Number of characters in every agent id.
    pub const LEN: usize = 12;

    /// Validates `s` as an agent id.
    pub fn parse(s: &str) -> Result<Self, AgentIdError> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), AgentIdError> {
        if let Some((position, found)) =
            s.chars().enumerate().find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            // Report a bad character before a bad length: "A1B2..." is more useful
            // as "upper case is not allowed" than as "wrong length".
            if s.chars().count() == Self::LEN || !found.is_ascii_alphanumeric() {
                return Err(AgentIdError::Character { found, position });
            }
        }
        let actual = s.chars().count();
        if actual != Self::LEN {
            return Err(AgentIdError::Length { expected: Self::LEN, actual });
        }
        Ok(())
    }

    /// A fresh random agent id (used by enrollment and by the simulator).
    pub fn random() -> Self {
        let bytes = uuid::Uuid::new_v4();
        Self(hex::encode(&bytes.as_bytes()[..Self::LEN / 2]))
    }

    /// A deterministic agent id derived from arbitrary bytes (e.g. a machine
    /// fingerprint), so the same input always maps to the same id.
    pub fn derive_from(input: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(input);
        Self(hex::encode(&digest[..Self::LEN / 2]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({})", self.0)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgentId {
    type Err = AgentIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for AgentId {
    type Error = AgentIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check(&s)?;
        Ok(Self(s))
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> Self {
        id.0
    }
}

impl Serialize for AgentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        AgentId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_twelve_lowercase_hex() {
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        assert_eq!(id.as_str(), "a1b2c3d4e5f6");
        assert_eq!(id.to_string(), "a1b2c3d4e5f6");
    }

    #[test]
    fn refuses_everything_that_could_bend_a_subject() {
        for bad in [
            "",
            "a",
            "a1b2c3d4e5f",
            "a1b2c3d4e5f60",
            "A1B2C3D4E5F6",
            "a1b2c3d4e5fG",
            "a1b2c3.4e5f6",
            "a.b",
            "*",
            ">",
            "a1b2c3d4e5f*",
            "a1b2c3d4e5f>",
            "a1b2c3 d4e5f",
            " a1b2c3d4e5f6",
            "a1b2c3d4e5f6 ",
            "a1b2c3d4e5f\n",
            "ａ1b2c3d4e5f6",
            "g1b2c3d4e5f6",
            "../../etc/pa",
        ] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(AgentId::parse("abc").unwrap_err(), AgentIdError::Length { expected: 12, actual: 3 });
        assert_eq!(
            AgentId::parse("A1b2c3d4e5f6").unwrap_err(),
            AgentIdError::Character { found: 'A', position: 0 }
        );
        assert_eq!(AgentId::parse("a.b").unwrap_err(), AgentIdError::Character { found: '.', position: 1 });
    }

    #[test]
    fn random_and_derived_ids_are_valid() {
        for _ in 0..100 {
            AgentId::parse(AgentId::random().as_str()).unwrap();
        }
        let a = AgentId::derive_from(b"machine-1");
        assert_eq!(a, AgentId::derive_from(b"machine-1"));
        assert_ne!(a, AgentId::derive_from(b"machine-2"));
    }

    #[test]
    fn serde_validates() {
        let id: AgentId = serde_json::from_str("\"a1b2c3d4e5f6\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"a1b2c3d4e5f6\"");
        assert!(serde_json::from_str::<AgentId>("\"a1b2c3d4e5f*\"").is_err());
        assert!(serde_json::from_str::<AgentId>("12").is_err());
    }
}
