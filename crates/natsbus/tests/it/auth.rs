use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerError};
use futures::StreamExt;
use natsbus::auth::{AuthSetup, Identity};
use test_support::{NatsServer, isolated_topology};
use wire_models::{AgentId, EventKind};

pub(crate) struct Secured {
    pub(crate) server: NatsServer,
    pub(crate) setup: AuthSetup,
    pub(crate) topology: natsbus::Topology,
}

pub(crate) async fn secured() -> Secured {
    test_support::init_tracing();
    let setup = AuthSetup::generate("OPSPILOT").unwrap();
    let topology = isolated_topology();
    let dir = tempfile::tempdir().unwrap().keep();
    let auth = setup.server_config(&dir.join("resolver"), &topology, &BTreeMap::new()).unwrap();
    let server = NatsServer::start_with_config(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\n{}\n{auth}", test_support::jetstream_config(store))
    })
    .await;
    Secured { server, setup, topology }
}

/// What pushes account updates (revocations) to the test server, as the gateway does.
pub(crate) async fn pusher(s: &Secured) -> natsbus::auth::RevocationPusher {
    let (system, _) = connect(s, &s.setup.system_creds().unwrap(), natsbus::auth::SYSTEM_USER).await;
    natsbus::auth::RevocationPusher {
        spec: s.setup.account_spec().unwrap(),
        topology: s.topology.clone(),
        operator_signer: s.setup.operator_signer().unwrap(),
        system,
    }
}

/// A client connected with `creds`, recording the server errors it receives.
pub(crate) async fn connect(
    s: &Secured,
    creds: &str,
    name: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&errors);
    let client = ConnectOptions::with_credentials(creds)
        .unwrap()
        .name(name)
        .custom_inbox_prefix(natsbus::auth::inbox_prefix(name))
        .event_callback(move |event| {
            let sink = Arc::clone(&sink);
            async move {
                if let Event::ServerError(err) = event {
                    let text = match err {
                        ServerError::AuthorizationViolation => "authorization violation".to_owned(),
                        ServerError::Other(text) => text,
                        ServerError::SlowConsumer(_) => "slow consumer".to_owned(),
                    };
                    sink.lock().unwrap().push(text);
                }
            }
        })
        .connect(s.server.url())
        .await
        .unwrap();
    (client, errors)
}

pub(crate) async fn violations(errors: &Arc<Mutex<Vec<String>>>, needle: &str) -> bool {
    for _ in 0..100 {
        if errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation") && e.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn an_agent_is_confined_to_its_own_subjects() {
    let s = secured().await;
    let root = s.setup.service_creds(&Identity::Superuser, &s.topology).unwrap();
    let (admin, _) = connect(&s, &root.creds, "superuser").await;
    let js = async_nats::jetstream::new(admin.clone());
    natsbus::ensure_topology(&js, &s.topology).await.unwrap();

    let issuer = s.setup.issuer(Duration::from_secs(3600)).unwrap();
    let (a, b) = (AgentId::parse("aaaaaaaaaaaa").unwrap(), AgentId::parse("bbbbbbbbbbbb").unwrap());
    let creds_a = issuer.issue(&a, None).unwrap().creds_file().unwrap();
    let name_a = Identity::Agent(a.clone()).name();
    let (agent, errors) = connect(&s, &creds_a, &name_a).await;
    let agent_js = async_nats::jetstream::new(agent.clone());
    let subjects = &s.topology.subjects;
    let kind = EventKind::parse("oom").unwrap();

    // Its own protocol works: an event (acked), its heartbeat key, its RPC subject.
    agent_js.publish(subjects.event(&a, &kind), "{}".into()).await.unwrap().await.unwrap();
    agent_js.publish(subjects.inventory(&a), "{}".into()).await.unwrap().await.unwrap();
    let kv = agent_js.get_key_value(&s.topology.agents_bucket).await.unwrap();
    kv.put(a.as_str(), "hb".into()).await.unwrap();
    let mut rpc = agent.subscribe(subjects.rpc(&a)).await.unwrap();
    agent.flush().await.unwrap();
    tokio::spawn({
        let agent = agent.clone();
        async move {
            if let Some(msg) = rpc.next().await {
                agent.publish(msg.reply.unwrap(), "pong".into()).await.unwrap();
            }
        }
    });
    // The agent's own connection may not echo anything back (it can publish nowhere
    // it can subscribe), so wait for its subscription by asking until it answers.
    let reply = test_support::eventually(Duration::from_secs(10), "the agent's rpc subscription", || {
        let admin = admin.clone();
        let subject = subjects.rpc(&a);
        async move {
            match admin.request(subject, "ping".into()).await {
                Ok(reply) => Some(reply),
                Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => None,
                Err(err) => panic!("request failed: {err}"),
            }
        }
    })
    .await;
    assert_eq!(&reply.payload[..], b"pong");

    // Someone else's subjects are refused, each as a permissions violation.
    agent.publish(subjects.event(&b, &kind), "{}".into()).await.unwrap();
    assert!(violations(&errors, &subjects.event(&b, &kind)).await, "{:?}", errors.lock().unwrap());
    agent.publish(format!("$KV.{}.{b}", s.topology.agents_bucket), "hb".into()).await.unwrap();
    assert!(violations(&errors, &format!("$KV.{}.{b}", s.topology.agents_bucket)).await);
    agent.publish(subjects.rpc(&b), "x".into()).await.unwrap();
    assert!(violations(&errors, &subjects.rpc(&b)).await);
    let _spy = agent.subscribe(subjects.rpc(&b)).await.unwrap();
    assert!(violations(&errors, &subjects.rpc(&b)).await);
    let _spy_all = agent.subscribe(subjects.all_rpc()).await.unwrap();
    assert!(violations(&errors, &subjects.all_rpc()).await);
    let _inboxes = agent.subscribe("_INBOX.>").await.unwrap();
    assert!(violations(&errors, "_INBOX.>").await);

    // Nothing of that reached the streams: only A's own event and snapshot.
    agent.flush().await.unwrap();
    let mut events = js.get_stream(&s.topology.events_stream).await.unwrap();
    assert_eq!(events.info().await.unwrap().state.messages, 1);
    let admin_kv = js.get_key_value(&s.topology.agents_bucket).await.unwrap();
    assert!(admin_kv.get(b.as_str()).await.unwrap().is_none());
}

#[tokio::test]
async fn unauthenticated_and_forged_connections_are_refused() {
    let s = secured().await;
    let anonymous =
        ConnectOptions::new().connection_timeout(Duration::from_secs(2)).connect(s.server.url()).await;
    assert!(anonymous.is_err(), "an anonymous client must be refused");
    // Credentials signed by a key the account does not know.
    let other = AuthSetup::generate("OTHER").unwrap();
    let forged = other.service_creds(&Identity::Superuser, &s.topology).unwrap();
    let refused = ConnectOptions::with_credentials(&forged.creds)
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(s.server.url())
        .await;
    assert!(refused.is_err(), "credentials from another operator must be refused");
}

#[tokio::test]
async fn a_revoked_agent_is_disconnected_and_cannot_come_back() {
    let s = secured().await;
    let issuer = s.setup.issuer(Duration::from_secs(3600)).unwrap();
    let agent = AgentId::parse("cccccccccccc").unwrap();
    let issued = issuer.issue(&agent, None).unwrap();
    let creds = issued.creds_file().unwrap();
    let (client, _) = connect(&s, &creds, &Identity::Agent(agent.clone()).name()).await;
    assert_eq!(client.connection_state(), async_nats::connection::State::Connected);

    let pusher = pusher(&s).await;
    let mut revocations = BTreeMap::new();
    revocations.insert(issued.user_public_key.clone(), chrono::Utc::now().timestamp() + 1);
    pusher.push(&revocations).await.unwrap();

    test_support::eventually(Duration::from_secs(5), "the revoked agent to be disconnected", || {
        let state = client.connection_state();
        async move { (state != async_nats::connection::State::Connected).then_some(()) }
    })
    .await;
    let again = ConnectOptions::with_credentials(&creds)
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(s.server.url())
        .await;
    assert!(again.is_err(), "revoked credentials must not connect again");

    // A fresh agent is unaffected.
    let other = issuer.issue(&AgentId::parse("dddddddddddd").unwrap(), None).unwrap();
    let (fresh, _) = connect(&s, &other.creds_file().unwrap(), "agent-dddddddddddd").await;
    assert_eq!(fresh.connection_state(), async_nats::connection::State::Connected);
}

#[tokio::test]
async fn an_agent_key_generated_by_the_agent_only_gets_a_jwt() {
    let s = secured().await;
    let issuer = s.setup.gateway_keys().unwrap().issuer(Duration::from_secs(600)).unwrap();
    let own = natsbus::auth::KeyPair::new_user();
    let agent = AgentId::parse("eeeeeeeeeeee").unwrap();
    let issued = issuer.issue(&agent, Some(&own.public_key())).unwrap();
    assert!(issued.seed.is_none());
    let creds = natsbus::auth::creds_file(&issued.jwt, &own.seed().unwrap());
    let (client, _) = connect(&s, &creds, &Identity::Agent(agent).name()).await;
    assert_eq!(client.connection_state(), async_nats::connection::State::Connected);
    // A non-user key is refused.
    assert!(
        issuer
            .issue(
                &AgentId::parse("ffffffffffff").unwrap(),
                Some(&natsbus::auth::KeyPair::new_account().public_key())
            )
            .is_err()
    );
}

#[tokio::test]
async fn the_ingestor_cannot_send_actions() {
    let s = secured().await;
    let creds = s.setup.service_creds(&Identity::EventIngestor, &s.topology).unwrap();
    let (client, errors) = connect(&s, &creds.creds, "event-ingestor").await;
    let target = AgentId::parse("aaaaaaaaaaaa").unwrap();
    client.publish(s.topology.subjects.rpc(&target), "restart".into()).await.unwrap();
    assert!(violations(&errors, &s.topology.subjects.rpc(&target)).await);
}

/// Regenerating the server configuration (re-running nats-init with the same keys) and
/// restarting the server must not bring a revoked agent back.
#[tokio::test]
async fn a_regenerated_configuration_keeps_revocations() {
    let setup = AuthSetup::generate("OPSPILOT").unwrap();
    let topology = isolated_topology();
    let dir = tempfile::tempdir().unwrap().keep();
    let config =
        |setup: &AuthSetup| setup.server_config(&dir.join("resolver"), &topology, &BTreeMap::new()).unwrap();
    let first = config(&setup);
    let expected = first.clone();
    let mut server = NatsServer::start_with_config(|port, store| {
        format!("host: 127.0.0.1\nport: {port}\n{}\n{first}", test_support::jetstream_config(store))
    })
    .await;
    let s = Secured { server, setup, topology: topology.clone() };
    let issued = s
        .setup
        .issuer(Duration::from_secs(3600))
        .unwrap()
        .issue(&AgentId::parse("aaaa0000aaaa").unwrap(), None)
        .unwrap();
    let pusher = pusher(&s).await;
    // The push must be newer than the configuration's JWT (same second otherwise).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pusher
        .push(&BTreeMap::from([(issued.user_public_key.clone(), chrono::Utc::now().timestamp() + 1)]))
        .await
        .unwrap();

    // nats-init again: the same keys give the same configuration.
    assert_eq!(config(&s.setup), expected);
    server = s.server;
    server.restart().await;
    let refused = ConnectOptions::with_credentials(&issued.creds_file().unwrap())
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await;
    assert!(refused.is_err(), "the revocation must survive a restart with a regenerated configuration");
}
