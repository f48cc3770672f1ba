use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent_sim::Fleet;
use storage::incidents::fingerprint;

use crate::helpers::*;

/// Two replicas share 20,000 events from 200 agents: every event counted exactly once,
/// one incident per fingerprint, nothing left unacknowledged.
#[tokio::test]
async fn two_replicas_ingest_twenty_thousand_events_exactly_once() {
    let (stack, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("scale", 200));
    enroll(&stack, &fleet).await;

    let events: Vec<_> = {
        let mut rng = rand::rng();
        (0..20_000).map(|i| fleet.agents()[i % 200].random_event(&mut rng)).collect()
    };
    let mut expected: HashMap<String, i64> = HashMap::new();
    for e in &events {
        *expected
            .entry(fingerprint(e.agent_id.as_str(), e.kind.as_str(), &e.source, &e.raw_error))
            .or_default() += 1;
    }

    // The suite's short ack wait would let a loaded machine redeliver (harmlessly, the
    // ledger skips it) and blur the per-replica counts this test compares.
    let (a, stop_a) = start(&stack, &["--ack-wait", "30s"]).await;
    let (b, stop_b) = start(&stack, &["--ack-wait", "30s"]).await;
    let published = fleet.publish_prepared(&bus, events, 512).await;
    let stats = &fleet.stats;
    assert_eq!(
        published,
        20_000,
        "duplicates {} errors {}",
        agent_sim::FleetStats::get(&stats.duplicates),
        agent_sim::FleetStats::get(&stats.errors)
    );
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(120)).await;
    // A replica counts a batch just after acknowledging it, so the stream can look
    // drained a moment before the counters have caught up.
    let (handled_a, handled_b) =
        test_support::eventually(Duration::from_secs(10), "both replicas counted every event", || async {
            let (a, b) = (a.events_handled(), b.events_handled());
            (a + b >= 20_000).then_some((a, b))
        })
        .await;
    assert!(handled_a > 0 && handled_b > 0, "both replicas must share the work: {handled_a} / {handled_b}");
    assert_eq!(handled_a + handled_b, 20_000);
    stop(a, stop_a).await;
    stop(b, stop_b).await;

    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, 20_000);
    assert_eq!(scalar(&stack, "SELECT COALESCE(sum(occurrences), 0)::bigint FROM incidents").await, 20_000);
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, expected.len() as i64);
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT fingerprint, occurrences FROM incidents")
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
    for (fp, occurrences) in rows {
        assert_eq!(expected.get(&fp), Some(&occurrences), "fingerprint {fp}");
    }
    assert!(stack.dead_letters().await.is_empty());
}

/// With de-duplication off every event is its own incident, still exactly once.
#[tokio::test]
async fn without_dedup_every_event_is_one_incident() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("nodedup", 20);
    enroll(&stack, &fleet).await;
    let (running, shutdown) = start(&stack, &["--incident-dedup", "false"]).await;
    assert_eq!(fleet.publish_events(&bus, 2_000, 256).await, 2_000);
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(60)).await;
    stop(running, shutdown).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, 2_000);
    assert_eq!(scalar(&stack, "SELECT count(DISTINCT event_id) FROM incidents").await, 2_000);
}

/// Stopping one of two replicas mid-run: the other takes all the remaining work.
#[tokio::test]
async fn when_one_replica_stops_the_other_takes_all_the_work() {
    let (stack, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("handover", 50));
    enroll(&stack, &fleet).await;
    let (a, stop_a) = start(&stack, &["--batch-size", "100", "--ack-wait", "30s"]).await;
    let (b, stop_b) = start(&stack, &["--batch-size", "100", "--ack-wait", "30s"]).await;
    assert_eq!(fleet.publish_events(&bus, 2_000, 256).await, 2_000);
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(60)).await;
    // Counters follow the acknowledgements by a moment; wait for them to settle.
    test_support::eventually(Duration::from_secs(10), "the first 2,000 counted", || async {
        (a.events_handled() + b.events_handled() == 2_000).then_some(())
    })
    .await;
    stop(a, stop_a).await;
    let before = b.events_handled();
    assert_eq!(fleet.publish_events(&bus, 3_000, 256).await, 3_000);
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(60)).await;
    let taken = test_support::eventually(Duration::from_secs(10), "the next 3,000 counted", || async {
        let taken = b.events_handled() - before;
        (taken >= 3_000).then_some(taken)
    })
    .await;
    assert_eq!(taken, 3_000, "the remaining replica took all the work");
    stop(b, stop_b).await;
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 5_000);
}

/// Big messages make small batches: a backlog of 48 KB events is cut into batches of
/// about the byte budget (never below the server's largest message, 1 MiB here),
/// however many messages a batch may hold and however long it may linger.
#[tokio::test]
async fn a_batch_stops_at_its_byte_budget() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("big", 1);
    enroll(&stack, &fleet).await;
    let agent = &fleet.agents()[0];
    let kind = wire_models::EventKind::parse("log_error").unwrap();
    for n in 0..60 {
        let mut event = agent.event(kind.clone(), wire_models::Severity::Error, "app", &format!("error {n}"));
        event.context.insert("dump".into(), serde_json::Value::String("x".repeat(48 * 1024)));
        bus.publish_event(&event).await.unwrap();
    }
    let (running, shutdown) =
        start(&stack, &["--batch-max-bytes", "1", "--batch-linger", "1s", "--ack-wait", "30s"]).await;
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(60)).await;
    let batches = test_support::eventually(Duration::from_secs(10), "all 60 counted", || async {
        (running.events_handled() == 60).then(|| running.event_batches())
    })
    .await;
    // 60 x 48 KB is about 2.9 MB: three batches at least, where one would hold all.
    assert!(batches >= 3, "{batches} batches for 2.9 MB under a 1 MiB budget");
    stop(running, shutdown).await;
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 60);
}
