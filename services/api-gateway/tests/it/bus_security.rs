//! Agents confined to their own subjects, end to end: an agent enrolled through the API
//! does everything its protocol needs with its own credentials, and revoking it through
//! the API cuts it off.

use std::sync::Arc;
use std::time::Duration;

use agent_sim::{Bus, Fleet, FleetConfig, RpcBehaviour, RpcMode, SimAgent};
use natsbus::auth::Identity;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[tokio::test]
async fn an_enrolled_agent_works_end_to_end_with_its_own_identity_until_revoked() {
    let api = start(&[]).await;
    // The ingestor and the tracker run with their own identities too.
    let stop = CancellationToken::new();
    let mut args = vec!["event-ingestor".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(api.stack.args_for(&Identity::EventIngestor));
    let ingestor =
        event_ingestor::start(test_support::parse_config::<event_ingestor::Config>(args), stop.clone())
            .await
            .unwrap();
    let mut args = vec!["presence-tracker".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(api.stack.args_for(&Identity::PresenceTracker));
    args.extend(api.stack.redis_args());
    let tracker =
        presence_tracker::start(test_support::parse_config::<presence_tracker::Config>(args), stop.clone())
            .await
            .unwrap();

    // Enrollment hands out credentials of the agent's own.
    let seed = Fleet::from_agents(vec![SimAgent::numbered("secure", 0)]);
    let enrolled = agent_sim::enroll::enroll(&api.base, BOOTSTRAP, &seed).await.unwrap().remove(0);
    let creds = enrolled.creds.clone().expect("credentials at enrollment");
    assert!(creds.contains("BEGIN NATS USER JWT") && creds.contains("BEGIN USER NKEY SEED"));
    let id = enrolled.agent.id.clone();
    let client = agent_sim::enroll::connect_as(&enrolled, Duration::from_secs(5)).await.unwrap();
    let bus =
        Bus::new(client.clone(), api.stack.topology.subjects.clone(), &api.stack.topology.agents_bucket)
            .await
            .unwrap();
    let fleet = Arc::new(Fleet::from_agents(vec![enrolled.agent]));
    let agent_stop = CancellationToken::new();
    let config = FleetConfig {
        heartbeat_interval: Duration::from_secs(1),
        events_per_sec: 5.0,
        inventory_interval: Some(Duration::from_secs(1)),
        rpc_mode: RpcMode::PerAgent,
        rpc: RpcBehaviour::default(),
        ..FleetConfig::default()
    };
    let running = tokio::spawn({
        let (fleet, bus, agent_stop) = (Arc::clone(&fleet), bus.clone(), agent_stop.clone());
        async move { fleet.run(bus, config, agent_stop).await }
    });

    // Heartbeats -> online; events -> incidents; inventory -> history; actions answered.
    let path = format!("/api/v1/agents/{id}");
    test_support::eventually(
        Duration::from_secs(15),
        "the agent online, with incidents and inventory",
        || {
            let (api, path) = (&api, &path);
            async move {
                let (_, agent) = api.get(path, &api.viewer).await;
                let (_, incidents) = api.get(&format!("{path}/incidents"), &api.viewer).await;
                (agent["presence"]["state"] == "online"
                    && agent["latest_inventory"].is_object()
                    && incidents["items"].as_array().is_some_and(|i| !i.is_empty()))
                .then_some(())
            }
        },
    )
    .await;
    let (status, reply) =
        api.post(&format!("{path}/execute"), &api.operator, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["output"], "pong");

    // Revoked through the API: disconnected within seconds, and it cannot come back.
    let (status, _) = api.call(Method::DELETE, &path, Some(&api.admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The execute just before filled this replica's cache of agents: revoking empties it.
    let (status, body) =
        api.post(&format!("{path}/execute"), &api.operator, json!({"command": "ping"})).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");

    test_support::eventually(Duration::from_secs(5), "the revoked agent disconnected", || {
        let state = client.connection_state();
        async move { (state != async_nats::connection::State::Connected).then_some(()) }
    })
    .await;
    let again = async_nats::ConnectOptions::with_credentials(&creds)
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(api.stack.nats.url())
        .await;
    assert!(again.is_err(), "revoked credentials must not connect again");
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(json!({"token": BOOTSTRAP, "machine_fingerprint": seed.agents()[0].machine_fingerprint(), "hostname": "h"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a revoked agent cannot enroll itself back");

    agent_stop.cancel();
    let _ = running.await;
    stop.cancel();
    ingestor.wait().await.unwrap();
    tracker.wait().await.unwrap();
    api.stop().await;
}

#[tokio::test]
async fn an_agent_key_pair_of_its_own_gets_a_jwt_only() {
    let api = start(&[]).await;
    let key = natsbus::auth::KeyPair::new_user();
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(json!({"token": BOOTSTRAP, "machine_fingerprint": "own-key-machine", "hostname": "h",
                        "nats_public_key": key.public_key()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let creds = &body["nats_credentials"];
    assert!(creds["seed"].is_null() && creds["creds"].is_null());
    assert_eq!(creds["user_public_key"], key.public_key());
    let claims = natsbus::auth::decode_claims(creds["jwt"].as_str().unwrap()).unwrap();
    assert_eq!(claims["sub"], key.public_key());
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/agents/enroll",
            None,
            Some(json!({"token": BOOTSTRAP, "machine_fingerprint": "own-key-machine-2", "hostname": "h",
                        "nats_public_key": natsbus::auth::KeyPair::new_account().public_key()})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    api.stop().await;
}

#[tokio::test]
async fn the_development_switch_runs_without_bus_security_and_says_so() {
    let stack = test_support::Stack::start().await;
    let mut env = stack.env_for(&Identity::ApiGateway);
    env.retain(|(k, _)| *k != "NATS_AUTH_DIR");
    // The stack's server is secured; the gateway still needs its own identity to connect.
    env.extend([
        ("JWT_SECRET", SECRET.to_owned()),
        ("OPSPILOT_INSECURE_BUS", "true".to_owned()),
        ("HTTP_ADDR", format!("127.0.0.1:{}", test_support::free_port())),
    ]);
    let mut gateway =
        test_support::process::ServiceProcess::spawn(&test_support::otlp::binary("api-gateway"), &env, &[]);
    gateway.wait_for_line("api-gateway ready", Duration::from_secs(30)).await;
    assert!(gateway.output().iter().any(|l| l.contains("bus security is OFF")), "the switch must warn");
    gateway.signal("TERM");
    assert_eq!(gateway.wait(Duration::from_secs(20)).await, Some(0));
}
