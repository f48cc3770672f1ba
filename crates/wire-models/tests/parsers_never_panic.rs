#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests: no parser panics, whatever the bytes, and mutations of valid
//! messages are either accepted (and then valid) or refused with an error.

use proptest::prelude::*;
use serde_json::Value;
use wire_models::*;

fn decode_all(bytes: &[u8]) {
    let _ = decode::<Heartbeat>(bytes);
    let _ = decode::<Event>(bytes);
    let _ = decode::<InventoryReport>(bytes);
    let _ = decode::<RpcRequest>(bytes);
    let _ = decode::<RpcReply>(bytes);
    let _ = decode::<IncidentCreated>(bytes);
    let _ = decode::<PresenceChanged>(bytes);
    let _ = decode::<AnalyzeRequest>(bytes);
    let _ = decode::<AnalyzeReply>(bytes);
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        let _ = canonical_json(&value);
        if let Some(obj) = value.as_object() {
            let name = obj.get("command").and_then(Value::as_str).unwrap_or("ping");
            let _ = Command::from_parts(name, obj.get("params").unwrap_or(&Value::Null));
        }
    }
}

const VALID: &[&str] = &[
    r#"{"v":1,"agent_id":"a1b2c3d4e5f6","seq":1,"sent_at":"2026-11-26T12:00:00Z","interval_secs":10,"hostname":"h"}"#,
    r#"{"v":1,"event_id":"0192f0c4-9c2a-7cc0-8000-000000000001","agent_id":"a1b2c3d4e5f6","kind":"oom","severity":"critical","source":"kernel","raw_error":"Out of memory: Killed process 1234","context":{"a":[1,2,{"b":null}]},"occurred_at":"2026-11-26T12:00:00Z"}"#,
    r#"{"v":1,"agent_id":"a1b2c3d4e5f6","collected_at":"2026-11-26T12:00:00Z","snapshot":{"hostname":"h","os":{"name":"Debian","version":"12"},"services":[{"name":"nginx","state":"running"}],"packages":[],"meta":{}}}"#,
    r#"{"v":1,"request_id":"0192f0c4-9c2a-7cc0-8000-000000000002","command":"tail_log","params":{"path":"/var/log/syslog","lines":10},"issued_at":"2026-11-26T12:00:00Z","timeout_ms":5000}"#,
    r#"{"v":1,"request_id":"0192f0c4-9c2a-7cc0-8000-000000000002","status":"error","error":{"code":"x","message":"y"},"duration_ms":1}"#,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0..VALID.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = VALID[which].as_bytes().to_vec();
        for (index, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = index.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        decode_all(&bytes);
    }

    #[test]
    fn truncated_messages_never_panic(which in 0..VALID.len(), cut in any::<prop::sample::Index>()) {
        let bytes = VALID[which].as_bytes();
        decode_all(&bytes[..cut.index(bytes.len())]);
    }

    #[test]
    fn agent_id_parse_accepts_exactly_twelve_lowercase_hex(s in "\\PC{0,20}") {
        let valid = s.len() == 12 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        prop_assert_eq!(AgentId::parse(&s).is_ok(), valid);
    }

    #[test]
    fn subject_parse_never_panics_and_round_trips(s in "[a-z0-9.*>_ -]{0,64}") {
        let subjects = Subjects::default();
        if let Ok(parsed) = subjects.parse(&s) {
            let rebuilt = match &parsed {
                AgentSubject::Event { agent_id, kind } => subjects.event(agent_id, kind),
                AgentSubject::Inventory { agent_id } => subjects.inventory(agent_id),
                AgentSubject::Rpc { agent_id } => subjects.rpc(agent_id),
            };
            prop_assert_eq!(rebuilt, s);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed(depth in 100usize..5000) {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let msg = format!(r#"{{"v":1,"event_id":"0192f0c4-9c2a-7cc0-8000-000000000001","agent_id":"a1b2c3d4e5f6","kind":"oom","severity":"info","source":"s","raw_error":"e","context":{{"x":{nested}}},"occurred_at":"2026-11-26T12:00:00Z"}}"#);
        decode_all(msg.as_bytes());
    }
}

#[test]
fn every_valid_sample_decodes() {
    decode::<Heartbeat>(VALID[0].as_bytes()).unwrap();
    decode::<Event>(VALID[1].as_bytes()).unwrap();
    decode::<InventoryReport>(VALID[2].as_bytes()).unwrap();
    decode::<RpcRequest>(VALID[3].as_bytes()).unwrap();
    decode::<RpcReply>(VALID[4].as_bytes()).unwrap();
}
