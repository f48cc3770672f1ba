use async_nats::jetstream;
use test_support::{NatsServer, isolated_topology};

#[tokio::test]
async fn streams_and_bucket_are_created_idempotently() {
    test_support::init_tracing();
    let server = NatsServer::start().await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let topology = isolated_topology();

    natsbus::ensure_topology(&js, &topology).await.unwrap();
    // Again, and twice at once, as replicas starting together do.
    natsbus::ensure_topology(&js, &topology).await.unwrap();
    let (a, b) =
        tokio::join!(natsbus::ensure_topology(&js, &topology), natsbus::ensure_topology(&js, &topology));
    a.unwrap();
    b.unwrap();

    let mut events = js.get_stream(&topology.events_stream).await.unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![topology.subjects.all_events()]);
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
    assert_eq!(info.config.duplicate_window, topology.dedup_window);
    let mut inventory = js.get_stream(&topology.inventory_stream).await.unwrap();
    assert_eq!(inventory.info().await.unwrap().config.subjects, vec![topology.subjects.all_inventory()]);
    let mut dlq = js.get_stream(&topology.dlq_stream).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().config.subjects, vec![topology.subjects.all_dead_letters()]);
    let kv = js.get_key_value(&topology.agents_bucket).await.unwrap();
    assert_eq!(kv.status().await.unwrap().history(), 1);
}

#[tokio::test]
async fn changed_settings_update_the_existing_stream() {
    let server = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut topology = isolated_topology();
    natsbus::ensure_topology(&js, &topology).await.unwrap();
    let mut dlq = js.get_stream(&topology.dlq_stream).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().config.max_age, std::time::Duration::from_secs(30 * 86_400));
    topology.events_max_age = std::time::Duration::from_secs(3600);
    topology.dlq_max_age = std::time::Duration::from_secs(2 * 86_400);
    natsbus::ensure_topology(&js, &topology).await.unwrap();
    let mut events = js.get_stream(&topology.events_stream).await.unwrap();
    assert_eq!(events.info().await.unwrap().config.max_age, std::time::Duration::from_secs(3600));
    assert_eq!(dlq.info().await.unwrap().config.max_age, std::time::Duration::from_secs(2 * 86_400));
}

#[tokio::test]
async fn two_topologies_on_one_server_do_not_see_each_other() {
    let server = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let (a, b) = (isolated_topology(), isolated_topology());
    natsbus::ensure_topology(&js, &a).await.unwrap();
    natsbus::ensure_topology(&js, &b).await.unwrap();
    let agent = wire_models::AgentId::random();
    let kind = wire_models::EventKind::parse("oom").unwrap();
    js.publish(a.subjects.event(&agent, &kind), "x".into()).await.unwrap().await.unwrap();
    let mut sa = js.get_stream(&a.events_stream).await.unwrap();
    let mut sb = js.get_stream(&b.events_stream).await.unwrap();
    assert_eq!(sa.info().await.unwrap().state.messages, 1);
    assert_eq!(sb.info().await.unwrap().state.messages, 0);
}
