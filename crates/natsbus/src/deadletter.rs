use async_nats::HeaderMap;
use bytes::Bytes;
use wire_models::{
    DlqOrigin, HEADER_DLQ_DETAIL, HEADER_DLQ_REASON, HEADER_DLQ_SEQUENCE, HEADER_DLQ_SUBJECT, HEADER_MSG_ID,
    Subjects,
};

use crate::NatsError;

/// A message to park, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub origin: DlqOrigin,
    pub subject: &'a str,
    pub payload: Bytes,
    /// The message's sequence in its original stream, when it came from one; it makes
    /// the dead-letter publish idempotent across redeliveries.
    pub stream_sequence: Option<u64>,
    /// A stable code (`malformed_json`, `unknown_agent`, ...).
    pub reason: &'a str,
    pub detail: &'a str,
}

/// Publishes the original subject, payload and the reason to the dead-letter stream
/// and waits for the stream's acknowledgement.
pub async fn dead_letter(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    letter: DeadLetter<'_>,
) -> Result<(), NatsError> {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, header_safe(letter.reason, 64));
    headers.insert(HEADER_DLQ_DETAIL, header_safe(letter.detail, 1024));
    headers.insert(HEADER_DLQ_SUBJECT, header_safe(letter.subject, 512));
    if let Some(seq) = letter.stream_sequence {
        headers.insert(HEADER_DLQ_SEQUENCE, seq.to_string());
        headers.insert(HEADER_MSG_ID, format!("dlq-{}-{seq}", letter.origin.as_str()));
    }
    crate::trace::inject_current(&mut headers);
    js.publish_with_headers(subjects.dead_letter(letter.origin), headers, letter.payload)
        .await
        .map_err(|e| NatsError::Publish(e.to_string()))?
        .await
        .map_err(|e| NatsError::Publish(e.to_string()))?;
    metrics::counter!("opspilot_dead_lettered_total", "origin" => letter.origin.as_str(), "reason" => letter.reason.to_owned())
        .increment(1);
    Ok(())
}

/// Header values cannot hold CR/LF (they would end the header block) and should stay
/// short; hostile input ends up here, so it is cleaned rather than trusted.
fn header_safe(value: &str, max: usize) -> String {
    let mut out: String = value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::header_safe;

    #[test]
    fn header_values_are_single_line_and_bounded() {
        assert_eq!(header_safe("a\r\nb", 10), "a  b");
        assert_eq!(header_safe("ééé", 3), "é");
        assert_eq!(header_safe(&"x".repeat(2000), 1024).len(), 1024);
    }
}
