use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PROTOCOL_VERSION;

/// A message that can go on the wire: it knows its size limit and validates itself
/// beyond what its types already guarantee.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// Name used in errors and logs.
    const NAME: &'static str;
    /// Largest encoded size accepted, in bytes.
    const MAX_BYTES: usize;

    /// The protocol version the message claims.
    fn version(&self) -> u16;

    /// Checks that go beyond the types (lengths, ranges, consistency).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{message} is {size} bytes, over the limit of {max}")]
    TooLarge { message: &'static str, size: usize, max: usize },
    #[error("{message} is not valid JSON: {detail}")]
    Malformed { message: &'static str, detail: String },
    #[error("{message} has an invalid field: {detail}")]
    Invalid { message: &'static str, detail: String },
    #[error("{message} has protocol version {got}; this backend speaks 1 to {supported}")]
    UnsupportedVersion { message: &'static str, got: u16, supported: u16 },
    #[error("{message} agent_id {body} does not match the subject's agent id {subject}")]
    AgentMismatch { message: &'static str, subject: String, body: String },
    #[error("{message} kind {body} does not match the subject's kind {subject}")]
    KindMismatch { message: &'static str, subject: String, body: String },
}

impl DecodeError {
    /// A stable code for dead-letter headers and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed { .. } => "malformed_json",
            DecodeError::Invalid { .. } => "invalid_message",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::AgentMismatch { .. } => "agent_mismatch",
            DecodeError::KindMismatch { .. } => "kind_mismatch",
        }
    }
}

/// Encoding failed; only possible for values our types never hold (non-string map
/// keys), so callers treat it as a bug to report, not a condition to handle.
#[derive(Debug, thiserror::Error)]
#[error("encoding {message}: {source}")]
pub struct EncodeError {
    message: &'static str,
    source: serde_json::Error,
}

/// Decodes and validates a message. Never panics, whatever the bytes.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > T::MAX_BYTES {
        return Err(DecodeError::TooLarge { message: T::NAME, size: bytes.len(), max: T::MAX_BYTES });
    }
    let msg: T = match serde_json::from_slice(bytes) {
        Ok(msg) => msg,
        Err(err) => {
            // A newer agent may have changed the shape; say so instead of "bad field".
            if let Some(got) = peek_version(bytes).filter(|v| !(1..=PROTOCOL_VERSION).contains(v)) {
                return Err(DecodeError::UnsupportedVersion {
                    message: T::NAME,
                    got,
                    supported: PROTOCOL_VERSION,
                });
            }
            return Err(classify(T::NAME, &err));
        }
    };
    let got = msg.version();
    if !(1..=PROTOCOL_VERSION).contains(&got) {
        return Err(DecodeError::UnsupportedVersion { message: T::NAME, got, supported: PROTOCOL_VERSION });
    }
    msg.validate().map_err(|detail| DecodeError::Invalid { message: T::NAME, detail })?;
    Ok(msg)
}

/// Encodes a message as JSON.
pub fn encode<T: WireMessage>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(msg).map_err(|source| EncodeError { message: T::NAME, source })
}

fn classify(message: &'static str, err: &serde_json::Error) -> DecodeError {
    let detail = err.to_string();
    match err.classify() {
        serde_json::error::Category::Data => DecodeError::Invalid { message, detail },
        serde_json::error::Category::Io
        | serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof => DecodeError::Malformed { message, detail },
    }
}

fn peek_version(bytes: &[u8]) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        v: u16,
    }
    serde_json::from_slice::<Versioned>(bytes).ok().map(|p| p.v)
}
