//! One enrolled host turned hostile, with its own credentials, against the whole
//! backend (gateway, ingestor, tracker): it floods oversize events at line rate, tries
//! to roll up the heartbeat bucket and sends messages over the bus's limit. The other
//! hosts' events must all be stored, their presence stay right, and the dead-letter
//! stream take no more of the flood than the budget allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_sim::{Bus, Fleet};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use wire_models::{EventKind, Severity};

use crate::helpers::*;

const FLOOD: Duration = Duration::from_secs(6);
/// The flooder's dead-letter allowance in this test.
const DLQ_MESSAGES: u64 = 50;
const DLQ_BYTES: u64 = 256 * 1024;

async fn start_ingestor(api: &Api) -> (event_ingestor::Running, CancellationToken) {
    let mut args: Vec<String> = ["event-ingestor", "--admin-addr", "127.0.0.1:0", "--ack-wait", "5s"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(api.stack.args_for(&natsbus::auth::Identity::EventIngestor));
    args.extend([
        "--dlq-agent-messages-per-hour".into(),
        DLQ_MESSAGES.to_string(),
        "--dlq-agent-bytes-per-hour".into(),
        DLQ_BYTES.to_string(),
    ]);
    let shutdown = CancellationToken::new();
    let config = test_support::parse_config::<event_ingestor::Config>(args);
    (event_ingestor::start(config, shutdown.clone()).await.unwrap(), shutdown)
}

async fn start_tracker(api: &Api) -> (presence_tracker::Running, CancellationToken) {
    let mut args: Vec<String> = [
        "presence-tracker",
        "--admin-addr",
        "127.0.0.1:0",
        "--missed-heartbeats",
        "3",
        "--reconcile-interval",
        "1s",
        "--flush-interval",
        "1s",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.extend(api.stack.args_for(&natsbus::auth::Identity::PresenceTracker));
    args.extend(api.stack.redis_args());
    let shutdown = CancellationToken::new();
    let config = test_support::parse_config::<presence_tracker::Config>(args);
    (presence_tracker::start(config, shutdown.clone()).await.unwrap(), shutdown)
}

#[tokio::test]
async fn a_flooding_agent_leaves_the_others_ingest_and_presence_working() {
    let api = start(&[]).await;
    let (ingestor, stop_ingestor) = start_ingestor(&api).await;
    let (tracker, stop_tracker) = start_tracker(&api).await;

    // Eleven real enrollments, each agent on its own connection with its own key.
    let fleet = Fleet::numbered(&format!("flood-{}", api.stack.redis_prefix), 11);
    let mut enroller =
        agent_sim::enroll::Enroller::new(&api.base, BOOTSTRAP, agent_sim::enroll::Keyring::in_memory())
            .unwrap();
    let (enrolled, skipped) = enroller.enroll(&fleet).await.unwrap();
    assert!(skipped.is_empty());
    let mut buses = Vec::new();
    for agent in enrolled {
        let client = agent_sim::enroll::connect_as(&agent, Duration::from_secs(5)).await.unwrap();
        let bus = Bus::new(client, api.stack.topology.subjects.clone(), &api.stack.topology.agents_bucket)
            .await
            .unwrap();
        buses.push((Arc::new(agent.agent), bus));
    }
    let (flooder, flood_bus) = buses.remove(0);
    let good: Vec<String> = buses.iter().map(|(a, _)| a.id.to_string()).collect();

    // The good agents: a heartbeat every 500 ms (1 s interval) and an event every
    // 100 ms each, through the flood.
    let stop = CancellationToken::new();
    let published = Arc::new(AtomicU64::new(0));
    let mut good_tasks = tokio::task::JoinSet::new();
    for (agent, bus) in buses {
        let (stop, published) = (stop.clone(), Arc::clone(&published));
        good_tasks.spawn(async move {
            let kind = EventKind::parse("disk_full").unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                if n.is_multiple_of(5) {
                    bus.put_heartbeat(&agent.heartbeat(Duration::from_secs(1))).await.unwrap();
                }
                let event =
                    agent.event(kind.clone(), Severity::Warning, "df", &format!("disk nearly full {n}"));
                bus.publish_event(&event).await.unwrap();
                published.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        });
    }

    // The flooder: 100 KiB events (over the event limit, under the bus's) as fast as
    // the server acknowledges them, 64 in flight; now and then a rollup of the
    // heartbeat bucket and a message over the bus's limit.
    let flooded = Arc::new(AtomicU64::new(0));
    let flood_started = Instant::now();
    let flood = {
        let (stop, flooded) = (stop.clone(), Arc::clone(&flooded));
        let subject = api.stack.topology.subjects.event(&flooder.id, &EventKind::parse("oom").unwrap());
        let kv_subject = format!("$KV.{}.{}", api.stack.topology.agents_bucket, flooder.id);
        tokio::spawn(async move {
            let payload = bytes::Bytes::from(vec![b'x'; 100 * 1024]);
            let mut inflight = futures::stream::FuturesUnordered::new();
            let mut rounds = 0u64;
            while !stop.is_cancelled() {
                while inflight.len() < 64 {
                    let js = flood_bus.js.clone();
                    let (subject, payload) = (subject.clone(), payload.clone());
                    inflight.push(async move {
                        match js.publish(subject, payload).await {
                            Ok(ack) => ack.await.is_ok(),
                            Err(_) => false,
                        }
                    });
                }
                if let Some(true) = inflight.next().await {
                    flooded.fetch_add(1, Ordering::Relaxed);
                }
                rounds += 1;
                if rounds.is_multiple_of(2000) {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Rollup", "all");
                    let _ = flood_bus.js.publish_with_headers(kv_subject.clone(), headers, "x".into()).await;
                    let _ = flood_bus.client.publish(subject.clone(), vec![b'y'; 600 * 1024].into()).await;
                }
            }
        })
    };
    tokio::time::sleep(FLOOD).await;
    stop.cancel();
    flood.await.unwrap();
    let flood_secs = flood_started.elapsed().as_secs_f64();
    while let Some(done) = good_tasks.join_next().await {
        done.unwrap();
    }
    let (flooded, published) = (flooded.load(Ordering::Relaxed), published.load(Ordering::Relaxed));

    // Every good event is stored (one incident per agent, counted), and soon.
    let waited = Instant::now();
    test_support::eventually(Duration::from_secs(60), "every good event to be stored", || {
        let pool = api.stack.db.pool.clone();
        let good = good.clone();
        async move {
            let stored: Option<i64> =
                sqlx::query_scalar("SELECT sum(occurrences)::bigint FROM incidents WHERE agent_id = ANY($1)")
                    .bind(&good)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (stored == Some(published as i64)).then_some(())
        }
    })
    .await;
    let drain_secs = waited.elapsed().as_secs_f64();

    // No good agent was ever seen offline, and every one is online now.
    let (offline, online): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM presence_transitions WHERE agent_id = ANY($1) AND state = 'offline'),
                (SELECT count(*) FROM agents WHERE id = ANY($1) AND status = 'online')",
    )
    .bind(&good)
    .fetch_one(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!(offline, 0, "no good agent may be reported offline during the flood");
    assert_eq!(online, good.len() as i64);
    // Every heartbeat key survived the rollup attempts.
    let kv = api.stack.jetstream().await.get_key_value(&api.stack.topology.agents_bucket).await.unwrap();
    for id in &good {
        assert!(kv.get(id).await.unwrap().is_some(), "heartbeat of {id} gone");
    }

    // The dead-letter stream holds at most the flooder's budget.
    let js = api.stack.jetstream().await;
    let dlq = js.get_stream(&api.stack.topology.dlq_stream).await.unwrap();
    let reader = dlq
        .create_consumer(pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut letters =
        reader.fetch().max_messages(10_000).expires(Duration::from_secs(1)).messages().await.unwrap();
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(msg) = letters.next().await {
        let msg = msg.unwrap();
        count += 1;
        bytes += msg.payload.len() as u64;
    }
    assert!(flooded > DLQ_MESSAGES * 4, "the flood must be a flood: {flooded} messages");
    assert!(count <= DLQ_MESSAGES, "{count} letters parked for one agent (budget {DLQ_MESSAGES})");
    assert!(bytes <= DLQ_BYTES, "{bytes} payload bytes parked for one agent (budget {DLQ_BYTES})");
    eprintln!(
        "flood: {flooded} oversize events ({:.0} msg/s, {:.1} MiB/s) from one agent for {flood_secs:.1} s; \
         {published} good events from {} agents all stored {drain_secs:.2} s after the flood ended; \
         0 offline transitions; dead-letter stream: {count} letters, {bytes} payload bytes",
        flooded as f64 / flood_secs,
        flooded as f64 * 100.0 / 1024.0 / flood_secs,
        good.len(),
    );
    stop_ingestor.cancel();
    stop_tracker.cancel();
    ingestor.wait().await.unwrap();
    tracker.wait().await.unwrap();
    api.stop().await;
}
