use std::time::Duration;

use presence::{ExpiredKeys, HeartbeatRecord, PresenceStore, StateChange};
use storage::redis::RedisConfig;
use wire_models::{AgentId, PresenceState};

/// A store under a prefix of this test's own; its keys are deleted when dropped.
struct TestStore {
    store: PresenceStore,
    config: RedisConfig,
}

impl TestStore {
    async fn new() -> Self {
        test_support::init_tracing();
        let prefix = test_support::redis_prefix();
        let config = test_support::redis_config(&test_support::redis_url(), &prefix);
        let pool = storage::redis::connect(&config).await.unwrap();
        Self { store: PresenceStore::new(pool, presence::Keys::for_config(&config)), config }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(test_support::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        test_support::forget_redis_prefix(&self.config.prefix);
    }
}

fn id(n: u8) -> AgentId {
    AgentId::parse(&format!("a1b2c3d4e5{n:02x}")).unwrap()
}

fn hb(agent: &AgentId, last_seen_ms: i64, threshold_ms: i64) -> HeartbeatRecord {
    HeartbeatRecord { agent_id: agent.clone(), last_seen_ms, threshold_ms }
}

const NOW: i64 = 1_800_000_000_000;

#[tokio::test]
async fn a_fresh_heartbeat_is_recorded_and_proposed_until_marked_online() {
    let t = TestStore::new().await;
    let a = id(1);
    let wake = t.store.record(&[hb(&a, NOW - 1_000, 30_000)], NOW).await.unwrap();
    assert_eq!(wake, vec![a.clone()]);

    let p = &t.store.inspect(std::slice::from_ref(&a)).await.unwrap()[0];
    assert_eq!(p.state, None, "nothing decided yet");
    assert_eq!(p.last_seen_ms, Some(NOW - 1_000));
    assert_eq!(p.threshold_ms, Some(30_000));
    assert_eq!(p.deadline_ms, Some(NOW + 29_000));
    assert!(
        t.store.read(std::slice::from_ref(&a)).await.unwrap().is_empty(),
        "the API falls back to postgres"
    );

    let change = StateChange { agent_id: a.clone(), since_ms: NOW - 1_000, last_seen_ms: 0, threshold_ms: 0 };
    assert!(t.store.mark(PresenceState::Online, &[change], NOW).await.unwrap().is_empty());
    let view = t.store.read(std::slice::from_ref(&a)).await.unwrap().remove(&a).unwrap();
    assert_eq!(view.state, PresenceState::Online);
    assert_eq!(view.since.unwrap().timestamp_millis(), NOW - 1_000);
    assert_eq!(view.last_seen.unwrap().timestamp_millis(), NOW - 1_000, "marking keeps the heartbeat");
    assert_eq!(view.threshold_secs, 30);

    // Online now: the next heartbeat is no longer a candidate.
    assert!(t.store.record(&[hb(&a, NOW + 9_000, 30_000)], NOW + 9_000).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_ttl_key_expires_at_the_deadline() {
    let t = TestStore::new().await;
    let a = id(2);
    let now = chrono::Utc::now().timestamp_millis();
    t.store.record(&[hb(&a, now - 2_000, 10_000)], now).await.unwrap();
    let mut conn = t.conn().await;
    let pttl: i64 = redis::cmd("PTTL").arg(t.store.keys().agent(&a)).query_async(&mut conn).await.unwrap();
    assert!((7_000..=8_000).contains(&pttl), "{pttl}");
    // A stale heartbeat sets no key at all.
    let b = id(3);
    t.store.record(&[hb(&b, now - 20_000, 10_000)], now).await.unwrap();
    let exists: bool =
        redis::cmd("EXISTS").arg(t.store.keys().agent(&b)).query_async(&mut conn).await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn an_older_heartbeat_changes_nothing() {
    let t = TestStore::new().await;
    let a = id(4);
    t.store.record(&[hb(&a, NOW, 30_000)], NOW).await.unwrap();
    assert!(t.store.record(&[hb(&a, NOW - 5_000, 3_000)], NOW).await.unwrap().is_empty());
    let p = &t.store.inspect(std::slice::from_ref(&a)).await.unwrap()[0];
    assert_eq!(p.last_seen_ms, Some(NOW));
    assert_eq!(p.deadline_ms, Some(NOW + 30_000));
}

#[tokio::test]
async fn overdue_agents_come_from_one_range_query_whatever_their_interval() {
    let t = TestStore::new().await;
    let (fast, slow, fresh) = (id(5), id(6), id(7));
    t.store
        .record(
            &[
                // A 1 s interval agent silent for 4 s: overdue.
                hb(&fast, NOW - 4_000, 3_000),
                // A 60 s interval agent silent for 200 s: overdue, longer ago.
                hb(&slow, NOW - 200_000, 180_000),
                // A 60 s interval agent silent for 100 s: fine.
                hb(&fresh, NOW - 100_000, 180_000),
            ],
            NOW - 100_000,
        )
        .await
        .unwrap();
    let overdue = t.store.overdue(NOW, 0, 100).await.unwrap();
    assert_eq!(overdue, vec![(slow.clone(), NOW - 20_000), (fast.clone(), NOW - 1_000)]);
    assert_eq!(t.store.overdue(NOW, 1, 100).await.unwrap(), vec![(fast, NOW - 1_000)]);
    assert_eq!(t.store.count_live(NOW).await.unwrap(), 1);
}

#[tokio::test]
async fn marking_offline_stops_tracking_unless_a_heartbeat_raced_it() {
    let t = TestStore::new().await;
    let (gone, back) = (id(8), id(9));
    t.store
        .record(&[hb(&gone, NOW - 10_000, 3_000), hb(&back, NOW - 10_000, 3_000)], NOW - 10_000)
        .await
        .unwrap();
    // `back` sends a heartbeat between the decision and the mirror.
    t.store.record(&[hb(&back, NOW - 100, 3_000)], NOW).await.unwrap();
    let changes: Vec<StateChange> = [&gone, &back]
        .iter()
        .map(|a| StateChange {
            agent_id: (*a).clone(),
            since_ms: NOW - 7_000,
            last_seen_ms: 0,
            threshold_ms: 0,
        })
        .collect();
    let raced = t.store.mark(PresenceState::Offline, &changes, NOW).await.unwrap();
    assert_eq!(raced, vec![back.clone()]);

    let found = t.store.inspect(&[gone.clone(), back.clone()]).await.unwrap();
    assert_eq!(found[0].state, Some(PresenceState::Offline));
    assert_eq!(found[0].deadline_ms, None, "no longer tracked");
    assert_eq!(found[0].last_seen_ms, Some(NOW - 10_000));
    assert_eq!(found[1].state, Some(PresenceState::Offline));
    assert_eq!(found[1].deadline_ms, Some(NOW + 2_900), "still tracked: it is alive");
    assert!(t.store.overdue(NOW, 0, 10).await.unwrap().is_empty());

    // The raced agent's heartbeats propose it for online again.
    assert_eq!(t.store.record(&[hb(&back, NOW, 3_000)], NOW).await.unwrap(), vec![back.clone()]);
    // A stale heartbeat of an agent known offline does not track it again...
    assert!(t.store.record(&[hb(&gone, NOW - 5_000, 3_000)], NOW).await.unwrap().is_empty());
    assert_eq!(t.store.inspect(std::slice::from_ref(&gone)).await.unwrap()[0].deadline_ms, None);
    // ...but one of an agent Redis knows nothing about is tracked, already overdue, so
    // the scan asks Postgres about it (after Redis lost its data, say).
    let unknown = id(10);
    assert!(t.store.record(&[hb(&unknown, NOW - 5_000, 3_000)], NOW).await.unwrap().is_empty());
    assert_eq!(t.store.overdue(NOW, 0, 10).await.unwrap(), vec![(unknown, NOW - 2_000)]);
}

#[tokio::test]
async fn untracked_agents_get_a_deadline_and_tracked_ones_keep_theirs() {
    let t = TestStore::new().await;
    let (tracked, orphan) = (id(11), id(12));
    t.store.record(&[hb(&tracked, NOW, 30_000)], NOW).await.unwrap();
    assert_eq!(t.store.track_untracked(&[tracked.clone(), orphan.clone()], NOW + 5_000).await.unwrap(), 1);
    let found = t.store.inspect(&[tracked, orphan]).await.unwrap();
    assert_eq!(found[0].deadline_ms, Some(NOW + 30_000));
    assert_eq!(found[1].deadline_ms, Some(NOW + 5_000));
    assert_eq!(found[1].state, None);
}

#[tokio::test]
async fn forgetting_removes_every_trace() {
    let t = TestStore::new().await;
    let a = id(13);
    t.store.record(&[hb(&a, NOW, 30_000)], NOW).await.unwrap();
    t.store.forget(std::slice::from_ref(&a)).await.unwrap();
    let p = &t.store.inspect(std::slice::from_ref(&a)).await.unwrap()[0];
    assert_eq!((p.state, p.last_seen_ms, p.deadline_ms), (None, None, None));
}

#[tokio::test]
async fn batches_larger_than_one_script_call_are_split() {
    let t = TestStore::new().await;
    let agents: Vec<AgentId> = (0..2500u32).map(|i| AgentId::derive_from(&i.to_be_bytes())).collect();
    let records: Vec<HeartbeatRecord> = agents.iter().map(|a| hb(a, NOW, 30_000)).collect();
    assert_eq!(t.store.record(&records, NOW).await.unwrap().len(), 2500);
    assert_eq!(t.store.count_live(NOW).await.unwrap(), 2500);
    assert_eq!(t.store.inspect(&agents).await.unwrap().len(), 2500);
}

#[tokio::test]
async fn a_lost_epoch_is_noticed_once() {
    let t = TestStore::new().await;
    let mut seen = None;
    assert!(!t.store.check_epoch(&mut seen).await.unwrap(), "the first check only plants the token");
    assert!(!t.store.check_epoch(&mut seen).await.unwrap());
    let mut conn = t.conn().await;
    let _: () = redis::cmd("DEL").arg(t.store.keys().epoch()).query_async(&mut conn).await.unwrap();
    assert!(t.store.check_epoch(&mut seen).await.unwrap());
    assert!(!t.store.check_epoch(&mut seen).await.unwrap());
}

#[tokio::test]
async fn expired_ttl_keys_arrive_as_keyspace_events_for_this_prefix_only() {
    let t = TestStore::new().await;
    if !presence::keyspace_expired_events_enabled(&storage::redis::connect(&t.config).await.unwrap())
        .await
        .unwrap()
    {
        eprintln!("skipped: redis has notify-keyspace-events off");
        return;
    }
    let mut events = ExpiredKeys::subscribe(&t.config).await.unwrap();
    // Another deployment's key under another prefix expires too; it must not show.
    let other = TestStore::new().await;
    let now = chrono::Utc::now().timestamp_millis();
    other.store.record(&[hb(&id(14), now, 200)], now).await.unwrap();
    t.store.record(&[hb(&id(15), now, 300)], now).await.unwrap();
    // Redis's background expiry walks a few volatile keys per tick, so on a Redis holding
    // many (other tests, other deployments) it may reach these two late; a read of an
    // expired key expires it at once, with the same event. Both keys are read.
    let nudge = async {
        let mut conn = t.conn().await;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for key in [other.store.keys().agent(&id(14)), t.store.keys().agent(&id(15))] {
                let _: bool = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await.unwrap();
            }
        }
    };
    let got = tokio::select! {
        got = tokio::time::timeout(Duration::from_secs(3), events.next()) => got.unwrap(),
        () = nudge => unreachable!("the nudging never ends"),
    };
    assert_eq!(got, Some(id(15)));
    events.ping().await.unwrap();
}

#[tokio::test]
async fn unsettling_keeps_everything_but_the_decided_state() {
    let t = TestStore::new().await;
    let a = id(16);
    t.store.record(&[hb(&a, NOW, 30_000)], NOW).await.unwrap();
    let change = StateChange { agent_id: a.clone(), since_ms: NOW, last_seen_ms: 0, threshold_ms: 0 };
    t.store.mark(PresenceState::Online, &[change], NOW).await.unwrap();
    t.store.unsettle(&[a.clone(), id(17)]).await.unwrap();
    let p = &t.store.inspect(std::slice::from_ref(&a)).await.unwrap()[0];
    assert_eq!(
        (p.state, p.since_ms, p.last_seen_ms, p.threshold_ms),
        (None, Some(NOW), Some(NOW), Some(30_000))
    );
    // Undecided again: the next heartbeat asks Postgres.
    assert_eq!(t.store.record(&[hb(&a, NOW + 1_000, 30_000)], NOW + 1_000).await.unwrap(), vec![a]);
    assert!(
        t.store.inspect(&[id(17)]).await.unwrap()[0].last_seen_ms.is_none(),
        "unknown agents stay absent"
    );
}
