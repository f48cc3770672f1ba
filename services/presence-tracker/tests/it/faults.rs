//! Restarts and outages of NATS, Redis, Postgres and the tracker itself: no agent is in
//! a wrong state for longer than threshold + reconcile interval + 1 s once the outage
//! is over, and agents that kept sending are never declared offline.

use std::path::Path;
use std::time::{Duration, Instant};

use test_support::TcpProxy;
use test_support::process::ServiceProcess;
use wire_models::PresenceState;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_presence-tracker");
const RECONCILE: Duration = Duration::from_secs(1);

fn bound(threshold: Duration) -> Duration {
    threshold + RECONCILE + Duration::from_secs(1)
}

async fn assert_never_offline(stack: &test_support::Stack, agent: &agent_sim::SimAgent) {
    let states: Vec<String> = transitions(stack, &agent.id).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["online"], "agent {} kept sending and must never have gone offline", agent.id);
    assert_eq!(status(stack, &agent.id).await, "online");
}

#[tokio::test]
async fn a_nats_restart_leaves_no_agent_in_a_wrong_state() {
    let (mut stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "natsrestart", 3).await;
    let (steady, leaving, newcomer) = (&fleet[0], &fleet[1], &fleet[2]);
    newcomer.set_silent(true);
    // A 5 s threshold: agents' clients need a moment to reconnect after the restart.
    let threshold = Duration::from_secs(5);
    let (running, shutdown) = start(&stack, &["--missed-heartbeats", "5"]).await;
    let _beats = Heartbeats::start(&bus, &fleet);
    wait_status(&stack, &steady.id, "online", Duration::from_secs(5)).await;
    wait_status(&stack, &leaving.id, "online", Duration::from_secs(5)).await;

    leaving.set_silent(true);
    stack.nats.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.nats.restart().await;
    let restarted = Instant::now();

    let offline_at = wait_status(&stack, &leaving.id, "offline", Duration::from_secs(20)).await;
    assert!(
        offline_at - restarted <= bound(threshold),
        "offline {:?} after the restart",
        offline_at - restarted
    );
    // The watch works again: a new agent comes online.
    newcomer.set_silent(false);
    wait_status(&stack, &newcomer.id, "online", Duration::from_secs(5)).await;
    assert_never_offline(&stack, steady).await;
    stop(running, shutdown).await;
}

/// The tracker is SIGKILLed; while it is down one agent falls silent and another
/// starts. A new tracker re-syncs from the bucket and catches up with both.
#[tokio::test]
async fn a_restarted_tracker_catches_up_with_what_happened_while_it_was_down() {
    let (stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "trackerrestart", 3).await;
    let (steady, leaving, newcomer) = (&fleet[0], &fleet[1], &fleet[2]);
    newcomer.set_silent(true);
    let mut env = stack.env_for(&natsbus::auth::Identity::PresenceTracker);
    env.extend([
        ("ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("PRESENCE_MISSED_HEARTBEATS", "3".to_owned()),
        ("PRESENCE_RECONCILE_INTERVAL", "1s".to_owned()),
    ]);
    let mut first = ServiceProcess::spawn(Path::new(BIN), &env, &[]);
    first.wait_for_line("presence-tracker ready", Duration::from_secs(30)).await;
    let _beats = Heartbeats::start(&bus, &fleet);
    wait_status(&stack, &steady.id, "online", Duration::from_secs(5)).await;
    wait_status(&stack, &leaving.id, "online", Duration::from_secs(5)).await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10)).await;

    leaving.set_silent(true);
    newcomer.set_silent(false);
    // Long enough for the leaving agent's deadline to pass while nobody watches.
    tokio::time::sleep(THRESHOLD + Duration::from_secs(1)).await;
    assert_eq!(status(&stack, &leaving.id).await, "online", "nobody could have noticed yet");

    let restarted = Instant::now();
    let (running, shutdown) = start(&stack, &[]).await;
    let online_at = wait_status(&stack, &newcomer.id, "online", Duration::from_secs(10)).await;
    assert!(
        online_at - restarted < Duration::from_secs(2),
        "newcomer online {:?} after the restart",
        online_at - restarted
    );
    let offline_at = wait_status(&stack, &leaving.id, "offline", Duration::from_secs(15)).await;
    assert!(
        offline_at - restarted <= bound(THRESHOLD),
        "offline {:?} after the restart",
        offline_at - restarted
    );
    assert_never_offline(&stack, steady).await;
    stop(running, shutdown).await;
}

/// Redis unreachable for longer than the threshold: nobody is declared offline because
/// of it, and what really happened meanwhile is caught up once it is back.
#[tokio::test]
async fn a_redis_outage_leaves_no_agent_in_a_wrong_state() {
    let (stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "redisdown", 2).await;
    let (steady, leaving) = (&fleet[0], &fleet[1]);
    let redis_addr =
        test_support::redis_url().trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = TcpProxy::start(redis_addr).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let url_file = stack.secret_file("redis-url-via-proxy", &url);
    let (running, shutdown) =
        start(&stack, &["--redis-url-file", &url_file, "--redis-timeout", "500ms"]).await;
    let _beats = Heartbeats::start(&bus, &fleet);
    wait_status(&stack, &steady.id, "online", Duration::from_secs(5)).await;
    wait_status(&stack, &leaving.id, "online", Duration::from_secs(5)).await;

    proxy.cut();
    leaving.set_silent(true);
    tokio::time::sleep(THRESHOLD + Duration::from_secs(1)).await;
    assert_eq!(status(&stack, &steady.id).await, "online");
    proxy.restore();
    let restored = Instant::now();

    let offline_at = wait_status(&stack, &leaving.id, "offline", Duration::from_secs(15)).await;
    assert!(
        offline_at - restored <= bound(THRESHOLD),
        "offline {:?} after redis came back",
        offline_at - restored
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_never_offline(&stack, steady).await;
    stop(running, shutdown).await;
}

/// Redis comes back empty (a restart without persistence): the tracker notices, re-syncs
/// from the bucket and rebuilds every agent's presence as Postgres has it, without a
/// single new transition.
#[tokio::test]
async fn redis_losing_its_data_is_rebuilt_without_new_transitions() {
    let (stack, bus, keys) = setup().await;
    let fleet = agents(&stack, "redisloss", 2).await;
    let (steady, gone) = (&fleet[0], &fleet[1]);
    let (running, shutdown) = start(&stack, &[]).await;
    let _beats = Heartbeats::start(&bus, &fleet);
    wait_status(&stack, &steady.id, "online", Duration::from_secs(5)).await;
    wait_status(&stack, &gone.id, "online", Duration::from_secs(5)).await;
    gone.set_silent(true);
    wait_status(&stack, &gone.id, "offline", Duration::from_secs(10)).await;
    let rows = scalar(&stack, "SELECT count(*) FROM presence_transitions").await;
    let since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT status_changed_at FROM agents WHERE id = $1")
            .bind(steady.id.as_str())
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();

    assert!(keys.delete_all() > 0);
    test_support::eventually(Duration::from_secs(10), "redis presence rebuilt", || async {
        let (s, g) = (redis_view(&stack, &steady.id).await?, redis_view(&stack, &gone.id).await?);
        (s.state == PresenceState::Online && g.state == PresenceState::Offline).then_some((s, g))
    })
    .await;
    let view = redis_view(&stack, &steady.id).await.unwrap();
    assert_eq!(view.since, Some(since), "online since what postgres says, not since the rebuild");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM presence_transitions").await, rows);
    assert_eq!(status(&stack, &steady.id).await, "online");
    assert_eq!(status(&stack, &gone.id).await, "offline");
    stop(running, shutdown).await;
}

/// Postgres unreachable for longer than the threshold: presence keeps being tracked in
/// Redis and the transitions that happened meanwhile land once it is back.
#[tokio::test]
async fn a_postgres_outage_delays_transitions_but_loses_none() {
    let (stack, bus, _keys) = setup().await;
    let fleet = agents(&stack, "pgdown", 3).await;
    let (steady, leaving, newcomer) = (&fleet[0], &fleet[1], &fleet[2]);
    newcomer.set_silent(true);
    let proxy = TcpProxy::start(stack.db.server_addr()).await;
    let url = stack.db.url_via_port(proxy.port());
    let url_file = stack.secret_file("database-url-via-proxy", &url);
    let (running, shutdown) =
        start(&stack, &["--database-url-file", &url_file, "--db-acquire-timeout", "1s"]).await;
    let _beats = Heartbeats::start(&bus, &fleet);
    wait_status(&stack, &steady.id, "online", Duration::from_secs(5)).await;
    wait_status(&stack, &leaving.id, "online", Duration::from_secs(5)).await;

    proxy.cut();
    leaving.set_silent(true);
    newcomer.set_silent(false);
    tokio::time::sleep(THRESHOLD + Duration::from_secs(2)).await;
    assert_eq!(status(&stack, &leaving.id).await, "online", "postgres was unreachable");
    assert_eq!(status(&stack, &newcomer.id).await, "offline");
    proxy.restore();
    let restored = Instant::now();

    let online_at = wait_status(&stack, &newcomer.id, "online", Duration::from_secs(15)).await;
    let offline_at = wait_status(&stack, &leaving.id, "offline", Duration::from_secs(15)).await;
    for (what, at) in [("newcomer online", online_at), ("leaving offline", offline_at)] {
        assert!(at - restored <= bound(THRESHOLD), "{what} {:?} after postgres came back", at - restored);
    }
    assert_never_offline(&stack, steady).await;
    stop(running, shutdown).await;
}
