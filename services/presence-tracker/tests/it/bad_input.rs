use std::time::Duration;

use bytes::Bytes;

use crate::helpers::*;

/// Garbage, a heartbeat under another agent's key and a key that is no agent id are
/// each dead-lettered with their reason; the tracker keeps going.
#[tokio::test]
async fn bad_heartbeats_are_dead_lettered_and_the_tracker_keeps_going() {
    let (stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "bad", 4).await;
    let (garbled, hijacked, other, good) = (&fleet[0], &fleet[1], &fleet[2], &fleet[3]);
    let (running, shutdown) = start(&stack, &[]).await;

    let bucket = &stack.topology.agents_bucket;
    let encode = |hb: &wire_models::Heartbeat| Bytes::from(wire_models::encode(hb).unwrap());
    let cases = [
        (garbled.id.to_string(), Bytes::from_static(b"\xff\xfe not a heartbeat"), "malformed_json"),
        (hijacked.id.to_string(), encode(&other.heartbeat(INTERVAL)), "agent_mismatch"),
        ("NOT-AN-AGENT".to_owned(), encode(&good.heartbeat(INTERVAL)), "invalid_agent_id"),
    ];
    for (key, value, _) in &cases {
        bus.kv.put(key.as_str(), value.clone()).await.unwrap();
    }
    bus.put_heartbeat(&good.heartbeat(INTERVAL)).await.unwrap();
    wait_status(&stack, &good.id, "online", Duration::from_secs(5)).await;

    let letters = test_support::eventually(Duration::from_secs(10), "three dead letters", || async {
        let letters = stack.dead_letters().await;
        (letters.len() >= cases.len()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), cases.len(), "{:?}", letters.iter().map(|l| (&l.0, &l.1)).collect::<Vec<_>>());
    for (key, value, reason) in &cases {
        let subject = format!("$KV.{bucket}.{key}");
        assert!(
            letters.iter().any(|(s, r, p)| s == &subject && r == reason && p[..] == value[..]),
            "no dead letter {reason} for {subject}: {:?}",
            letters.iter().map(|l| (&l.0, &l.1)).collect::<Vec<_>>()
        );
    }
    // Nothing happened to the agents whose keys carried bad values.
    for agent in [garbled, hijacked, other] {
        assert_eq!(status(&stack, &agent.id).await, "offline");
        assert!(transitions(&stack, &agent.id).await.is_empty());
    }
    stop(running, shutdown).await;
}

#[tokio::test]
async fn heartbeats_of_agents_that_are_not_enrolled_are_ignored() {
    let (stack, bus, _keys) = setup().await;
    let known = agents(&stack, "known", 1).await.remove(0);
    let stranger = agent_sim::SimAgent::numbered("stranger", 0);
    let (running, shutdown) = start(&stack, &[]).await;
    bus.put_heartbeat(&stranger.heartbeat(INTERVAL)).await.unwrap();
    bus.put_heartbeat(&known.heartbeat(INTERVAL)).await.unwrap();
    wait_status(&stack, &known.id, "online", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM presence_transitions").await, 1);
    assert!(redis_view(&stack, &stranger.id).await.is_none());
    assert!(stack.dead_letters().await.is_empty(), "strangers are ignored, not dead-lettered");
    stop(running, shutdown).await;
}
