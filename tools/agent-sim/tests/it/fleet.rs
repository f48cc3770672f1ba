use std::sync::Arc;
use std::time::Duration;

use agent_sim::{Bus, Fleet, FleetConfig, FleetStats, RpcBehaviour, RpcMode};
use async_nats::jetstream::consumer::pull;
use bytes::Bytes;
use futures::StreamExt;
use test_support::{NatsServer, isolated_topology};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire_models::{
    Command, Event, HEADER_MSG_ID, Heartbeat, InventoryReport, PROTOCOL_VERSION, RpcReply, RpcRequest,
    RpcStatus,
};

async fn setup() -> (NatsServer, natsbus::Topology, Bus) {
    test_support::init_tracing();
    let server = NatsServer::start().await;
    let topology = isolated_topology();
    let client = async_nats::connect(server.url()).await.unwrap();
    natsbus::ensure_topology(&async_nats::jetstream::new(client.clone()), &topology).await.unwrap();
    let bus = Bus::new(client, topology.subjects.clone(), &topology.agents_bucket).await.unwrap();
    (server, topology, bus)
}

fn request(command: Command) -> Bytes {
    let req = RpcRequest {
        v: PROTOCOL_VERSION,
        request_id: Uuid::new_v4(),
        command,
        issued_at: chrono::Utc::now(),
        timeout_ms: 2000,
    };
    wire_models::encode(&req).unwrap().into()
}

#[tokio::test]
async fn a_fleet_speaks_the_protocol() {
    let (_server, topology, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("it", 3));
    let config = FleetConfig {
        heartbeat_interval: Duration::from_secs(1),
        events_per_sec: 40.0,
        inventory_interval: Some(Duration::from_millis(500)),
        // Every snapshot after an agent's first changes, so the distinct hashes below do
        // not depend on a coin (at 0.5 a short run on a busy machine could see none).
        inventory_change_ratio: 1.0,
        ..FleetConfig::default()
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (fleet, bus, shutdown) = (Arc::clone(&fleet), bus.clone(), shutdown.clone());
        async move { fleet.run(bus, config, shutdown).await }
    });
    test_support::eventually(Duration::from_secs(10), "events, heartbeats and inventory", || {
        let stats = Arc::clone(&fleet.stats);
        async move {
            (FleetStats::get(&stats.events) >= 20
                && FleetStats::get(&stats.heartbeats) >= 6
                && FleetStats::get(&stats.inventory) >= 6)
                .then_some(())
        }
    })
    .await;

    // Every agent's key holds a valid heartbeat.
    for agent in fleet.agents() {
        let value = bus.kv.get(agent.id.as_str()).await.unwrap().expect("heartbeat in KV");
        let hb: Heartbeat = wire_models::decode(&value).unwrap();
        assert_eq!(hb.agent_id, agent.id);
        assert_eq!(hb.interval_secs, 1);
    }

    // RPC: an allow-listed command is answered by the right agent.
    let agent = &fleet.agents()[1];
    let answer = bus
        .client
        .request(
            topology.subjects.rpc(&agent.id),
            request(
                Command::from_parts("restart_service", &serde_json::json!({"service": "nginx"})).unwrap(),
            ),
        )
        .await
        .unwrap();
    let reply: RpcReply = wire_models::decode(&answer.payload).unwrap();
    assert_eq!(reply.status, RpcStatus::Ok);
    assert_eq!(reply.output.as_deref(), Some("restarted nginx"));

    // A request that is not a valid RpcRequest gets an error reply, not silence.
    let answer =
        bus.client.request(topology.subjects.rpc(&agent.id), Bytes::from_static(b"{}")).await.unwrap();
    let reply: RpcReply = wire_models::decode(&answer.payload).unwrap();
    assert_eq!(reply.status, RpcStatus::Error);
    assert_eq!(reply.error.unwrap().code, "bad_request");

    // A silent agent does not answer: the caller times out (or sees no responders).
    agent.set_silent(true);
    let silent = tokio::time::timeout(
        Duration::from_millis(500),
        bus.client.request(topology.subjects.rpc(&agent.id), request(Command::Ping)),
    )
    .await;
    assert!(!matches!(silent, Ok(Ok(_))), "a silent agent must not answer");

    shutdown.cancel();
    run.await.unwrap().unwrap();

    // Events in the stream are valid, carry Nats-Msg-Id = event_id and match their subject.
    let js = &bus.js;
    let stream = js.get_stream(&topology.events_stream).await.unwrap();
    let consumer = stream.create_consumer(pull::Config::default()).await.unwrap();
    let mut messages = consumer.fetch().max_messages(20).messages().await.unwrap();
    let mut seen = 0;
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        let event: Event = wire_models::decode(&msg.payload).unwrap();
        let msg_id = msg.headers.as_ref().unwrap().get(HEADER_MSG_ID).unwrap().as_str().to_owned();
        assert_eq!(msg_id, event.event_id.to_string());
        assert_eq!(msg.subject.as_str(), topology.subjects.event(&event.agent_id, &event.kind));
        seen += 1;
    }
    assert!(seen > 0);

    // Inventory snapshots were published, some changed.
    let stream = js.get_stream(&topology.inventory_stream).await.unwrap();
    let consumer = stream.create_consumer(pull::Config::default()).await.unwrap();
    let mut messages =
        consumer.fetch().max_messages(100).expires(Duration::from_secs(1)).messages().await.unwrap();
    let mut hashes = std::collections::HashSet::new();
    while let Some(msg) = messages.next().await {
        let report: InventoryReport = wire_models::decode(&msg.unwrap().payload).unwrap();
        hashes.insert(report.snapshot_hash());
    }
    assert!(hashes.len() > 3, "three agents with changing inventory: {} distinct hashes", hashes.len());
}

#[tokio::test]
async fn republishing_an_event_is_deduplicated_by_jetstream() {
    let (_server, topology, bus) = setup().await;
    let fleet = Fleet::numbered("dup", 1);
    let mut rng = rand::rng();
    let event = fleet.agents()[0].random_event(&mut rng);
    assert!(!bus.publish_event(&event).await.unwrap());
    assert!(bus.publish_event(&event).await.unwrap(), "the second publish is a duplicate");
    let mut stream = bus.js.get_stream(&topology.events_stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn shared_rpc_mode_and_failure_rate() {
    let (_server, topology, bus) = setup().await;
    let fleet = Arc::new(Fleet::numbered("shared", 50));
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(Arc::clone(&fleet).serve_rpc(
        bus.clone(),
        RpcBehaviour { failure_rate: 1.0, ..RpcBehaviour::default() },
        RpcMode::Shared,
        shutdown.clone(),
    ));
    let agent = &fleet.agents()[42];
    let answer = test_support::eventually(Duration::from_secs(5), "an rpc answer", || {
        let (client, subject) = (bus.client.clone(), topology.subjects.rpc(&agent.id));
        async move { client.request(subject, request(Command::Ping)).await.ok() }
    })
    .await;
    let reply: RpcReply = wire_models::decode(&answer.payload).unwrap();
    assert_eq!(reply.status, RpcStatus::Error);
    assert_eq!(reply.error.unwrap().code, "simulated_failure");
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}
