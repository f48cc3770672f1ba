//! A corpus of hostile messages on every subject agents publish to (events and
//! inventory), with good traffic around it: every hostile message that JetStream takes
//! in is dead-lettered with its reason, exactly once; replays are de-duplicated; what
//! has no stream or is over the server's limit is refused at the door; the good
//! traffic is stored exactly; and the ingestor is still ready at the end.

use std::time::Duration;

use agent_sim::Fleet;
use bytes::Bytes;
use serde_json::{Value, json};
use test_support::hostile::{Hostile, corrupt};
use wire_models::{Event, EventKind, InventoryReport, Severity, WireMessage};

use crate::helpers::*;

/// A hostile message, where it goes, and the reasons it may be dead-lettered with.
struct Case {
    subject: String,
    hostile: Hostile,
}

fn case(subject: &str, name: &str, payload: Vec<u8>, reason: &'static str) -> Case {
    let reasons: &'static [&'static str] = match reason {
        "invalid_agent_id" => &["invalid_agent_id"],
        "invalid_kind" => &["invalid_kind"],
        "invalid_subject" => &["invalid_subject"],
        "unknown_agent" => &["unknown_agent"],
        "agent_mismatch" => &["agent_mismatch"],
        "kind_mismatch" => &["kind_mismatch"],
        "too_large" => &["too_large"],
        "malformed_json" => &["malformed_json"],
        "storage_rejected" => &["storage_rejected"],
        other => panic!("no reason list for {other}"),
    };
    Case { subject: subject.to_owned(), hostile: Hostile { name: name.to_owned(), payload, reasons } }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[tokio::test]
async fn a_hostile_corpus_on_every_agent_subject_is_dead_lettered_or_deduplicated() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("hostile", 3);
    enroll(&stack, &fleet).await;
    let (attacker, victim, good) = (&fleet.agents()[0], &fleet.agents()[1], &fleet.agents()[2]);
    let stranger = agent_sim::SimAgent::numbered("hostile-stranger", 0);
    let subjects = &stack.topology.subjects;
    let root = subjects.root().to_string();
    let oom = EventKind::parse("oom").unwrap();
    // Every letter whole and none withheld: this test checks the reasons (the budget
    // has tests of its own).
    let unlimited = [
        "--dlq-max-payload",
        "4MiB",
        "--dlq-agent-bytes-per-hour",
        "1GiB",
        "--dlq-agent-messages-per-hour",
        "1000000",
    ];
    let (running, shutdown) = start(&stack, &unlimited).await;

    let event = attacker.event(oom.clone(), Severity::Error, "kernel", "hostile corpus");
    let event_subject = subjects.event(&attacker.id, &oom);
    let event_json = serde_json::to_value(&event).unwrap();
    let inventory = attacker.inventory(false);
    let inventory_subject = subjects.inventory(&attacker.id);
    let inventory_json = serde_json::to_value(&inventory).unwrap();

    let mut cases: Vec<Case> = Vec::new();
    // Payload corruptions on both subjects.
    for h in corrupt(&event_json, Event::MAX_BYTES) {
        cases.push(Case { subject: event_subject.clone(), hostile: h });
    }
    for h in corrupt(&inventory_json, InventoryReport::MAX_BYTES) {
        cases.push(Case { subject: inventory_subject.clone(), hostile: h });
    }
    // Nesting deep inside the free-form fields, past serde_json's recursion limit.
    let deep = json!(format!("{}{}", "[".repeat(3000), "]".repeat(3000)));
    let deep_in = |mut doc: Value, pointer: &str| {
        let text = deep.as_str().unwrap().to_owned();
        *doc.pointer_mut(pointer).unwrap() = json!({"x": "DEEP"});
        doc.to_string().replace("\"DEEP\"", &text).into_bytes()
    };
    cases.push(case(
        &event_subject,
        "context nested 3000 deep",
        deep_in(event_json.clone(), "/context"),
        "malformed_json",
    ));
    cases.push(case(
        &inventory_subject,
        "meta nested 3000 deep",
        deep_in(inventory_json.clone(), "/snapshot/meta"),
        "malformed_json",
    ));
    // Subjects that lie: bad agent ids, bad kinds, a body from someone else.
    let valid_event = |e: &Event| wire_models::encode(e).unwrap();
    for bad_id in ["NOTANAGENT01", "A1B2C3D4E5F6", "a1b2c3d4e5f", "a1b2c3d4e5f6a"] {
        cases.push(case(
            &format!("{root}.{bad_id}.events.oom"),
            "bad agent id",
            valid_event(&event),
            "invalid_agent_id",
        ));
        cases.push(case(
            &format!("{root}.{bad_id}.inventory"),
            "bad agent id",
            json_bytes(&inventory_json),
            "invalid_agent_id",
        ));
    }
    for bad_kind in ["Bad-Kind!", "ÄÖÜ", &"k".repeat(65)] {
        let subject = format!("{root}.{}.events.{bad_kind}", attacker.id);
        cases.push(case(&subject, "bad kind", valid_event(&event), "invalid_kind"));
    }
    cases.push(case(
        &format!("{root}.{}.events.oom.extra", attacker.id),
        "extra token",
        valid_event(&event),
        "invalid_subject",
    ));
    let mut from_stranger = stranger.event(oom.clone(), Severity::Critical, "kernel", "not enrolled");
    cases.push(case(
        &subjects.event(&stranger.id, &oom),
        "agent not enrolled",
        valid_event(&from_stranger),
        "unknown_agent",
    ));
    cases.push(case(
        &subjects.inventory(&stranger.id),
        "agent not enrolled",
        wire_models::encode(&stranger.inventory(false)).unwrap(),
        "unknown_agent",
    ));
    // The attacker speaks for the victim (an enrolled agent) in the body.
    let spoofed = victim.event(oom.clone(), Severity::Critical, "kernel", "spoofed");
    cases.push(case(&event_subject, "body of another agent", valid_event(&spoofed), "agent_mismatch"));
    cases.push(case(
        &inventory_subject,
        "body of another agent",
        wire_models::encode(&victim.inventory(true)).unwrap(),
        "agent_mismatch",
    ));
    from_stranger.agent_id = victim.id.clone();
    cases.push(case(
        &subjects.event(&stranger.id, &oom),
        "a stranger speaking for an agent",
        valid_event(&from_stranger),
        "agent_mismatch",
    ));
    let disk = EventKind::parse("disk_full").unwrap();
    cases.push(case(
        &subjects.event(&attacker.id, &disk),
        "kind other than the subject's",
        valid_event(&event),
        "kind_mismatch",
    ));
    // Over the event limit but within the stream's: JetStream takes it, the ingestor
    // parks it. An inventory over its own limit likewise.
    let mut big = event_json.clone();
    big["raw_error"] = json!("x".repeat(900 * 1024));
    cases.push(case(&event_subject, "900 KiB event", json_bytes(&big), "too_large"));
    let mut big = inventory_json.clone();
    big["snapshot"]["meta"]["blob"] = json!("x".repeat(600 * 1024));
    cases.push(case(&inventory_subject, "600 KiB inventory", json_bytes(&big), "too_large"));
    // Valid as a message, refused by Postgres (a timestamp before 4713 BC): isolated and
    // parked without taking its batch down.
    let mut ancient =
        serde_json::to_value(attacker.event(oom.clone(), Severity::Error, "kernel", "ancient")).unwrap();
    ancient["occurred_at"] = json!("-005000-01-01T00:00:00Z");
    cases.push(case(
        &event_subject,
        "timestamp Postgres cannot store",
        json_bytes(&ancient),
        "storage_rejected",
    ));

    // Publish everything, a good event after each hostile message.
    let mut good_events = 0u64;
    bus.publish_inventory(&good.inventory(true)).await.unwrap();
    for (i, c) in cases.iter().enumerate() {
        let duplicate = bus
            .publish_raw_event(
                c.subject.clone(),
                &format!("hostile-{i}"),
                Bytes::from(c.hostile.payload.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("JetStream refused {} on {}: {e}", c.hostile.name, c.subject));
        assert!(!duplicate, "{}", c.hostile.name);
        bus.publish_event(&good.random_event(&mut rand::rng())).await.unwrap();
        good_events += 1;
    }
    bus.publish_inventory(&good.inventory(true)).await.unwrap();

    // Refused at the door: subjects no stream listens on, and a payload over the
    // server's maximum. Nothing of it may arrive anywhere.
    for subject in [
        format!("{root}.{}.events", attacker.id),
        format!("{root}.{}.inventory.extra", attacker.id),
        format!("{root}.{}", attacker.id),
    ] {
        let outcome = bus.publish_raw_event(subject.clone(), "door", Bytes::from(valid_event(&event))).await;
        assert!(outcome.is_err(), "{subject} has no stream, yet the publish was acknowledged");
    }
    let mut huge = event_json.clone();
    huge["raw_error"] = json!("x".repeat(2 * 1024 * 1024));
    assert!(
        bus.publish_raw_event(event_subject.clone(), "huge", Bytes::from(json_bytes(&huge))).await.is_err(),
        "a payload over the server's maximum must be refused"
    );

    // Replays: the same event again is a duplicate at the door (same Nats-Msg-Id), and
    // under a new Nats-Msg-Id (past JetStream's window) is absorbed by the ledger, even
    // with other content.
    let original = good.event(oom.clone(), Severity::Critical, "replay-source", "the original text");
    assert!(!bus.publish_event(&original).await.unwrap());
    good_events += 1;
    assert!(bus.publish_event(&original).await.unwrap(), "the same Nats-Msg-Id must be a duplicate");
    let replay_subject = subjects.event(&good.id, &oom);
    let payload = Bytes::from(valid_event(&original));
    assert!(!bus.publish_raw_event(replay_subject.clone(), "replay-1", payload).await.unwrap());
    let mut rewritten = original.clone();
    rewritten.raw_error = "rewritten by a replay".into();
    assert!(
        !bus.publish_raw_event(replay_subject, "replay-2", Bytes::from(valid_event(&rewritten)))
            .await
            .unwrap()
    );

    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(60)).await;
    wait_drained(&stack, &stack.topology.inventory_stream, "inventory-ingestor", Duration::from_secs(60))
        .await;

    // Nothing crashed.
    let ready = reqwest::get(format!("http://{}/readyz", running.admin_addr)).await.unwrap();
    assert_eq!(ready.status(), 200, "the ingestor is not ready after the corpus");

    // Every hostile message dead-lettered exactly once, with an allowed reason.
    let mut letters = stack.dead_letters().await;
    let mut unmatched = Vec::new();
    for c in &cases {
        let found = letters
            .iter()
            .position(|(s, r, p)| *s == c.subject && c.hostile.accepts(r) && p[..] == c.hostile.payload[..]);
        match found {
            Some(i) => {
                letters.swap_remove(i);
            }
            None => unmatched.push(format!("{} on {}", c.hostile.name, c.subject)),
        }
    }
    assert!(unmatched.is_empty(), "not dead-lettered as expected:\n{}", unmatched.join("\n"));
    assert!(
        letters.is_empty(),
        "dead letters nobody expected: {:?}",
        letters.iter().map(|l| (&l.0, &l.1)).collect::<Vec<_>>()
    );

    // The good traffic, exactly; the replays changed nothing.
    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, good_events as i64);
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, good_events as i64);
    let text: String = sqlx::query_scalar("SELECT raw_error FROM incidents WHERE event_id = $1")
        .bind(original.event_id)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(text, "the original text");
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM agents_inventory WHERE agent_id = $1")
        .bind(good.id.as_str())
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(snapshots, 2, "both good inventory snapshots (each a change) are stored");
    // Nothing from the attacker, the victim or the stranger got in.
    for id in [&attacker.id, &victim.id, &stranger.id] {
        let rows: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM incidents WHERE agent_id = $1) + \
                    (SELECT count(*) FROM agents_inventory WHERE agent_id = $1)",
        )
        .bind(id.as_str())
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        assert_eq!(rows, 0, "something from {id} was stored");
    }
    stop(running, shutdown).await;
}
