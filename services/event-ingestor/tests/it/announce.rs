//! Incident-created messages survive a crash or a failed publish between the commit and
//! the announcement: the events stay unacknowledged until their incidents are announced.

use std::time::Duration;

use agent_sim::Fleet;
use async_nats::jetstream::consumer::pull;
use wire_models::{Event, EventKind, Severity};

use crate::helpers::*;

fn kind(s: &str) -> EventKind {
    EventKind::parse(s).unwrap()
}

/// Stores an event's incident the way a batch that crashed after its commit leaves it.
async fn stored_but_unannounced(stack: &test_support::Stack, event: &Event) -> i64 {
    let outcome = storage::incidents::ingest_events(
        &stack.db.pool,
        &[storage::incidents::NewEvent {
            event_id: event.event_id,
            agent_id: event.agent_id.clone(),
            kind: event.kind.clone(),
            severity: event.severity,
            source: event.source.clone(),
            raw_error: event.raw_error.clone(),
            context: serde_json::Value::Object(event.context.clone()),
            occurred_at: event.occurred_at,
            fingerprint: event.event_id.to_string(),
            dedup_key: event.event_id.to_string(),
        }],
    )
    .await
    .unwrap();
    outcome.created[0].id
}

#[tokio::test]
async fn incidents_committed_before_a_crash_are_announced_when_their_events_come_back() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("announce", 1);
    enroll(&stack, &fleet).await;
    let agent = &fleet.agents()[0];

    // Two events a crashed replica committed but neither announced nor acknowledged;
    // one of their incidents has been analyzed since, so it needs no announcement.
    let lost = agent.event(kind("oom"), Severity::Critical, "kernel", "Out of memory: killed process 4242");
    let seen = agent.event(kind("disk_full"), Severity::Critical, "/var", "No space left on device");
    let lost_id = stored_but_unannounced(&stack, &lost).await;
    let seen_id = stored_but_unannounced(&stack, &seen).await;
    sqlx::query("UPDATE incidents SET status = 'analyzed' WHERE id = $1")
        .bind(seen_id)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    // JetStream redelivers them, with a new event in the same batch.
    let fresh = agent.event(kind("service_down"), Severity::Critical, "nginx", "exited (status 1)");
    for event in [&lost, &seen, &fresh] {
        bus.publish_event(event).await.unwrap();
    }

    let (running, shutdown) = start(&stack, &[]).await;
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    stop(running, shutdown).await;

    let fresh_id: i64 = sqlx::query_scalar("SELECT id FROM incidents WHERE event_id = $1")
        .bind(fresh.event_id)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    let mut expected = vec![lost_id, fresh_id];
    expected.sort_unstable();
    assert_eq!(
        announced(&stack).await,
        expected,
        "the lost announcement is made, once; the analyzed one is not"
    );
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, 3);
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 3);
}

#[tokio::test]
async fn a_failed_announcement_holds_the_events_back_until_it_succeeds() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("announce-fail", 1);
    enroll(&stack, &fleet).await;
    let agent = &fleet.agents()[0];
    let (running, shutdown) = start(&stack, &[]).await;

    // The incidents stream is gone: every announcement fails.
    let js = stack.jetstream().await;
    js.delete_stream(&stack.topology.incidents_stream).await.unwrap();
    let event = agent.event(kind("oom"), Severity::Critical, "kernel", "Out of memory: killed process 7");
    bus.publish_event(&event).await.unwrap();
    test_support::eventually(Duration::from_secs(20), "the incident stored", || async {
        (scalar(&stack, "SELECT count(*) FROM incidents").await == 1).then_some(())
    })
    .await;
    // Stored, yet not acknowledged: the event keeps coming back.
    test_support::eventually(Duration::from_secs(20), "the event delivered again", || {
        let (js, stream) = (js.clone(), stack.topology.events_stream.clone());
        async move {
            let stream = js.get_stream(&stream).await.unwrap();
            let mut consumer = stream.get_consumer::<pull::Config>("event-ingestor").await.unwrap();
            let info = consumer.info().await.unwrap();
            assert_eq!(info.ack_floor.consumer_sequence, 0, "acknowledged without its announcement");
            (info.delivered.consumer_sequence > 1).then_some(())
        }
    })
    .await;
    assert_eq!(scalar(&stack, "SELECT occurrences::bigint FROM incidents").await, 1);

    // The stream returns; the next redelivery announces the incident and is acknowledged.
    natsbus::ensure_topology(&js, &stack.topology).await.unwrap();
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    stop(running, shutdown).await;
    let id = scalar(&stack, "SELECT id FROM incidents").await;
    assert_eq!(announced(&stack).await, vec![id]);
    assert_eq!(scalar(&stack, "SELECT occurrences::bigint FROM incidents").await, 1);
}
