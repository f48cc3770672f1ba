//! A corpus of hostile payloads built from a valid message: malformed and truncated
//! JSON, wrong types in every field, invalid UTF-8, lone surrogates, NaN and numbers out
//! of range, a deeply nested document, duplicate keys, NUL characters, unsupported versions and
//! payloads over the size limit. Each comes with the dead-letter reason the pipeline
//! must give it (`wire_models::DecodeError::code`). The services' hostile-input tests
//! publish them on every subject agents write to, around good traffic.

use serde_json::{Map, Value, json};

/// One hostile payload and the reasons it may be dead-lettered with (one, except where
/// serde_json's classification depends on the field: a number where an enum is
/// expected reads as a syntax error, elsewhere as a type error).
#[derive(Debug, Clone)]
pub struct Hostile {
    pub name: String,
    pub payload: Vec<u8>,
    pub reasons: &'static [&'static str],
}

impl Hostile {
    /// Whether `reason` is one this payload may get.
    pub fn accepts(&self, reason: &str) -> bool {
        self.reasons.contains(&reason)
    }
}

const MALFORMED: &[&str] = &["malformed_json"];
const INVALID: &[&str] = &["invalid_message"];
const WRONG_TYPE: &[&str] = &["invalid_message", "malformed_json"];

fn hostile(name: impl Into<String>, payload: impl Into<Vec<u8>>, reason: &'static str) -> Hostile {
    let reasons: &'static [&'static str] = match reason {
        "malformed_json" => MALFORMED,
        "invalid_message" => INVALID,
        "unsupported_version" => &["unsupported_version"],
        "too_large" => &["too_large"],
        _ => panic!("no reason list for {reason}"),
    };
    Hostile { name: name.into(), payload: payload.into(), reasons }
}

/// Corruptions of `valid` (a message's JSON object) for a message type whose size limit
/// is `max_bytes`.
pub fn corrupt(valid: &Value, max_bytes: usize) -> Vec<Hostile> {
    let Value::Object(fields) = valid else { panic!("the valid message must be a JSON object") };
    let text = valid.to_string();
    let bytes = text.as_bytes();
    let with = |key: &str, value: Value| {
        let mut map = fields.clone();
        map.insert(key.to_owned(), value);
        Value::Object(map).to_string()
    };
    // A string field to break inside (the agent id is in every agent message).
    let string_key = if fields.contains_key("agent_id") {
        "agent_id".to_owned()
    } else {
        fields.iter().find(|(_, v)| v.is_string()).map(|(k, _)| k.clone()).expect("a string field")
    };
    let placeholder = "\u{1}PLACEHOLDER\u{1}";
    let in_string = |raw: &[u8]| {
        let marked = with(&string_key, Value::String(placeholder.to_owned()));
        let escaped = Value::String(placeholder.to_owned()).to_string();
        let inner = &escaped[1..escaped.len() - 1];
        let at = marked.find(inner).expect("the placeholder is in the text");
        let mut out = marked.as_bytes()[..at].to_vec();
        out.extend_from_slice(raw);
        out.extend_from_slice(&marked.as_bytes()[at + inner.len()..]);
        out
    };

    let mut out = vec![
        hostile("not JSON", "{not json", "malformed_json"),
        hostile("empty", "", "malformed_json"),
        hostile("truncated to a third", &bytes[..bytes.len() / 3], "malformed_json"),
        hostile("truncated by one byte", &bytes[..bytes.len() - 1], "malformed_json"),
        hostile("byte order mark", [b"\xef\xbb\xbf".as_slice(), bytes].concat(), "malformed_json"),
        hostile("trailing garbage", format!("{text}}}"), "malformed_json"),
        hostile("two documents", format!("{text}{text}"), "malformed_json"),
        hostile("invalid UTF-8 in a string", in_string(b"\xff\xfe\xc3"), "malformed_json"),
        hostile("lone surrogate", in_string(br"\ud800"), "malformed_json"),
        hostile("NaN", text.replacen("\"v\":1", "\"v\":NaN", 1), "malformed_json"),
        hostile("number out of range", text.replacen("\"v\":1", "\"v\":1e400", 1), "malformed_json"),
        hostile("JSON null", "null", "invalid_message"),
        hostile("JSON array", "[]", "invalid_message"),
        hostile("JSON string", "\"hello\"", "invalid_message"),
        hostile("JSON number", "42", "invalid_message"),
        hostile("version as a string", with("v", json!("1")), "invalid_message"),
        hostile("version over u16", with("v", json!(65_536)), "invalid_message"),
        hostile("negative version", with("v", json!(-1)), "invalid_message"),
        hostile("future version", with("v", json!(2)), "unsupported_version"),
        hostile("version zero", with("v", json!(0)), "unsupported_version"),
        hostile("NUL in a string", with(&string_key, json!("a\u{0}b")), "invalid_message"),
        hostile(
            format!("duplicate {string_key:?}"),
            text.replacen('{', &format!("{{\"{string_key}\":\"0badc0ffee00\","), 1),
            "invalid_message",
        ),
    ];
    let mut missing = fields.clone();
    missing.remove(&string_key);
    out.push(hostile(
        format!("{string_key:?} missing"),
        Value::Object(missing).to_string(),
        "invalid_message",
    ));
    for (key, value) in fields {
        let wrong = match value {
            Value::String(_) => json!(12345),
            Value::Number(_) => json!("12"),
            Value::Object(_) => json!([1, 2]),
            Value::Array(_) => json!({"$ne": null}),
            Value::Bool(_) => json!("yes"),
            Value::Null => continue,
        };
        out.push(Hostile {
            name: format!("{key:?} of the wrong type"),
            payload: with(key, wrong).into_bytes(),
            reasons: WRONG_TYPE,
        });
    }
    // A document nested far past serde_json's recursion limit (128), within the size
    // limit. (Deep nesting inside a free-form field is message specific: see the
    // services' tests.)
    let depth = ((max_bytes.saturating_sub(64)) / 2).clamp(200, 5_000);
    out.push(hostile(
        format!("a document nested {depth} deep"),
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        "invalid_message",
    ));
    let mut padded: Map<String, Value> = fields.clone();
    padded.insert("zz_padding".into(), Value::String("x".repeat(max_bytes)));
    out.push(hostile("over the size limit", Value::Object(padded).to_string(), "too_large"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_models::{AgentId, Event, EventKind, Heartbeat, InventoryReport, WireMessage};

    fn check<T: WireMessage>(valid: &Value) {
        let bytes = valid.to_string();
        assert!(wire_models::decode::<T>(bytes.as_bytes()).is_ok(), "the seed must be valid");
        for h in corrupt(valid, T::MAX_BYTES) {
            let got = wire_models::decode::<T>(&h.payload).err().map(|e| e.code());
            assert!(got.is_some_and(|code| h.accepts(code)), "{}: {}: {got:?}", T::NAME, h.name);
        }
    }

    #[test]
    fn every_corruption_gets_the_reason_it_claims() {
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let now = "2026-11-26T12:00:00Z";
        check::<Heartbeat>(
            &json!({"v": 1, "agent_id": id, "seq": 7, "sent_at": now, "interval_secs": 10, "hostname": "h"}),
        );
        check::<Event>(&json!({"v": 1, "event_id": "0192f0c4-9c2a-7cc0-8000-000000000001", "agent_id": id,
            "kind": EventKind::parse("oom").unwrap(), "severity": "error", "source": "kernel", "raw_error": "x",
            "context": {"a": 1}, "occurred_at": now}));
        check::<InventoryReport>(
            &json!({"v": 1, "agent_id": id, "collected_at": now, "snapshot": {"hostname": "h",
            "os": {"name": "Debian", "version": "12"}, "services": [{"name": "nginx", "state": "running"}],
            "packages": [], "meta": {}}}),
        );
    }
}
