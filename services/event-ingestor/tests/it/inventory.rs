use std::time::Duration;

use agent_sim::Fleet;
use bytes::Bytes;

use crate::helpers::*;

async fn history(stack: &test_support::Stack) -> Vec<(String, String)> {
    sqlx::query_as("SELECT agent_id, hash FROM agents_inventory ORDER BY id")
        .fetch_all(&stack.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_same_snapshot_twice_makes_one_row_and_a_change_makes_another() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("inv", 1);
    enroll(&stack, &fleet).await;
    let agent = &fleet.agents()[0];
    let (running, shutdown) = start(&stack, &[]).await;

    let report = agent.inventory(false);
    bus.publish_inventory(&report).await.unwrap();
    // The same content with keys reordered, other whitespace and a new collected_at.
    let value = serde_json::to_value(&report).unwrap();
    let snapshot = &value["snapshot"];
    let reordered = format!(
        r#"{{ "snapshot": {{ "packages": {}, "meta": {}, "services": {}, "os": {}, "hostname": {} }},
             "collected_at": "2030-01-01T00:00:00Z", "agent_id": "{}", "v": 1 }}"#,
        snapshot["packages"],
        snapshot["meta"],
        snapshot["services"],
        snapshot["os"],
        snapshot["hostname"],
        agent.id
    );
    bus.js
        .publish(stack.topology.subjects.inventory(&agent.id), Bytes::from(reordered))
        .await
        .unwrap()
        .await
        .unwrap();
    wait_drained(&stack, &stack.topology.inventory_stream, "inventory-ingestor", Duration::from_secs(30))
        .await;
    assert_eq!(history(&stack).await.len(), 1);

    let changed = agent.inventory(true);
    bus.publish_inventory(&changed).await.unwrap();
    wait_drained(&stack, &stack.topology.inventory_stream, "inventory-ingestor", Duration::from_secs(30))
        .await;
    stop(running, shutdown).await;
    let rows = history(&stack).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1, report.snapshot_hash());
    assert_eq!(rows[1].1, changed.snapshot_hash());

    // The agent's hostname and meta follow the latest snapshot.
    let (hostname, meta, hash): (String, serde_json::Value, String) =
        sqlx::query_as("SELECT hostname, meta, inventory_hash FROM agents WHERE id = $1")
            .bind(agent.id.as_str())
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(hostname, agent.hostname);
    assert_eq!(meta["env"], "sim");
    assert_eq!(hash, changed.snapshot_hash());
}

/// Two replicas, many copies of a few distinct snapshots of one agent published at
/// once: one history row per change, however the copies were split.
#[tokio::test]
async fn two_replicas_racing_on_one_agent_still_make_one_row_per_change() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("race", 1);
    enroll(&stack, &fleet).await;
    let agent = &fleet.agents()[0];
    let (a, stop_a) = start(&stack, &["--batch-size", "3"]).await;
    let (b, stop_b) = start(&stack, &["--batch-size", "3"]).await;

    let first = agent.inventory(false);
    let second = agent.inventory(true);
    // Copies of the first snapshot, then copies of the second: two changes in all.
    let mut publishes = Vec::new();
    for report in std::iter::repeat_n(&first, 30).chain(std::iter::repeat_n(&second, 30)) {
        publishes.push(bus.publish_inventory(report));
    }
    for p in publishes {
        p.await.unwrap();
    }
    wait_drained(&stack, &stack.topology.inventory_stream, "inventory-ingestor", Duration::from_secs(30))
        .await;
    stop(a, stop_a).await;
    stop(b, stop_b).await;
    let rows = history(&stack).await;
    let hashes: std::collections::HashSet<_> = rows.iter().map(|r| r.1.clone()).collect();
    assert_eq!(hashes.len(), 2);
    // Replicas may interleave A and B, but never store the same snapshot twice in a row.
    for pair in rows.windows(2) {
        assert_ne!(pair[0].1, pair[1].1, "{rows:?}");
    }
}

#[tokio::test]
async fn bad_inventory_is_dead_lettered() {
    let (stack, bus) = setup().await;
    let fleet = Fleet::numbered("badinv", 2);
    enroll(&stack, &fleet).await;
    let (running, shutdown) = start(&stack, &[]).await;
    let subjects = &stack.topology.subjects;
    let good = fleet.agents()[0].inventory(false);
    for (subject, payload) in [
        (subjects.inventory(&fleet.agents()[0].id), Bytes::from_static(b"[]")),
        (subjects.inventory(&fleet.agents()[1].id), Bytes::from(wire_models::encode(&good).unwrap())),
    ] {
        bus.js.publish(subject, payload).await.unwrap().await.unwrap();
    }
    bus.publish_inventory(&good).await.unwrap();
    wait_drained(&stack, &stack.topology.inventory_stream, "inventory-ingestor", Duration::from_secs(30))
        .await;
    stop(running, shutdown).await;
    let mut reasons: Vec<String> = stack.dead_letters().await.into_iter().map(|l| l.1).collect();
    reasons.sort();
    assert_eq!(reasons, vec!["agent_mismatch".to_owned(), "invalid_message".to_owned()]);
    assert_eq!(history(&stack).await.len(), 1);
}
