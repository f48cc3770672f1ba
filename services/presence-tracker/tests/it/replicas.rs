use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;

/// Two trackers watch the same bucket and share Redis and Postgres: every transition
/// is written once and announced once.
#[tokio::test]
async fn two_trackers_make_one_row_and_one_message_per_transition() {
    let (stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "replicas", 6).await;
    let changes = Changes::subscribe(&stack).await;
    let (a, stop_a) = start(&stack, &[]).await;
    let (b, stop_b) = start(&stack, &[]).await;
    let _beats = Heartbeats::start(&bus, &fleet);
    for agent in &fleet {
        wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    }
    for agent in &fleet[..3] {
        agent.set_silent(true);
    }
    for agent in &fleet[..3] {
        wait_status(&stack, &agent.id, "offline", Duration::from_secs(10)).await;
    }
    for agent in &fleet[..3] {
        agent.set_silent(false);
    }
    for agent in &fleet[..3] {
        wait_status(&stack, &agent.id, "online", Duration::from_secs(5)).await;
    }
    // Time for any duplicate to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(scalar(&stack, "SELECT count(*) FROM presence_transitions").await, 12);
    for (i, agent) in fleet.iter().enumerate() {
        let states: Vec<String> = transitions(&stack, &agent.id).await.into_iter().map(|(s, _)| s).collect();
        let expected: &[&str] = if i < 3 { &["online", "offline", "online"] } else { &["online"] };
        assert_eq!(states, expected, "agent {i}");
    }
    let messages = changes.all();
    assert_eq!(messages.len(), 12, "{messages:#?}");
    let distinct: HashSet<_> = messages.iter().map(|m| (m.agent_id.clone(), m.state, m.changed_at)).collect();
    assert_eq!(distinct.len(), 12);
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM incidents WHERE type = 'agent_offline' AND status = 'resolved'")
            .await,
        3
    );
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents").await, 3);
    stop(a, stop_a).await;
    stop(b, stop_b).await;
}
