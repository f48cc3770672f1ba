use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::HeaderMap;
use bytes::Bytes;
use tracing::Instrument;
use wire_models::{
    DlqOrigin, HEADER_DLQ_DETAIL, HEADER_DLQ_ORIGINAL_SIZE, HEADER_DLQ_PAYLOAD, HEADER_DLQ_REASON,
    HEADER_DLQ_SEQUENCE, HEADER_DLQ_SUBJECT, HEADER_MSG_ID, Subjects,
};

use crate::NatsError;

/// How much of a message is parked: the payload (cut to the budget's largest copy),
/// or only the headers that say what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    Payload,
    HeadersOnly,
}

/// How much one agent may put into the dead-letter stream per hour, so one hostile
/// host cannot fill it (or push everyone else's out) with copies of its garbage.
///
/// Within `bytes` an hour a letter carries its payload (at most `max_payload` of it;
/// the rest is cut and the original size kept in a header). Past `bytes`, letters
/// carry headers only. Past `messages`, nothing more is parked for that agent in the
/// hour: the message stays in its own stream until that stream's retention ends, and
/// the suppression is counted (`opspilot_dead_letters_suppressed_total`) and logged
/// once. The count itself is kept where every replica shares it (see
/// [`dead_letter_within`]); this holds the limits and remembers, for the rest of the
/// hour, which agents are over, so a flood costs no round trip per message.
pub struct DeadLetterBudget {
    bytes: u64,
    messages: u64,
    max_payload: usize,
    // Agent -> the hour it went over its letter budget. Locked only to read or write
    // one entry; never held across an await.
    exhausted: Mutex<HashMap<String, i64>>,
}

/// What an agent has used of its budget this hour, the letter being charged included,
/// as the shared counter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub letters: u64,
    pub bytes: u64,
}

/// What the budget allows for one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Park(Parked),
    /// Over the agent's letter budget; `first` is true for the first one over in the
    /// hour, across every replica (log it then).
    Suppress {
        first: bool,
    },
}

fn this_hour() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(3600)
}

impl DeadLetterBudget {
    pub fn new(bytes: u64, messages: u64, max_payload: usize) -> Self {
        Self { bytes, messages, max_payload, exhausted: Mutex::new(HashMap::new()) }
    }

    /// No limits (tests that count every letter).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX, u64::MAX, usize::MAX)
    }

    /// The largest payload copied into a letter.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// What a letter of `size` payload bytes is charged: the part that would be kept.
    pub fn charged_bytes(&self, size: usize) -> u64 {
        size.min(self.max_payload) as u64
    }

    /// The decision for a letter, given the totals the shared counter returned for it.
    pub fn decide(&self, usage: Usage) -> Admission {
        if usage.letters > self.messages {
            return Admission::Suppress { first: usage.letters == self.messages.saturating_add(1) };
        }
        if usage.bytes > self.bytes {
            return Admission::Park(Parked::HeadersOnly);
        }
        Admission::Park(Parked::Payload)
    }

    fn known_exhausted(&self, agent: &str) -> bool {
        let exhausted = self.exhausted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        exhausted.get(agent).is_some_and(|hour| *hour == this_hour())
    }

    fn mark_exhausted(&self, agent: &str) {
        let hour = this_hour();
        let mut exhausted = self.exhausted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if exhausted.len() > 100_000 {
            exhausted.retain(|_, h| *h == hour);
        }
        exhausted.insert(agent.to_owned(), hour);
    }
}

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

/// Parks a letter within `agent`'s budget and returns whether it was parked.
/// `charge` adds the letter (and the bytes it would keep) to the agent's count for the
/// hour where every replica shares it, and returns the new totals; when it fails the
/// letter is not parked and the error returned, so the caller leaves the message to
/// come back. A suppressed letter is counted, and the first over the budget logged.
pub async fn dead_letter_within<F, Fut, E>(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    budget: &DeadLetterBudget,
    agent: &str,
    letter: DeadLetter<'_>,
    charge: F,
) -> Result<bool, NatsError>
where
    F: FnOnce(u64) -> Fut,
    Fut: std::future::Future<Output = Result<Usage, E>>,
    E: std::fmt::Display,
{
    let admission = if budget.known_exhausted(agent) {
        Admission::Suppress { first: false }
    } else {
        let usage = charge(budget.charged_bytes(letter.payload.len()))
            .await
            .map_err(|e| NatsError::Publish(format!("charging the dead-letter budget: {e}")))?;
        budget.decide(usage)
    };
    match admission {
        Admission::Park(parked) => {
            park(js, subjects, letter, parked, budget.max_payload).await?;
            Ok(true)
        }
        Admission::Suppress { first } => {
            budget.mark_exhausted(agent);
            metrics::counter!("opspilot_dead_letters_suppressed_total", "origin" => letter.origin.as_str(), "reason" => letter.reason.to_owned())
                .increment(1);
            if first {
                tracing::warn!(
                    agent,
                    origin = letter.origin.as_str(),
                    reason = letter.reason,
                    sequence = letter.stream_sequence,
                    "dead-letter budget of this agent used up for the hour; further messages stay only in their stream"
                );
            }
            Ok(false)
        }
    }
}

/// Publishes the original subject, payload and the reason to the dead-letter stream
/// and waits for the stream's acknowledgement (no budget: the backend's own parking,
/// such as messages that reached their delivery limit).
pub async fn dead_letter(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    letter: DeadLetter<'_>,
) -> Result<(), NatsError> {
    park(js, subjects, letter, Parked::Payload, usize::MAX).await
}

async fn park(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    letter: DeadLetter<'_>,
    parked: Parked,
    max_payload: usize,
) -> Result<(), NatsError> {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, header_safe(letter.reason, 64));
    headers.insert(HEADER_DLQ_DETAIL, header_safe(letter.detail, 1024));
    headers.insert(HEADER_DLQ_SUBJECT, header_safe(letter.subject, 512));
    if let Some(seq) = letter.stream_sequence {
        headers.insert(HEADER_DLQ_SEQUENCE, seq.to_string());
        headers.insert(HEADER_MSG_ID, format!("dlq-{}-{seq}", letter.origin.as_str()));
    }
    let size = letter.payload.len();
    let payload = match parked {
        Parked::Payload if size <= max_payload => letter.payload,
        Parked::Payload => {
            headers.insert(HEADER_DLQ_PAYLOAD, "truncated");
            letter.payload.slice(..max_payload)
        }
        Parked::HeadersOnly => {
            headers.insert(HEADER_DLQ_PAYLOAD, "omitted");
            Bytes::new()
        }
    };
    if payload.len() != size {
        headers.insert(HEADER_DLQ_ORIGINAL_SIZE, size.to_string());
    }
    let subject = subjects.dead_letter(letter.origin);
    let span = crate::trace::send_span(crate::trace::Send::Publish, &subject, payload.len());
    async {
        crate::trace::inject_current(&mut headers);
        js.publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))?
            .await
            .map_err(|e| NatsError::Publish(e.to_string()))
    }
    .instrument(span)
    .await?;
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
    use super::*;

    #[test]
    fn the_budget_copies_then_omits_then_suppresses() {
        let budget = DeadLetterBudget::new(100, 4, 60);
        let usage = |letters, bytes| Usage { letters, bytes };
        assert_eq!(budget.charged_bytes(80), 60, "a payload is charged what would be kept");
        assert_eq!(budget.decide(usage(1, 60)), Admission::Park(Parked::Payload));
        assert_eq!(budget.decide(usage(2, 100)), Admission::Park(Parked::Payload));
        assert_eq!(budget.decide(usage(3, 110)), Admission::Park(Parked::HeadersOnly));
        assert_eq!(budget.decide(usage(4, 120)), Admission::Park(Parked::HeadersOnly));
        assert_eq!(budget.decide(usage(5, 130)), Admission::Suppress { first: true });
        assert_eq!(budget.decide(usage(6, 140)), Admission::Suppress { first: false });
    }

    #[test]
    fn an_agent_over_its_budget_is_remembered_for_the_hour() {
        let budget = DeadLetterBudget::new(100, 4, 60);
        assert!(!budget.known_exhausted("a"));
        budget.mark_exhausted("a");
        assert!(budget.known_exhausted("a"));
        assert!(!budget.known_exhausted("b"));
        // A mark from another hour is stale.
        budget.exhausted.lock().unwrap().insert("c".into(), this_hour() - 1);
        assert!(!budget.known_exhausted("c"));
    }

    #[test]
    fn header_values_are_single_line_and_bounded() {
        assert_eq!(header_safe("a\r\nb", 10), "a  b");
        assert_eq!(header_safe("ééé", 3), "é");
        assert_eq!(header_safe(&"x".repeat(2000), 1024).len(), 1024);
    }
}
