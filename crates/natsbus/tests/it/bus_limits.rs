//! What the bus refuses a hostile agent: rollups and purges of the heartbeat bucket,
//! oversize messages, many subscriptions, unbounded streams; and how rotated
//! service credentials are picked up.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use natsbus::auth::{AGENT_MAX_PAYLOAD, AGENT_MAX_SUBSCRIPTIONS, Identity};
use wire_models::AgentId;

use crate::auth::{connect, secured, violations};

fn agent(n: usize) -> AgentId {
    AgentId::parse(&format!("{n:012x}")).unwrap()
}

#[tokio::test]
async fn an_agent_cannot_roll_up_or_purge_the_heartbeat_bucket() {
    let s = secured().await;
    let root = s.setup.service_creds(&Identity::Superuser, &s.topology).unwrap();
    let (admin, _) = connect(&s, &root.creds, "superuser").await;
    let js = jetstream::new(admin.clone());
    natsbus::ensure_topology(&js, &s.topology).await.unwrap();
    let bucket = js.get_key_value(&s.topology.agents_bucket).await.unwrap();
    for n in 1..=8 {
        bucket.put(agent(n).as_str(), format!("hb-{n}").into()).await.unwrap();
    }

    let issuer = s.setup.issuer(Duration::from_secs(3600)).unwrap();
    let attacker = agent(1);
    let creds = issuer.issue(&attacker, None).unwrap().creds_file().unwrap();
    let (client, errors) = connect(&s, &creds, &Identity::Agent(attacker.clone()).name()).await;
    let agent_js = jetstream::new(client.clone());
    let own_key = format!("$KV.{}.{attacker}", s.topology.agents_bucket);
    let attempts: [&[(&str, &str)]; 4] = [
        &[("Nats-Rollup", "all")],
        &[("Nats-Rollup", "sub")],
        &[("KV-Operation", "PURGE"), ("Nats-Rollup", "sub")],
        &[("KV-Operation", "PURGE"), ("Nats-Rollup", "all")],
    ];
    for headers in attempts {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        let outcome = agent_js.publish_with_headers(own_key.clone(), map, "x".into()).await.unwrap().await;
        let err = outcome.expect_err("a rollup must be refused");
        assert!(err.to_string().contains("rollup"), "{headers:?}: {err}");
    }
    // The JetStream API itself is out of an agent's reach.
    client
        .publish(format!("$JS.API.STREAM.PURGE.{}", s.topology.agents_bucket_stream()), "{}".into())
        .await
        .unwrap();
    assert!(violations(&errors, "$JS.API.STREAM.PURGE").await, "{:?}", errors.lock().unwrap());

    // Every other agent's heartbeat is still there, and the attacker's own key too.
    for n in 1..=8 {
        let entry = bucket.get(agent(n).as_str()).await.unwrap();
        assert_eq!(entry.as_deref(), Some(format!("hb-{n}").as_bytes()), "agent {n}");
    }
    // Purging through the API is refused even for the backend: nothing should do it.
    let purge = js.get_stream(s.topology.agents_bucket_stream()).await.unwrap().purge().await;
    assert!(purge.is_err(), "the bucket's stream must deny purges");
}

#[tokio::test]
async fn a_bucket_created_with_rollups_allowed_loses_them() {
    let server = test_support::NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let topology = test_support::isolated_topology();
    // As an older version created it: the client library's helper allows rollups.
    js.create_key_value(kv::Config {
        bucket: topology.agents_bucket.clone(),
        history: 1,
        max_value_size: 4096,
        ..Default::default()
    })
    .await
    .unwrap();
    let before =
        js.get_stream(topology.agents_bucket_stream()).await.unwrap().info().await.unwrap().config.clone();
    assert!(before.allow_rollup);
    natsbus::ensure_topology(&js, &topology).await.unwrap();
    let after =
        js.get_stream(topology.agents_bucket_stream()).await.unwrap().info().await.unwrap().config.clone();
    assert!(!after.allow_rollup);
    assert!(after.deny_purge && after.deny_delete);
    assert_eq!(after.max_bytes, i64::try_from(topology.max_bytes.agents_bucket).unwrap());
    // Still a bucket: puts, gets and watches work.
    let bucket = js.get_key_value(&topology.agents_bucket).await.unwrap();
    bucket.put("a1b2c3d4e5f6", "hb".into()).await.unwrap();
    assert_eq!(bucket.get("a1b2c3d4e5f6").await.unwrap().as_deref(), Some(&b"hb"[..]));
}

#[tokio::test]
async fn an_agent_cannot_send_oversize_messages_or_hold_many_subscriptions() {
    let s = secured().await;
    let root = s.setup.service_creds(&Identity::Superuser, &s.topology).unwrap();
    let (admin, _) = connect(&s, &root.creds, "superuser").await;
    natsbus::ensure_topology(&jetstream::new(admin.clone()), &s.topology).await.unwrap();
    let issuer = s.setup.issuer(Duration::from_secs(3600)).unwrap();
    let id = agent(42);
    let creds = issuer.issue(&id, None).unwrap().creds_file().unwrap();
    let (client, errors) = connect(&s, &creds, &Identity::Agent(id.clone()).name()).await;

    // The server refuses the message (and drops the connection, which the client
    // re-establishes): nothing of it reaches the stream.
    let kind = wire_models::EventKind::parse("oom").unwrap();
    let subject = s.topology.subjects.event(&id, &kind);
    let oversize = vec![b'x'; usize::try_from(AGENT_MAX_PAYLOAD).unwrap() + 1];
    client.publish(subject.clone(), oversize.into()).await.unwrap();
    test_support::eventually(Duration::from_secs(5), "the payload violation", || {
        let found = errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains("maximum payload"));
        async move { found.then_some(()) }
    })
    .await;
    let mut events = jetstream::new(admin.clone()).get_stream(&s.topology.events_stream).await.unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 0);
    test_support::eventually(Duration::from_secs(10), "the agent to reconnect", || {
        let state = client.connection_state();
        async move { (state == async_nats::connection::State::Connected).then_some(()) }
    })
    .await;

    // A message of the largest legal size still goes through.
    let js = jetstream::new(client.clone());
    let legal = vec![b'x'; 512 * 1024];
    js.publish(subject.clone(), legal.into()).await.unwrap().await.unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 1);

    // Subscriptions beyond the limit are refused by the server.
    let mut subs = Vec::new();
    let allowed = usize::try_from(AGENT_MAX_SUBSCRIPTIONS).unwrap();
    for _ in 0..allowed + 2 {
        subs.push(client.subscribe(s.topology.subjects.rpc(&id)).await.unwrap());
    }
    test_support::eventually(Duration::from_secs(5), "the subscription limit error", || {
        let found = errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains("maximum subscriptions"));
        async move { found.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn every_stream_is_bounded_and_the_account_refuses_unbounded_ones() {
    let s = secured().await;
    let root = s.setup.service_creds(&Identity::Superuser, &s.topology).unwrap();
    let (admin, _) = connect(&s, &root.creds, "superuser").await;
    let js = jetstream::new(admin);
    natsbus::ensure_topology(&js, &s.topology).await.unwrap();
    for name in [
        &s.topology.events_stream,
        &s.topology.inventory_stream,
        &s.topology.dlq_stream,
        &s.topology.incidents_stream,
        &s.topology.agents_bucket_stream(),
    ] {
        let config = js.get_stream(name).await.unwrap().info().await.unwrap().config.clone();
        assert!(config.max_bytes > 0, "{name} has no max_bytes");
    }
    let unbounded = js
        .create_stream(stream::Config {
            name: "UNBOUNDED".into(),
            subjects: vec!["unbounded.>".into()],
            ..Default::default()
        })
        .await;
    assert!(unbounded.is_err(), "the account must require max_bytes");
    // And the account as a whole cannot take more than its disk limit.
    let huge = js
        .create_stream(stream::Config {
            name: "HUGE".into(),
            subjects: vec!["huge.>".into()],
            max_bytes: s.setup.jetstream.disk_bytes,
            ..Default::default()
        })
        .await;
    assert!(huge.is_err(), "streams beyond the account's storage must be refused");
}

#[tokio::test]
async fn rotated_service_credentials_are_picked_up_on_reconnect() {
    let s = secured().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("event-ingestor.creds");
    let first = s.setup.service_creds(&Identity::EventIngestor, &s.topology).unwrap();
    std::fs::write(&path, &first.creds).unwrap();
    let url = s.server.url();
    let config = crate::connect::config(&["--nats-urls", &url, "--nats-creds", path.to_str().unwrap()]);
    let client = natsbus::connect(&config, "event-ingestor").await.unwrap();

    // Rotation: new credentials in the file, the old key revoked.
    let second = s.setup.service_creds(&Identity::EventIngestor, &s.topology).unwrap();
    std::fs::write(&path, &second.creds).unwrap();
    let pusher = crate::auth::pusher(&s).await;
    pusher
        .push(&BTreeMap::from([(first.user_public_key.clone(), chrono::Utc::now().timestamp() + 1)]))
        .await
        .unwrap();
    // Dropped for the old key, back with the new one, and working.
    test_support::eventually(Duration::from_secs(15), "the reconnect with the new credentials", || {
        let client = client.clone();
        async move {
            let stats = client.statistics();
            let reconnected = stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 2;
            (reconnected && client.connection_state() == async_nats::connection::State::Connected)
                .then_some(())
        }
    })
    .await;
    jetstream::new(client).query_account().await.unwrap();
}
