use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_sim::Fleet;
use test_support::TcpProxy;
use test_support::process::ServiceProcess;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_event-ingestor");

/// SIGKILL in the middle of a 20,000-event run, then a restart: nothing lost, nothing
/// counted twice.
#[tokio::test]
async fn a_killed_ingestor_loses_and_duplicates_nothing() {
    let (stack, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("kill", 200));
    enroll(&stack, &fleet).await;
    assert_eq!(fleet.publish_events(&bus, 20_000, 512).await, 20_000);

    let mut env = stack.env_for(&natsbus::auth::Identity::EventIngestor);
    env.push(("ADMIN_ADDR", "127.0.0.1:0".into()));
    env.push(("INGEST_ACK_WAIT", "2s".into()));
    env.push(("INGEST_BATCH_SIZE", "500".into()));
    let mut first = ServiceProcess::spawn(Path::new(BIN), &env, &[]);
    first.wait_for_line("event-ingestor ready", Duration::from_secs(30)).await;
    // Kill it once it is part-way through.
    test_support::eventually(Duration::from_secs(60), "some events ingested", || async {
        let n = scalar(&stack, "SELECT count(*) FROM ingested_events").await;
        (n > 2_000).then_some(())
    })
    .await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10)).await;
    let partial = scalar(&stack, "SELECT count(*) FROM ingested_events").await;
    assert!(partial < 20_000, "the kill came too late to prove anything ({partial})");

    let mut second = ServiceProcess::spawn(Path::new(BIN), &env, &[]);
    second.wait_for_line("event-ingestor ready", Duration::from_secs(30)).await;
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(120)).await;
    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(20)).await, Some(0));

    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, 20_000);
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 20_000);
    assert!(stack.dead_letters().await.is_empty());
}

/// Postgres unreachable in the middle of a run, then back: everything arrives and
/// nothing is dead-lettered.
#[tokio::test]
async fn postgres_down_mid_run_delays_but_loses_nothing() {
    let (stack, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("pgdown", 50));
    enroll(&stack, &fleet).await;
    let proxy = TcpProxy::start(stack.db.server_addr()).await;
    let url = stack.db.url_via_port(proxy.port());
    let url_file = stack.secret_file("database-url-via-proxy", &url);
    let (running, shutdown) =
        start(&stack, &["--database-url-file", &url_file, "--db-acquire-timeout", "1s", "--ack-wait", "3s"])
            .await;

    assert_eq!(fleet.publish_events(&bus, 1_000, 256).await, 1_000);
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(30)).await;

    proxy.cut();
    assert_eq!(fleet.publish_events(&bus, 2_000, 256).await, 2_000);
    // Longer than the ack deadline: progress acks must keep the batch ours meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, 1_000);
    proxy.restore();

    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(60)).await;
    stop(running, shutdown).await;
    assert_eq!(scalar(&stack, "SELECT count(*) FROM ingested_events").await, 3_000);
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 3_000);
    assert!(stack.dead_letters().await.is_empty(), "a transient failure must never dead-letter");
}

/// SIGTERM while busy: the batch in flight is finished and acknowledged, the process
/// exits within its grace period, and a restart completes the rest exactly.
#[tokio::test]
async fn sigterm_drains_the_batch_in_flight() {
    let (stack, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("term", 100));
    enroll(&stack, &fleet).await;
    assert_eq!(fleet.publish_events(&bus, 10_000, 512).await, 10_000);
    let mut env = stack.env_for(&natsbus::auth::Identity::EventIngestor);
    env.push(("ADMIN_ADDR", "127.0.0.1:0".into()));
    env.push(("SHUTDOWN_GRACE", "10s".into()));
    env.push(("INGEST_ACK_WAIT", "2s".into()));
    let mut process = ServiceProcess::spawn(Path::new(BIN), &env, &[]);
    process.wait_for_line("event-ingestor ready", Duration::from_secs(30)).await;
    test_support::eventually(Duration::from_secs(60), "ingestion under way", || async {
        (scalar(&stack, "SELECT count(*) FROM ingested_events").await > 500).then_some(())
    })
    .await;
    process.signal("TERM");
    assert_eq!(process.wait(Duration::from_secs(15)).await, Some(0));

    let (running, shutdown) = start(&stack, &[]).await;
    wait_drained(&stack, &stack.topology.events_stream, "event-ingestor", Duration::from_secs(120)).await;
    stop(running, shutdown).await;
    assert_eq!(scalar(&stack, "SELECT sum(occurrences)::bigint FROM incidents").await, 10_000);
}
