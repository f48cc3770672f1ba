use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
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

/// How much one agent may put into the dead-letter stream, per window, so one hostile
/// host cannot fill it (or push everyone else's out) with copies of its garbage.
///
/// Within `bytes` per window a letter carries its payload (at most `max_payload` of
/// it; the rest is cut and the original size kept in a header). Past `bytes`, letters
/// carry headers only. Past `messages`, nothing more is parked for that agent in the
/// window: the message stays in its own stream until that stream's retention ends,
/// and the suppression is counted (`opspilot_dead_letters_suppressed_total`) and
/// logged once per agent and window.
pub struct DeadLetterBudget {
    bytes: u64,
    messages: u64,
    max_payload: usize,
    window: Duration,
    // Locked only to update one agent's counters; never held across an await.
    used: Mutex<HashMap<String, Usage>>,
}

struct Usage {
    since: Instant,
    bytes: u64,
    messages: u64,
    suppressed: u64,
}

/// What the budget allows for one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Park(Parked),
    /// Over the agent's message budget; `first` is true for the first one suppressed in
    /// this window (log it then).
    Suppress {
        first: bool,
    },
}

impl DeadLetterBudget {
    pub fn new(bytes: u64, messages: u64, max_payload: usize, window: Duration) -> Self {
        Self { bytes, messages, max_payload, window, used: Mutex::new(HashMap::new()) }
    }

    /// No limits (tests that count every letter).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX, u64::MAX, usize::MAX, Duration::from_secs(3600))
    }

    /// The largest payload copied into a letter.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Charges one letter of `size` payload bytes to `agent` (the subject's agent
    /// token, or a shared key for subjects without one).
    pub fn admit(&self, agent: &str, size: usize) -> Admission {
        let now = Instant::now();
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.len() > 100_000 {
            used.retain(|_, u| now.duration_since(u.since) < self.window);
        }
        let usage = used.entry(agent.to_owned()).or_insert(Usage {
            since: now,
            bytes: 0,
            messages: 0,
            suppressed: 0,
        });
        if now.duration_since(usage.since) >= self.window {
            *usage = Usage { since: now, bytes: 0, messages: 0, suppressed: 0 };
        }
        if usage.messages >= self.messages {
            usage.suppressed += 1;
            return Admission::Suppress { first: usage.suppressed == 1 };
        }
        usage.messages += 1;
        let copied = size.min(self.max_payload) as u64;
        if usage.bytes.saturating_add(copied) > self.bytes {
            return Admission::Park(Parked::HeadersOnly);
        }
        usage.bytes += copied;
        Admission::Park(Parked::Payload)
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

/// Parks a letter within `budget` (charged to `agent`): returns whether it was
/// parked. A suppressed letter is counted and, the first time in a window, logged.
pub async fn dead_letter_within(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    budget: &DeadLetterBudget,
    agent: &str,
    letter: DeadLetter<'_>,
) -> Result<bool, NatsError> {
    match budget.admit(agent, letter.payload.len()) {
        Admission::Park(parked) => {
            park(js, subjects, letter, parked, budget.max_payload).await?;
            Ok(true)
        }
        Admission::Suppress { first } => {
            metrics::counter!("opspilot_dead_letters_suppressed_total", "origin" => letter.origin.as_str(), "reason" => letter.reason.to_owned())
                .increment(1);
            if first {
                tracing::warn!(
                    agent,
                    origin = letter.origin.as_str(),
                    reason = letter.reason,
                    sequence = letter.stream_sequence,
                    "dead-letter budget of this agent used up; further messages stay only in their stream"
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
    crate::trace::inject_current(&mut headers);
    js.publish_with_headers(subjects.dead_letter(letter.origin), headers, payload)
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
    use super::*;

    #[test]
    fn the_budget_copies_then_omits_then_suppresses() {
        let budget = DeadLetterBudget::new(100, 4, 60, Duration::from_secs(3600));
        // 60 of 80 bytes copied (cut), then 40 more fits exactly...
        assert_eq!(budget.admit("a", 80), Admission::Park(Parked::Payload));
        assert_eq!(budget.admit("a", 40), Admission::Park(Parked::Payload));
        // ...then the bytes are used up: headers only.
        assert_eq!(budget.admit("a", 10), Admission::Park(Parked::HeadersOnly));
        assert_eq!(budget.admit("a", 10), Admission::Park(Parked::HeadersOnly));
        // The message budget: nothing more, the first suppression flagged.
        assert_eq!(budget.admit("a", 10), Admission::Suppress { first: true });
        assert_eq!(budget.admit("a", 10), Admission::Suppress { first: false });
        // Another agent has a budget of its own.
        assert_eq!(budget.admit("b", 10), Admission::Park(Parked::Payload));
    }

    #[test]
    fn the_budget_renews_every_window() {
        let budget = DeadLetterBudget::new(10, 1, 10, Duration::from_millis(20));
        assert_eq!(budget.admit("a", 5), Admission::Park(Parked::Payload));
        assert_eq!(budget.admit("a", 5), Admission::Suppress { first: true });
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(budget.admit("a", 5), Admission::Park(Parked::Payload));
    }

    #[test]
    fn header_values_are_single_line_and_bounded() {
        assert_eq!(header_safe("a\r\nb", 10), "a  b");
        assert_eq!(header_safe("ééé", 3), "é");
        assert_eq!(header_safe(&"x".repeat(2000), 1024).len(), 1024);
    }
}
