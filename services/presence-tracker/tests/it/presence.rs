use std::time::{Duration, Instant};

use wire_models::PresenceState;

use crate::helpers::*;

/// Reconcile interval used by the offline-bound tests that rely on the scan.
const RECONCILE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn the_first_heartbeat_marks_an_agent_online_within_a_second() {
    let (stack, bus, _keys) = setup().await;
    let agent = agents(&stack, "first", 1).await.remove(0);
    let changes = Changes::subscribe(&stack).await;
    let (running, shutdown) = start(&stack, &[]).await;

    let sent = Instant::now();
    bus.put_heartbeat(&agent.heartbeat(INTERVAL)).await.unwrap();
    let seen = wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    let elapsed = seen - sent;
    assert!(elapsed < Duration::from_secs(1), "online after {elapsed:?}");

    let rows: Vec<(String, String, i32, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT state, reason, threshold_secs, last_seen_at FROM presence_transitions WHERE agent_id = $1",
    )
    .bind(agent.id.as_str())
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2), ("online", "heartbeat", 3));
    assert!(rows[0].3.is_some());

    test_support::eventually(Duration::from_secs(2), "the presence-changed message", || async {
        (changes.of(&agent.id).len() == 1).then_some(())
    })
    .await;
    let msg = &changes.of(&agent.id)[0];
    assert_eq!((msg.state, msg.reason.as_str(), msg.threshold_secs), (PresenceState::Online, "heartbeat", 3));
    assert!(msg.last_seen_at.is_some());

    // The API's view comes from Redis.
    let view = redis_view(&stack, &agent.id).await.expect("redis holds the agent's presence");
    assert_eq!(view.state, PresenceState::Online);
    assert_eq!(view.threshold_secs, 3);
    assert!(view.since.is_some() && view.last_seen.is_some());
    stop(running, shutdown).await;
}

/// Goes online, falls silent, and must be offline within `bound` of falling silent.
async fn goes_offline_within(extra: &[&str], bound: Duration, reason: &str) {
    let (stack, bus, _keys) = setup().await;
    let agent = agents(&stack, "silent", 1).await.remove(0);
    let changes = Changes::subscribe(&stack).await;
    let (running, shutdown) = start(&stack, extra).await;
    let beats = Heartbeats::start(&bus, std::slice::from_ref(&agent));
    wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    agent.set_silent(true);
    let silent_at = Instant::now();
    let offline_at = wait_status(&stack, &agent.id, "offline", bound + Duration::from_secs(5)).await;
    let took = offline_at - silent_at;
    assert!(took <= bound, "offline {took:?} after falling silent; bound {bound:?}");
    assert!(took >= THRESHOLD - INTERVAL, "offline too early: {took:?}");
    drop(beats);

    let rows = transitions(&stack, &agent.id).await;
    assert_eq!(rows, vec![("online".into(), "heartbeat".into()), ("offline".into(), reason.into())]);
    test_support::eventually(Duration::from_secs(2), "two presence-changed messages", || async {
        (changes.of(&agent.id).len() == 2).then_some(())
    })
    .await;
    let offline = &changes.of(&agent.id)[1];
    assert_eq!(offline.state, PresenceState::Offline);
    assert_eq!(offline.reason, reason);
    // Offline since the deadline it missed: last heartbeat + threshold.
    let last_seen = offline.last_seen_at.unwrap();
    assert_eq!(offline.changed_at - last_seen, chrono::Duration::seconds(3));
    stop(running, shutdown).await;
}

/// With keyspace events the expiry of the agent's TTL key reports it. The scan is a
/// minute apart here, so going offline within seconds proves the fast path; the bound
/// leaves 2 s for Redis's expiry cycle and a loaded test machine.
#[tokio::test]
async fn a_silent_agent_goes_offline_through_keyspace_events() {
    goes_offline_within(&["--reconcile-interval", "60s"], THRESHOLD + Duration::from_secs(2), "key_expired")
        .await;
}

/// With keyspace events off the scan alone bounds detection: threshold + reconcile
/// interval + 1 s.
#[tokio::test]
async fn a_silent_agent_goes_offline_on_the_reconciler_alone() {
    goes_offline_within(
        &["--keyspace-events=false", "--reconcile-interval", "1s"],
        THRESHOLD + RECONCILE + Duration::from_secs(1),
        "timeout",
    )
    .await;
}

#[tokio::test]
async fn an_agent_that_comes_back_is_online_again_and_its_incident_resolved() {
    let (stack, bus, _keys) = setup().await;
    let agent = agents(&stack, "back", 1).await.remove(0);
    let (running, shutdown) = start(&stack, &[]).await;
    let _beats = Heartbeats::start(&bus, std::slice::from_ref(&agent));
    wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;

    agent.set_silent(true);
    wait_status(&stack, &agent.id, "offline", Duration::from_secs(10)).await;
    let (incident_id, status, critical, severity): (i64, String, bool, String) = sqlx::query_as(
        "SELECT id, status, is_critical, severity FROM incidents WHERE agent_id = $1 AND type = 'agent_offline'",
    )
    .bind(agent.id.as_str())
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), critical, severity.as_str()), ("new", true, "critical"));
    let view = redis_view(&stack, &agent.id).await.unwrap();
    assert_eq!((view.state, view.threshold_secs), (PresenceState::Offline, 3));

    agent.set_silent(false);
    let back = Instant::now();
    let online_at = wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    assert!(online_at - back < INTERVAL + Duration::from_secs(1), "back online after {:?}", online_at - back);
    let (status, resolved_by): (String, Option<String>) =
        sqlx::query_as("SELECT status, resolved_by FROM incidents WHERE id = $1")
            .bind(incident_id)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), resolved_by.as_deref()), ("resolved", Some("presence-tracker")));
    let states: Vec<String> = transitions(&stack, &agent.id).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["online", "offline", "online"]);
    stop(running, shutdown).await;
}

#[tokio::test]
async fn offline_incidents_can_be_switched_off() {
    let (stack, bus, _keys) = setup().await;
    let agent = agents(&stack, "noinc", 1).await.remove(0);
    let (running, shutdown) = start(&stack, &["--offline-incidents=false"]).await;
    let _beats = Heartbeats::start(&bus, std::slice::from_ref(&agent));
    wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    agent.set_silent(true);
    wait_status(&stack, &agent.id, "offline", Duration::from_secs(10)).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, 0);
    stop(running, shutdown).await;
}

#[tokio::test]
async fn last_seen_is_written_in_batches_while_an_agent_stays_online() {
    let (stack, bus, _keys) = setup().await;
    let agent = agents(&stack, "seen", 1).await.remove(0);
    let (running, shutdown) = start(&stack, &["--last-seen-resolution=1s"]).await;
    let _beats = Heartbeats::start(&bus, std::slice::from_ref(&agent));
    wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT last_seen_at FROM agents WHERE id = $1")
            .bind(agent.id.as_str())
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    // Flushes every second (`--flush-interval 1s`) what moved a second on: last_seen_at
    // follows the heartbeats.
    test_support::eventually(Duration::from_secs(5), "last_seen_at to advance", || async {
        let now: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT last_seen_at FROM agents WHERE id = $1")
                .bind(agent.id.as_str())
                .fetch_one(&stack.db.pool)
                .await
                .unwrap();
        (now >= first + chrono::Duration::seconds(2)).then_some(())
    })
    .await;
    assert_eq!(transitions(&stack, &agent.id).await.len(), 1);
    stop(running, shutdown).await;
}

#[tokio::test]
async fn last_seen_is_written_again_only_once_it_moved_by_the_resolution() {
    let (stack, bus, _keys) = setup().await;
    let agent = agents(&stack, "coarse", 1).await.remove(0);
    let (running, shutdown) = start(&stack, &["--last-seen-resolution=1h"]).await;
    let _beats = Heartbeats::start(&bus, std::slice::from_ref(&agent));
    wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    let stored = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT last_seen_at FROM agents WHERE id = $1",
        )
        .bind(agent.id.as_str())
        .fetch_one(&stack.db.pool)
        .await
        .unwrap()
    };
    // The first flush writes what the transition did not know; then the row holds still
    // for an hour, flush after flush (one a second), while Redis follows every heartbeat.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let written = stored().await;
    let redis_before = redis_view(&stack, &agent.id).await.unwrap().last_seen.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored().await, written);
    let redis_after = redis_view(&stack, &agent.id).await.unwrap().last_seen.unwrap();
    assert!(redis_after >= redis_before + chrono::Duration::seconds(2), "{redis_before} -> {redis_after}");
    stop(running, shutdown).await;
}
