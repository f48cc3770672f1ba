use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::Fleet;

use crate::helpers::*;

/// 10,000 agents come online through every batch path (script calls of 1,000,
/// statements of 5,000) and then all miss their deadline at once: each gets exactly one
/// online and one offline transition and one incident.
#[tokio::test]
async fn ten_thousand_agents_come_online_and_go_offline_exactly_once() {
    const N: usize = 10_000;
    let (stack, bus, _keys) = setup().await;
    let fleet = Arc::new(Fleet::numbered(&format!("scale-{}", stack.redis_prefix), N));
    let rows: Vec<_> = fleet.agents().iter().map(|a| (a.id.clone(), a.hostname.clone())).collect();
    storage::agents::register_many(&stack.db.pool, &rows).await.unwrap();
    let (running, shutdown) = start(&stack, &["--offline-timeout", "5s"]).await;

    let started = Instant::now();
    assert_eq!(fleet.heartbeat_all(&bus, Duration::from_secs(10), 512).await, N as u64);
    let put = started.elapsed();
    let all_online = test_support::eventually(Duration::from_secs(30), "every agent online", || async {
        (scalar(&stack, "SELECT count(*) FROM agents WHERE status = 'online'").await == N as i64)
            .then(Instant::now)
    })
    .await;
    let all_offline = test_support::eventually(Duration::from_secs(30), "every agent offline", || async {
        (scalar(&stack, "SELECT count(*) FROM agents WHERE status = 'offline'").await == N as i64)
            .then(Instant::now)
    })
    .await;
    eprintln!(
        "puts took {put:?}; all online {:?} after the last put; all offline {:?} after the last deadline",
        all_online - (started + put),
        all_offline.saturating_duration_since(started + put + Duration::from_secs(5)),
    );
    assert_eq!(scalar(&stack, "SELECT count(*) FROM presence_transitions").await, 2 * N as i64);
    assert_eq!(scalar(&stack, "SELECT count(*) FROM incidents WHERE type = 'agent_offline'").await, N as i64);
    stop(running, shutdown).await;
}
