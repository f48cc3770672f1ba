use std::time::Duration;

use agent_sim::Fleet;
use bytes::Bytes;
use wire_models::{AgentId, EventKind, Severity};

use crate::helpers::*;

/// Each kind of bad input ends in the dead-letter stream with its reason; the good
/// messages around it are ingested.
#[tokio::test]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("bad", 2);
    enroll(&stack, &fleet).await;
    let (agent, other) = (&fleet.agents()[0], &fleet.agents()[1]);
    let subjects = &stack.topology.subjects;
    let oom = EventKind::parse("oom").unwrap();
    let good = |n: u32| agent.event(oom.clone(), Severity::Error, "kernel", &format!("good event {n}"));
    let root = subjects.root().to_string();

    let (running, shutdown) = start(&stack, &[]).await;
    bus.publish_event(&good(1)).await.unwrap();

    let mut cases: Vec<(String, Bytes, &str)> = Vec::new();
    cases.push((subjects.event(&agent.id, &oom), Bytes::from_static(b"{not json"), "malformed_json"));
    cases.push((
        subjects.event(&agent.id, &oom),
        Bytes::from(
            serde_json::json!({"v": 1, "event_id": "x", "agent_id": agent.id, "kind": "oom"}).to_string(),
        ),
        "invalid_message",
    ));
    let mut huge = serde_json::to_value(good(2)).unwrap();
    huge["raw_error"] = serde_json::Value::String("x".repeat(70 * 1024));
    cases.push((subjects.event(&agent.id, &oom), Bytes::from(huge.to_string()), "too_large"));
    cases.push((
        format!("{root}.NOTANAGENT01.events.oom"),
        Bytes::from(wire_models::encode(&good(3)).unwrap()),
        "invalid_agent_id",
    ));
    let stranger = AgentId::parse("0badc0ffee00").unwrap();
    let mut unknown = good(4);
    unknown.agent_id = stranger.clone();
    cases.push((
        subjects.event(&stranger, &oom),
        Bytes::from(wire_models::encode(&unknown).unwrap()),
        "unknown_agent",
    ));
    cases.push((
        subjects.event(&other.id, &oom),
        Bytes::from(wire_models::encode(&good(5)).unwrap()),
        "agent_mismatch",
    ));
    let disk = EventKind::parse("disk_full").unwrap();
    cases.push((
        subjects.event(&agent.id, &disk),
        Bytes::from(wire_models::encode(&good(6)).unwrap()),
        "kind_mismatch",
    ));
    let mut future = serde_json::to_value(good(7)).unwrap();
    future["v"] = serde_json::json!(99);
    cases.push((subjects.event(&agent.id, &oom), Bytes::from(future.to_string()), "unsupported_version"));
    cases.push((
        subjects.event(&agent.id, &oom),
        Bytes::from_static(&[0xff, 0xfe, 0x00, 0x80]),
        "malformed_json",
    ));

    for (i, (subject, payload, _)) in cases.iter().enumerate() {
        bus.publish_raw_event(subject.clone(), &format!("bad-{i}"), payload.clone()).await.unwrap();
    }
    bus.publish_event(&good(8)).await.unwrap();

    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    stop(running, shutdown).await;

    let letters = stack.dead_letters().await;
    assert_eq!(letters.len(), cases.len(), "{:?}", letters.iter().map(|l| (&l.0, &l.1)).collect::<Vec<_>>());
    for (subject, payload, reason) in &cases {
        // An oversize payload is parked cut to DLQ_MAX_PAYLOAD (64 KiB by default).
        let kept = payload.len().min(64 * 1024);
        assert!(
            letters.iter().any(|(s, r, p)| s == subject && r == reason && p[..] == payload[..kept]),
            "no dead letter with reason {reason} for {subject}"
        );
    }
    // The good events before and after were ingested.
    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, 2);
}

#[tokio::test]
async fn a_database_refusal_parks_only_the_offending_event() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("refuse", 2);
    enroll(&stack, &fleet).await;
    let (running, shutdown) = start(&stack, &[]).await;
    let kind = EventKind::parse("oom").unwrap();
    // A constraint the ingestor cannot know about, standing in for a permanent refusal.
    sqlx::query("ALTER TABLE incidents ADD CONSTRAINT no_forbidden CHECK (source <> 'forbidden')")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let events = vec![
        fleet.agents()[0].event(kind.clone(), Severity::Error, "kernel", "one"),
        fleet.agents()[0].event(kind.clone(), Severity::Error, "forbidden", "two"),
        fleet.agents()[1].event(kind.clone(), Severity::Error, "kernel", "three"),
    ];
    fleet.publish_prepared(&bus, events, 8).await;
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    stop(running, shutdown).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, 2);
    let letters = stack.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].1, "storage_rejected");
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("maxdeliver", 1);
    enroll(&stack, &fleet).await;
    // A consumer that never acks stands in for a replica that crashes on a message.
    let js = stack.jetstream().await;
    let (running, shutdown) = start(&stack, &["--max-deliver", "2", "--ack-wait", "1s"]).await;
    stop(running, shutdown).await;
    let stream = js.get_stream(&stack.topology.events_stream).await.unwrap();
    let consumer =
        stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>("event-ingestor").await.unwrap();
    let event =
        fleet.agents()[0].event(EventKind::parse("oom").unwrap(), Severity::Error, "kernel", "poison");
    bus.publish_event(&event).await.unwrap();
    // Fetch it twice without acking: both deliveries used up.
    for _ in 0..2 {
        let mut batch =
            consumer.fetch().max_messages(1).expires(Duration::from_secs(3)).messages().await.unwrap();
        use futures::StreamExt;
        let _ = batch.next().await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // A running ingestor picks up the advisory and parks the message.
    let (running, shutdown) = start(&stack, &["--max-deliver", "2", "--ack-wait", "1s"]).await;
    let letters = test_support::eventually(Duration::from_secs(15), "the max-deliveries dead letter", || {
        let stack = &stack;
        async move {
            let letters = stack.dead_letters().await;
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    stop(running, shutdown).await;
    assert_eq!(letters[0].1, "max_deliveries");
}
