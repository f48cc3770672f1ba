//! What makes an incident: its fingerprint (what makes two events "the same
//! problem"), its de-duplication key, and the `agent_offline` incidents' own.
//!
//! `fingerprint = sha256(agent_id ␟ kind ␟ source ␟ normalise(raw_error))`, hex.
//!
//! `normalise` replaces the parts of an error message that change from one occurrence
//! to the next while the problem stays the same, in this order:
//! UUIDs -> `<uuid>`, ISO-8601 / syslog timestamps -> `<ts>`, IPv4 addresses (with an
//! optional port) -> `<ip>`, `0x` hex and hex runs of 8+ characters (container ids,
//! hashes) -> `<hex>`, numbers
//! (integers, decimals) -> `<n>`; then runs of whitespace collapse to one space and the
//! ends are trimmed. Case is kept: `Connection refused` and `connection refused` are the
//! same problem far less often than they are different programs.

use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

/// Every rule as one alternation, in priority order, so the text is scanned once.
/// Word boundaries are ASCII (`(?-u:\b)`): Unicode boundaries and capture groups made
/// the matcher the ingestor's hottest code.
const PATTERN: &str = concat!(
    r"(?i:(?-u:\b)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?-u:\b))",
    r"|(?-u:\b)[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?(?-u:\b)",
    r"|(?-u:\b)(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?-u:\b)",
    r"|(?-u:\b)[0-9]{4}-[0-9]{2}-[0-9]{2}(?-u:\b)",
    r"|(?-u:\b)[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?-u:\b)",
    r"|(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?::[0-9]{1,5})?(?-u:\b)",
    r"|(?-u:\b)0x[0-9a-fA-F]+(?-u:\b)",
    r"|(?-u:\b)[0-9a-fA-F]{8,}(?-u:\b)",
    r"|[0-9]+(?:\.[0-9]+)?",
    r"|\s+",
);

#[allow(clippy::expect_used)] // a constant pattern, exercised by every test below
static RULES: LazyLock<Regex> = LazyLock::new(|| Regex::new(PATTERN).expect("valid regex"));

/// Which rule a match came from, told by its shape (cheaper than capture groups).
fn token(m: &str) -> &'static str {
    let bytes = m.as_bytes();
    if bytes.first().is_some_and(u8::is_ascii_whitespace) {
        " "
    } else if bytes.len() == 36 && bytes.iter().filter(|&&b| b == b'-').count() == 4 {
        "<uuid>"
    } else if bytes.len() > 2 && bytes[0] == b'0' && (bytes[1] == b'x' || bytes[1] == b'X') {
        "<hex>"
    } else if bytes.iter().filter(|&&b| b == b'.').count() == 3
        && !bytes.contains(&b'-')
        && !bytes.contains(&b' ')
    {
        "<ip>"
    } else if bytes.contains(&b':')
        || bytes.contains(&b'-')
        || bytes.first().is_some_and(u8::is_ascii_alphabetic) && bytes.contains(&b' ')
    {
        "<ts>"
    } else if bytes.len() >= 8 && bytes.iter().all(u8::is_ascii_hexdigit) {
        "<hex>"
    } else {
        "<n>"
    }
}

/// The normalised error text (see the module documentation).
pub fn normalise(raw_error: &str) -> String {
    let mut out = String::with_capacity(raw_error.len());
    let mut last = 0;
    for m in RULES.find_iter(raw_error) {
        out.push_str(&raw_error[last..m.start()]);
        out.push_str(token(m.as_str()));
        last = m.end();
    }
    out.push_str(&raw_error[last..]);
    out.trim().to_owned()
}

/// The fingerprint of an event (lowercase hex SHA-256).
pub fn fingerprint(agent_id: &str, kind: &str, source: &str, raw_error: &str) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in [agent_id, kind, source, &normalise(raw_error)].into_iter().enumerate() {
        if i > 0 {
            hasher.update([0x1f]);
        }
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Incidents raised by the presence tracker carry this type.
pub const OFFLINE_INCIDENT_TYPE: &str = "agent_offline";
/// Who raises and resolves `agent_offline` incidents (their `source`).
pub const TRACKER: &str = "presence-tracker";

/// The key that keeps one `agent_offline` incident open per agent.
pub fn offline_dedup_key(agent_id: &wire_models::AgentId) -> String {
    format!("presence:{agent_id}")
}

/// The fingerprint of an agent's `agent_offline` incidents: SHA-256 (hex) of
/// `agent_offline ␟ {agent_id}`, the separator the event fingerprints use.
pub fn offline_fingerprint(agent_id: &wire_models::AgentId) -> String {
    wire_models::sha256_hex(format!("{OFFLINE_INCIDENT_TYPE}\u{1f}{agent_id}").as_bytes())
}

/// An event on its way to becoming (or counting toward) an incident, with its identity:
/// the fingerprint, and the key of "the same incident" (the fingerprint with
/// de-duplication on, the event id with it off).
pub fn new_event(event: wire_models::Event, dedup: bool) -> super::NewEvent {
    let fingerprint =
        fingerprint(event.agent_id.as_str(), event.kind.as_str(), &event.source, &event.raw_error);
    let dedup_key = if dedup { fingerprint.clone() } else { event.event_id.to_string() };
    super::NewEvent {
        event_id: event.event_id,
        agent_id: event.agent_id,
        kind: event.kind,
        severity: event.severity,
        source: event.source,
        raw_error: event.raw_error,
        context: serde_json::Value::Object(event.context),
        occurred_at: event.occurred_at,
        fingerprint,
        dedup_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_ids_and_times_are_normalised_away() {
        assert_eq!(
            normalise("nginx.service: Main process exited, code=killed, status=9/KILL (pid 12345)"),
            "nginx.service: Main process exited, code=killed, status=<n>/KILL (pid <n>)"
        );
        assert_eq!(
            normalise("Out of memory: Killed process 4242 (java) total-vm:8123456kB"),
            "Out of memory: Killed process <n> (java) total-vm:<n>kB"
        );
        assert_eq!(
            normalise("request 3f2b8c1e-9a4d-4c2b-8e7f-0123456789ab failed at 2026-11-26T12:00:01.123Z"),
            "request <uuid> failed at <ts>"
        );
        assert_eq!(normalise("Nov 26 12:00:01 host sshd: timeout"), "<ts> host sshd: timeout");
        assert_eq!(
            normalise("dial tcp 10.0.3.4:5432: connect: connection refused"),
            "dial tcp <ip>: connect: connection refused"
        );
        assert_eq!(normalise("segfault at 0x7ffd1234 in libc"), "segfault at <hex> in libc");
        assert_eq!(normalise("container deadbeef12345678 exited"), "container <hex> exited");
        assert_eq!(normalise("  many   spaces\n\tand lines "), "many spaces and lines");
    }

    #[test]
    fn short_words_that_look_like_hex_are_kept() {
        assert_eq!(normalise("build failed on cafe bed"), "build failed on cafe bed");
    }

    #[test]
    fn the_same_problem_has_the_same_fingerprint() {
        let a = fingerprint("a1b2c3d4e5f6", "service_down", "nginx", "exited (pid 1234) at 12:00:01");
        let b = fingerprint("a1b2c3d4e5f6", "service_down", "nginx", "exited (pid 9876) at 13:14:15");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn different_problems_have_different_fingerprints() {
        let base = fingerprint("a1b2c3d4e5f6", "service_down", "nginx", "exited");
        assert_ne!(base, fingerprint("0123456789ab", "service_down", "nginx", "exited"));
        assert_ne!(base, fingerprint("a1b2c3d4e5f6", "oom", "nginx", "exited"));
        assert_ne!(base, fingerprint("a1b2c3d4e5f6", "service_down", "apache", "exited"));
        assert_ne!(base, fingerprint("a1b2c3d4e5f6", "service_down", "nginx", "failed to start"));
        // The separator keeps fields from sliding into each other.
        assert_ne!(fingerprint("a", "bc", "d", "e"), fingerprint("a", "b", "cd", "e"));
    }
}
