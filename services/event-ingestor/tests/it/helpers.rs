use std::time::Duration;

use agent_sim::{Bus, Fleet};
use async_nats::jetstream::consumer::pull;
use event_ingestor::{Config, Running};
use futures::StreamExt;
use test_support::Stack;
use tokio_util::sync::CancellationToken;

/// A stack with the topology in place and a bus for simulated agents.
pub async fn setup() -> (Stack, Bus) {
    let stack = Stack::start().await;
    let js = stack.jetstream().await;
    natsbus::ensure_topology(&js, &stack.topology).await.unwrap();
    let bus = Bus::new(stack.client().await, stack.topology.subjects.clone(), &stack.topology.agents_bucket)
        .await
        .unwrap();
    (stack, bus)
}

pub fn config(stack: &Stack, extra: &[&str]) -> Config {
    let mut args = vec![
        "event-ingestor".to_owned(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--ack-wait".into(),
        "2s".into(),
        "--summary-interval".into(),
        "1s".into(),
    ];
    args.extend(stack.args_for(&natsbus::auth::Identity::EventIngestor));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    test_support::parse_config(args)
}

pub async fn start(stack: &Stack, extra: &[&str]) -> (Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = event_ingestor::start(config(stack, extra), shutdown.clone()).await.unwrap();
    (running, shutdown)
}

pub async fn stop(running: Running, shutdown: CancellationToken) {
    test_support::lifecycle::stop_within(&shutdown, running.wait(), Duration::from_secs(20)).await;
}

/// Registers the fleet's agents as enrolled.
pub async fn enroll(stack: &Stack, fleet: &Fleet) {
    let agents: Vec<_> = fleet.agents().iter().map(|a| (a.id.clone(), a.hostname.clone())).collect();
    storage::agents::register_many(&stack.db.pool, &agents).await.unwrap();
}

pub async fn scalar(stack: &Stack, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&stack.db.pool).await.unwrap()
}

/// Waits until the durable consumer has nothing pending and nothing unacknowledged.
pub async fn wait_drained(stack: &Stack, stream: &str, consumer: &str, timeout: Duration) {
    let js = stack.jetstream().await;
    test_support::eventually(timeout, "the consumer to drain", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream(stream).await.ok()?;
            let mut consumer = stream.get_consumer::<pull::Config>(consumer).await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

/// The incident ids announced on the incidents stream, sorted, repeats kept.
pub async fn announced(stack: &Stack) -> Vec<i64> {
    let js = stack.jetstream().await;
    let stream = js.get_stream(&stack.topology.incidents_stream).await.unwrap();
    let consumer = stream.create_consumer(pull::Config::default()).await.unwrap();
    let mut msgs =
        consumer.fetch().max_messages(1000).expires(Duration::from_millis(500)).messages().await.unwrap();
    let mut ids = Vec::new();
    while let Some(msg) = msgs.next().await {
        let created: wire_models::IncidentCreated = wire_models::decode(&msg.unwrap().payload).unwrap();
        ids.push(created.incident_id);
    }
    ids.sort_unstable();
    ids
}
