#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every wire type survives encode -> decode unchanged, and the documented JSON
//! examples (docs/PROTOCOL.md) decode.

use chrono::{TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;
use wire_models::*;

fn id() -> AgentId {
    AgentId::parse("a1b2c3d4e5f6").unwrap()
}

fn at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(msg: &T) {
    let bytes = encode(msg).unwrap();
    let back: T = decode(&bytes).unwrap();
    assert_eq!(&back, msg);
}

#[test]
fn heartbeat_round_trips() {
    round_trip(&Heartbeat {
        v: PROTOCOL_VERSION,
        agent_id: id(),
        seq: 42,
        sent_at: at(),
        interval_secs: 10,
        hostname: Some("web-01".into()),
        agent_version: Some("1.2.3".into()),
    });
}

#[test]
fn event_round_trips() {
    let mut context = serde_json::Map::new();
    context.insert("unit".into(), json!("nginx.service"));
    round_trip(&Event {
        v: PROTOCOL_VERSION,
        event_id: Uuid::now_v7(),
        agent_id: id(),
        kind: EventKind::parse("service_down").unwrap(),
        severity: Severity::Critical,
        source: "systemd".into(),
        raw_error: "nginx.service: Main process exited, code=killed".into(),
        context,
        occurred_at: at(),
    });
}

#[test]
fn inventory_round_trips_and_keeps_unknown_fields() {
    let report: InventoryReport = decode(
        json!({
            "v": 1, "agent_id": "a1b2c3d4e5f6", "collected_at": "2026-11-26T12:00:00Z",
            "snapshot": {
                "hostname": "web-01",
                "os": {"name": "Debian GNU/Linux", "version": "12", "kernel": "6.1.0", "arch": "x86_64"},
                "services": [{"name": "nginx", "state": "running"}],
                "packages": [{"name": "openssl", "version": "3.0.15"}],
                "meta": {"env": "prod"},
                "gpu": {"model": "none"}
            }
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(report.snapshot.extra["gpu"], json!({"model": "none"}));
    round_trip(&report);
}

#[test]
fn inventory_hash_ignores_key_order_whitespace_and_envelope() {
    let a: InventoryReport = decode(
        br#"{"v":1,"agent_id":"a1b2c3d4e5f6","collected_at":"2026-11-26T12:00:00Z",
        "snapshot":{"hostname":"h","os":{"name":"Debian","version":"12"},"meta":{"b":1,"a":2}}}"#,
    )
    .unwrap();
    let b: InventoryReport = decode(
        br#"{ "snapshot" : { "meta":{"a":2,"b":1}, "os":{"version":"12","name":"Debian"},
        "hostname":"h" }, "collected_at":"2026-11-27T00:00:00Z", "agent_id":"a1b2c3d4e5f6", "v":1 }"#,
    )
    .unwrap();
    assert_eq!(a.snapshot_hash(), b.snapshot_hash());
    let mut c = a.clone();
    c.snapshot.meta.insert("a".into(), json!(3));
    assert_ne!(a.snapshot_hash(), c.snapshot_hash());
    assert_eq!(a.snapshot_hash().len(), 64);
}

#[test]
fn rpc_request_and_reply_round_trip() {
    let request = RpcRequest {
        v: PROTOCOL_VERSION,
        request_id: Uuid::new_v4(),
        command: Command::from_parts("restart_service", &json!({"service": "nginx"})).unwrap(),
        issued_at: at(),
        timeout_ms: 5000,
    };
    round_trip(&request);
    let wire: serde_json::Value = serde_json::from_slice(&encode(&request).unwrap()).unwrap();
    assert_eq!(wire["command"], "restart_service");
    assert_eq!(wire["params"], json!({"service": "nginx"}));

    round_trip(&RpcReply {
        v: PROTOCOL_VERSION,
        request_id: request.request_id,
        status: RpcStatus::Ok,
        output: Some("restarted nginx".into()),
        exit_code: Some(0),
        error: None,
        duration_ms: 12,
    });
    round_trip(&RpcReply {
        v: PROTOCOL_VERSION,
        request_id: request.request_id,
        status: RpcStatus::Error,
        output: None,
        exit_code: Some(5),
        error: Some(RpcError { code: "unknown_service".into(), message: "no such unit".into() }),
        duration_ms: 3,
    });
}

#[test]
fn backend_messages_round_trip() {
    round_trip(&IncidentCreated {
        v: PROTOCOL_VERSION,
        incident_id: 7,
        agent_id: id(),
        kind: EventKind::parse("oom").unwrap(),
        severity: Severity::Critical,
        is_critical: true,
        fingerprint: "ab".repeat(32),
        created_at: at(),
    });
    round_trip(&PresenceChanged {
        v: PROTOCOL_VERSION,
        agent_id: id(),
        state: PresenceState::Offline,
        changed_at: at(),
        last_seen_at: Some(at()),
        threshold_secs: 30,
        reason: "timeout".into(),
    });
    round_trip(&AnalyzeRequest {
        v: PROTOCOL_VERSION,
        incident_id: 7,
        force: true,
        requested_by: Some("ops@example.com".into()),
    });
    for outcome in [
        AnalyzeOutcome::Analyzed { analyzer: "rules".into(), model: None, cached: false },
        AnalyzeOutcome::Failed { reason: "upstream 500".into() },
        AnalyzeOutcome::NotFound,
    ] {
        round_trip(&AnalyzeReply { v: PROTOCOL_VERSION, incident_id: 7, outcome });
    }
}

#[test]
fn decode_errors_say_what_is_wrong() {
    let err = decode::<Heartbeat>(b"{not json").unwrap_err();
    assert_eq!(err.code(), "malformed_json");
    let err = decode::<Heartbeat>(
        br#"{"v":1,"agent_id":"a1b2c3d4e5f6","seq":"x","sent_at":"2026-11-26T12:00:00Z","interval_secs":10}"#,
    )
    .unwrap_err();
    assert_eq!(err.code(), "invalid_message");
    let err = decode::<Heartbeat>(br#"{"v":9,"whatever":true}"#).unwrap_err();
    assert_eq!(err.code(), "unsupported_version");
    let err = decode::<Heartbeat>(
        br#"{"v":1,"agent_id":"A1B2C3D4E5F6","seq":1,"sent_at":"2026-11-26T12:00:00Z","interval_secs":10}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("lowercase hex"), "{err}");
    let huge = vec![b' '; Heartbeat::MAX_BYTES + 1];
    assert_eq!(decode::<Heartbeat>(&huge).unwrap_err().code(), "too_large");
    let err = decode::<Heartbeat>(
        br#"{"v":1,"agent_id":"a1b2c3d4e5f6","seq":1,"sent_at":"2026-11-26T12:00:00Z","interval_secs":0}"#,
    )
    .unwrap_err();
    assert_eq!(err.code(), "invalid_message");
}

#[test]
fn event_must_match_its_subject() {
    let event: Event = decode(
        json!({"v":1,"event_id":Uuid::new_v4(),"agent_id":"a1b2c3d4e5f6","kind":"oom","severity":"critical",
               "source":"kernel","raw_error":"Out of memory","occurred_at":"2026-11-26T12:00:00Z"})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let other = AgentId::parse("0123456789ab").unwrap();
    assert_eq!(event.check_subject(&other, &event.kind).unwrap_err().code(), "agent_mismatch");
    let kind = EventKind::parse("disk_full").unwrap();
    assert_eq!(event.check_subject(&event.agent_id, &kind).unwrap_err().code(), "kind_mismatch");
    event.check_subject(&event.agent_id, &event.kind).unwrap();
}

#[test]
fn rpc_request_with_command_outside_the_allow_list_is_refused() {
    let raw = json!({"v":1,"request_id":Uuid::new_v4(),"command":"shell","params":{"cmd":"rm -rf /"},
                     "issued_at":"2026-11-26T12:00:00Z","timeout_ms":5000});
    let err = decode::<RpcRequest>(raw.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("allow-list"), "{err}");
}

#[test]
fn null_collections_are_accepted_as_empty() {
    let event: Event = decode(
        br#"{"v":1,"event_id":"0192f0c4-9c2a-7cc0-8000-000000000001","agent_id":"a1b2c3d4e5f6","kind":"oom",
            "severity":"critical","source":"kernel","raw_error":"x","context":null,"occurred_at":"2026-11-26T12:00:00Z"}"#,
    )
    .unwrap();
    assert!(event.context.is_empty());
    let report: InventoryReport = decode(
        br#"{"v":1,"agent_id":"a1b2c3d4e5f6","collected_at":"2026-11-26T12:00:00Z",
            "snapshot":{"hostname":"h","os":{"name":"Debian","version":"12"},"services":null,"packages":null,"meta":null}}"#,
    )
    .unwrap();
    assert!(report.snapshot.services.is_empty() && report.snapshot.meta.is_empty());
}

#[test]
fn nul_characters_are_refused_before_they_reach_the_database() {
    let base = json!({"v":1,"event_id":Uuid::new_v4(),"agent_id":"a1b2c3d4e5f6","kind":"oom","severity":"info",
                      "source":"kernel","raw_error":"ok","occurred_at":"2026-11-26T12:00:00Z"});
    for (field, value) in [
        ("raw_error", json!("bad\u{0}text")),
        ("source", json!("src\u{0}")),
        ("context", json!({"k": ["x", {"deep": "a\u{0}b"}]})),
        ("context", json!({"k\u{0}": 1})),
    ] {
        let mut msg = base.clone();
        msg[field] = value;
        let err = decode::<Event>(msg.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.code(), "invalid_message", "{field}");
    }
    decode::<Event>(base.to_string().as_bytes()).unwrap();
}
