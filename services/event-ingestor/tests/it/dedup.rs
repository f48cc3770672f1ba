use std::time::Duration;

use agent_sim::Fleet;
use wire_models::{EventKind, Severity};

use crate::helpers::*;

fn kind(s: &str) -> EventKind {
    EventKind::parse(s).unwrap()
}

#[tokio::test]
async fn repeated_errors_raise_one_incidents_count_and_different_errors_open_new_ones() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("dedup", 2);
    enroll(&stack, &fleet).await;
    let (a, b) = (&fleet.agents()[0], &fleet.agents()[1]);
    let (running, shutdown) = start(&stack, &[]).await;

    // The same problem, five times, with changing pids and timestamps.
    for pid in [101, 202, 303, 404, 505] {
        let raw = format!(
            "nginx.service: Main process exited, status=9/KILL (pid {pid}) at 2026-11-26T12:0{}:00Z",
            pid % 10
        );
        bus.publish_event(&a.event(kind("service_down"), Severity::Critical, "nginx", &raw)).await.unwrap();
    }
    // Different problems: another error text, another source, another kind, another agent.
    bus.publish_event(&a.event(kind("service_down"), Severity::Critical, "nginx", "failed to bind :80"))
        .await
        .unwrap();
    bus.publish_event(&a.event(kind("service_down"), Severity::Critical, "apache", "exited (pid 1)"))
        .await
        .unwrap();
    bus.publish_event(&a.event(kind("oom"), Severity::Critical, "nginx", "exited (pid 1)")).await.unwrap();
    bus.publish_event(&b.event(
        kind("service_down"),
        Severity::Critical,
        "nginx",
        "nginx.service: Main process exited, status=9/KILL (pid 7)",
    ))
    .await
    .unwrap();

    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    let rows: Vec<(String, String, String, i64, bool, String)> = sqlx::query_as(
        "SELECT agent_id, type, source, occurrences, is_critical, status FROM incidents ORDER BY occurrences DESC, id",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(rows[0], (a.id.to_string(), "service_down".into(), "nginx".into(), 5, true, "new".into()));
    assert!(rows[1..].iter().all(|r| r.3 == 1));

    // One incident-created message per incident opened, none for the repeats.
    let announced = announced(&stack).await;
    let mut ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM incidents").fetch_all(&stack.db.pool).await.unwrap();
    ids.sort_unstable();
    assert_eq!(announced, ids);

    // A resolved incident stays closed: the same problem again opens a new one.
    sqlx::query("UPDATE incidents SET status = 'resolved' WHERE occurrences = 5")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    bus.publish_event(&a.event(
        kind("service_down"),
        Severity::Critical,
        "nginx",
        "nginx.service: Main process exited, status=9/KILL (pid 9)",
    ))
    .await
    .unwrap();
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, 6);
    stop(running, shutdown).await;
}

#[tokio::test]
async fn a_redelivered_event_is_counted_once() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("redeliver", 1);
    enroll(&stack, &fleet).await;
    let agent = &fleet.agents()[0];
    let (running, shutdown) = start(&stack, &[]).await;
    let event = agent.event(kind("disk_full"), Severity::Error, "df", "/var: No space left on device");
    bus.publish_event(&event).await.unwrap();
    // The same event id under another Nats-Msg-Id gets past JetStream's window, as a
    // redelivery after a crash would: the database ledger must catch it.
    let payload = wire_models::encode(&event).unwrap();
    bus.publish_raw_event(
        stack.topology.subjects.event(&agent.id, &event.kind),
        "another-msg-id",
        payload.into(),
    )
    .await
    .unwrap();
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;
    stop(running, shutdown).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, 1);
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 1);
}
