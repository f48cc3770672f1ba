//! Hostile values and keys in the heartbeat bucket, with good heartbeats flowing around
//! them: every bad entry is dead-lettered with its reason (once), replays change
//! nothing, values over the bucket's limit are refused at the door, heartbeats of
//! agents nobody enrolled are ignored, the agents whose keys were abused stay offline,
//! the good agents come online and stay online, and the tracker is still ready.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use test_support::hostile::{Hostile, corrupt};
use wire_models::{Heartbeat, WireMessage};

use crate::helpers::*;

#[tokio::test]
async fn hostile_heartbeats_are_dead_lettered_and_good_ones_flow() {
    let (stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "hostile", 5).await;
    let (victim, other, good) = (&fleet[0], &fleet[1], &fleet[2..]);
    let (running, shutdown) = start(&stack, &[]).await;
    let _beats = Heartbeats::start(&bus, good);
    for agent in good {
        wait_status(&stack, &agent.id, "online", Duration::from_secs(10)).await;
    }

    let bucket = &stack.topology.agents_bucket;
    let valid = serde_json::to_value(victim.heartbeat(INTERVAL)).unwrap();
    // (key, payload, allowed reasons)
    let mut cases: Vec<(String, Hostile)> =
        corrupt(&valid, Heartbeat::MAX_BYTES).into_iter().map(|h| (victim.id.to_string(), h)).collect();
    let encode = |hb: &Heartbeat| wire_models::encode(hb).unwrap();
    let one = |name: &str, payload: Vec<u8>, reason: &'static str| {
        let reasons: &'static [&'static str] = match reason {
            "agent_mismatch" => &["agent_mismatch"],
            "invalid_agent_id" => &["invalid_agent_id"],
            "invalid_message" => &["invalid_message"],
            other => panic!("no reason list for {other}"),
        };
        Hostile { name: name.to_owned(), payload, reasons }
    };
    // Someone else's heartbeat under the victim's key, and the victim's under keys that
    // are no agent id.
    cases.push((
        victim.id.to_string(),
        one("another agent's heartbeat", encode(&other.heartbeat(INTERVAL)), "agent_mismatch"),
    ));
    for key in ["NOT-AN-AGENT", "A1B2C3D4E5F6", "a1b2c3d4e5f", "a1b2c3d4e5f6a", "_-_-_-_-_-_-"] {
        cases.push((
            key.to_owned(),
            one("key that is no agent id", encode(&victim.heartbeat(INTERVAL)), "invalid_agent_id"),
        ));
    }
    // Values that parse but lie about themselves.
    for (name, change) in [
        ("interval of zero", json!({"interval_secs": 0})),
        ("interval over an hour", json!({"interval_secs": 3601})),
        ("negative sequence", json!({"seq": -1})),
        ("hostname with an escape sequence", json!({"hostname": "h\u{1b}[31m"})),
        ("hostname of 300 bytes", json!({"hostname": "h".repeat(300)})),
        ("sent_at that is not a time", json!({"sent_at": "yesterday"})),
    ] {
        let mut hb = valid.clone();
        for (k, v) in change.as_object().unwrap() {
            hb[k] = v.clone();
        }
        cases.push((victim.id.to_string(), one(name, hb.to_string().into_bytes(), "invalid_message")));
    }

    // What is over the bucket's value limit (4 KiB) never gets in: refused at the door.
    const BUCKET_LIMIT: usize = 4096;
    let (too_big, cases): (Vec<_>, Vec<_>) =
        cases.into_iter().partition(|(_, h)| h.payload.len() > BUCKET_LIMIT);
    assert!(!too_big.is_empty());
    for (key, hostile) in &too_big {
        let refused = bus.kv.put(key.as_str(), Bytes::from(hostile.payload.clone())).await;
        assert!(refused.is_err(), "{} ({} bytes) was accepted", hostile.name, hostile.payload.len());
    }
    // One at a time: the bucket keeps one value per key, and a watch that falls behind
    // on a loaded machine rightly skips to the latest value of a key ("latest wins"),
    // which would leave earlier entries of the corpus unseen.
    for (n, (key, hostile)) in cases.iter().enumerate() {
        bus.kv
            .put(key.as_str(), Bytes::from(hostile.payload.clone()))
            .await
            .unwrap_or_else(|e| panic!("the bucket refused {} under {key}: {e}", hostile.name));
        let parked = n as u64 + 1;
        test_support::eventually(
            Duration::from_secs(10),
            &format!("{} dead-lettered", hostile.name),
            || async { (stack.dead_letter_count().await >= parked).then_some(()) },
        )
        .await;
    }
    // A stranger's heartbeat (not enrolled) is ignored, not dead-lettered; a replayed
    // heartbeat of a good agent changes nothing.
    let stranger = agent_sim::SimAgent::numbered("hostile-stranger", 0);
    bus.put_heartbeat(&stranger.heartbeat(INTERVAL)).await.unwrap();
    let replay = good[0].heartbeat(INTERVAL);
    for _ in 0..3 {
        bus.put_heartbeat(&replay).await.unwrap();
    }

    let letters =
        test_support::eventually(Duration::from_secs(15), "every hostile entry dead-lettered", || async {
            let letters = stack.dead_letters().await;
            (letters.len() >= cases.len()).then_some(letters)
        })
        .await;
    // A moment more: nothing else may arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut letters =
        if stack.dead_letters().await.len() == letters.len() { letters } else { stack.dead_letters().await };
    let mut unmatched = Vec::new();
    for (key, hostile) in &cases {
        let subject = format!("$KV.{bucket}.{key}");
        match letters
            .iter()
            .position(|(s, r, p)| *s == subject && hostile.accepts(r) && p[..] == hostile.payload[..])
        {
            Some(i) => {
                letters.swap_remove(i);
            }
            None => unmatched.push(format!("{} under {key}", hostile.name)),
        }
    }
    assert!(unmatched.is_empty(), "not dead-lettered as expected:\n{}", unmatched.join("\n"));
    assert!(
        letters.is_empty(),
        "unexpected dead letters: {:?}",
        letters.iter().map(|l| (&l.0, &l.1)).collect::<Vec<_>>()
    );

    // The abused keys' agents never came online; the good ones never flickered; the
    // stranger is nowhere.
    for agent in [victim, other] {
        assert_eq!(status(&stack, &agent.id).await, "offline");
        assert!(transitions(&stack, &agent.id).await.is_empty(), "{} had transitions", agent.id);
    }
    for agent in good {
        let states: Vec<String> = transitions(&stack, &agent.id).await.into_iter().map(|(s, _)| s).collect();
        assert_eq!(states, ["online"], "good agent {}", agent.id);
    }
    assert!(redis_view(&stack, &stranger.id).await.is_none());
    let ready = reqwest::get(format!("http://{}/readyz", running.admin_addr)).await.unwrap();
    assert_eq!(ready.status(), 200, "the tracker is not ready after the corpus");
    assert!(cases.len() > 40, "the corpus shrank to {}", cases.len());
    stop(running, shutdown).await;
}
