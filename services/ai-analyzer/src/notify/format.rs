//! What a notification looks like on the wire: the signed webhook JSON and the Slack
//! incoming-webhook message.
//!
//! A webhook post carries `X-OpsPilot-Timestamp` (Unix seconds of this attempt) and
//! `X-OpsPilot-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`. A
//! receiver recomputes it over the raw body, compares in constant time, refuses
//! timestamps more than five minutes from its clock, and drops a repeated
//! `X-OpsPilot-Delivery` id: a captured post cannot be replayed later, and a retry of
//! one it already took is recognised.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use storage::notifications::{Claimed, DIGEST_SAMPLE};

pub const HEADER_SIGNATURE: &str = "x-opspilot-signature";
pub const HEADER_TIMESTAMP: &str = "x-opspilot-timestamp";
pub const HEADER_DELIVERY: &str = "x-opspilot-delivery";
pub const HEADER_EVENT: &str = "x-opspilot-event";

/// `v1=` and the hex HMAC-SHA256 of `{timestamp}.{body}` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body` at `timestamp` (constant time).
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], header: &str) -> bool {
    let Some(given) = header.strip_prefix("v1=").and_then(|h| hex::decode(h).ok()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The webhook's JSON body.
pub fn webhook_body(delivery: &Claimed) -> Vec<u8> {
    let body = json!({
        "id": delivery.id,
        "event": delivery.event,
        "summary": delivery.summary,
        "attempt": delivery.attempts,
        "created_at": delivery.created_at,
        "data": delivery.payload,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Escapes what Slack's mrkdwn treats as markup (`&`, `<`, `>`), so an agent's text
/// cannot forge links or mentions.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Slack allows 3000 characters in a section's text.
const SLACK_SECTION_MAX: usize = 3000;

fn clip(text: String) -> String {
    if text.chars().count() <= SLACK_SECTION_MAX {
        return text;
    }
    let mut clipped: String = text.chars().take(SLACK_SECTION_MAX - 1).collect();
    clipped.push('…');
    clipped
}

/// A Slack incoming-webhook message: `text` (the notification's fallback) and blocks.
pub fn slack_body(delivery: &Claimed) -> Value {
    let data = &delivery.payload;
    let headline = match delivery.event.as_str() {
        "incident" => ":rotating_light: New incident",
        "offline" => ":red_circle: Agent offline",
        "action_failed" => ":warning: Action failed",
        "digest" => ":bell: Digest",
        _ => ":information_source: OpsPilot",
    };
    let mut details = Vec::new();
    if delivery.event == "digest" {
        let sample = data.get("sample").and_then(Value::as_array).cloned().unwrap_or_default();
        for line in sample.iter().filter_map(Value::as_str).take(DIGEST_SAMPLE) {
            details.push(format!("• {}", slack_escape(line)));
        }
        let count = data.get("count").and_then(Value::as_u64).unwrap_or(0);
        let listed = u64::try_from(sample.len().min(DIGEST_SAMPLE)).unwrap_or(0);
        if count > listed {
            details.push(format!("… and {} more", count - listed));
        }
    } else {
        for (label, key) in [
            ("Agent", "agent_id"),
            ("Host", "hostname"),
            ("Kind", "kind"),
            ("Severity", "severity"),
            ("Incident", "incident_id"),
            ("Command", "command"),
            ("Outcome", "outcome"),
            ("Reason", "reason"),
        ] {
            match data.get(key) {
                Some(Value::String(s)) => details.push(format!("*{label}:* {}", slack_escape(s))),
                Some(Value::Number(n)) => details.push(format!("*{label}:* {n}")),
                _ => {}
            }
        }
    }
    let summary = slack_escape(&delivery.summary);
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": clip(format!("*{headline}*\n{summary}"))},
    })];
    if !details.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip(details.join("\n"))},
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("OpsPilot · notification {}", delivery.id)}],
    }));
    json!({"text": format!("{headline}: {summary}"), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(event: &str, payload: Value, summary: &str) -> Claimed {
        Claimed {
            id: 7,
            event: event.into(),
            summary: summary.into(),
            payload,
            attempts: 1,
            created_at: chrono::Utc::now(),
            digest_count: None,
        }
    }

    #[test]
    fn signatures_verify_and_bind_timestamp_and_body() {
        let sig = signature(b"0123456789abcdef", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        assert!(verify(b"0123456789abcdef", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(b"0123456789abcdef", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!verify(b"0123456789abcdef", 1_700_000_000, b"{\"a\":2}", &sig));
        assert!(!verify(b"another-secret-key", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(b"0123456789abcdef", 1_700_000_000, b"{\"a\":1}", "v1=zz"));
    }

    #[test]
    fn slack_text_is_escaped_and_shaped_as_slack_accepts() {
        let body = slack_body(&claimed(
            "incident",
            json!({"agent_id": "0123456789ab", "hostname": "<!channel> & co", "incident_id": 42}),
            "critical disk_full on <!here>",
        ));
        let text = body["text"].as_str().unwrap();
        assert!(text.contains("&lt;!here&gt;") && !text.contains("<!here>"));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
        assert!(blocks[1]["text"]["text"].as_str().unwrap().contains("&lt;!channel&gt; &amp; co"));
        assert_eq!(blocks.last().unwrap()["type"], "context");
    }

    #[test]
    fn a_digest_lists_its_sample_and_counts_the_rest() {
        let sample: Vec<String> = (0..DIGEST_SAMPLE).map(|i| format!("incident {i}")).collect();
        let body = slack_body(&claimed(
            "digest",
            json!({"count": 17, "sample": sample}),
            "17 more notifications in the last minute",
        ));
        let details = body["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(details.contains("• incident 9"));
        assert!(details.ends_with("… and 7 more"));
    }

    #[test]
    fn long_text_is_clipped_to_slacks_limit() {
        let body = slack_body(&claimed("incident", json!({"kind": "x".repeat(5000)}), "s"));
        assert!(body["blocks"][1]["text"]["text"].as_str().unwrap().chars().count() <= SLACK_SECTION_MAX);
    }
}
