use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sim::{Bus, SimAgent};
use futures::StreamExt;
use presence_tracker::{Config, Running};
use test_support::Stack;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, PresenceChanged};

/// Heartbeat interval of the test agents; with `--missed-heartbeats 3` their threshold
/// is 3 s.
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const THRESHOLD: Duration = Duration::from_secs(3);

/// A stack with the topology in place and a bus for simulated agents. Its Redis keys
/// are deleted when the returned guard is dropped.
pub async fn setup() -> (Stack, Bus, RedisKeys) {
    let stack = Stack::start().await;
    let js = stack.jetstream().await;
    natsbus::ensure_topology(&js, &stack.topology).await.unwrap();
    let bus = Bus::new(stack.client().await, stack.topology.subjects.clone(), &stack.topology.agents_bucket)
        .await
        .unwrap();
    let keys = RedisKeys(stack.redis_prefix.clone());
    (stack, bus, keys)
}

/// Deletes every key under a test's prefix when dropped (never FLUSHDB: other tests
/// share the database).
pub struct RedisKeys(pub String);

impl RedisKeys {
    /// Deletes them now (Redis "losing its data", as far as this test is concerned).
    pub fn delete_all(&self) -> usize {
        let Ok(mut conn) = redis::Client::open(test_support::redis_url()).and_then(|c| c.get_connection())
        else {
            return 0;
        };
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.0)).query(&mut conn).unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
        keys.len()
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        self.delete_all();
    }
}

pub fn config(stack: &Stack, extra: &[&str]) -> Config {
    let mut args = vec![
        "presence-tracker".to_owned(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--missed-heartbeats".into(),
        "3".into(),
        "--reconcile-interval".into(),
        "1s".into(),
        "--flush-interval".into(),
        "1s".into(),
        "--watch-stall-timeout".into(),
        "3s".into(),
        "--shutdown-grace".into(),
        "5s".into(),
    ];
    args.extend(stack.args_for(&natsbus::auth::Identity::PresenceTracker));
    args.extend(stack.redis_args());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    test_support::parse_config(args)
}

pub async fn start(stack: &Stack, extra: &[&str]) -> (Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = presence_tracker::start(config(stack, extra), shutdown.clone()).await.unwrap();
    (running, shutdown)
}

pub async fn stop(running: Running, shutdown: CancellationToken) {
    test_support::lifecycle::stop_within(&shutdown, running.wait(), Duration::from_secs(20)).await;
}

/// `n` simulated agents, enrolled.
pub async fn agents(stack: &Stack, seed: &str, n: usize) -> Vec<Arc<SimAgent>> {
    let agents: Vec<Arc<SimAgent>> =
        (0..n).map(|i| Arc::new(SimAgent::numbered(&format!("{seed}-{}", stack.redis_prefix), i))).collect();
    let rows: Vec<_> = agents.iter().map(|a| (a.id.clone(), a.hostname.clone())).collect();
    storage::agents::register_many(&stack.db.pool, &rows).await.unwrap();
    agents
}

/// Puts a heartbeat for every agent that is not silent, every `INTERVAL`, until
/// dropped. Puts that fail (NATS down) are skipped, as an agent would.
pub struct Heartbeats(CancellationToken);

impl Heartbeats {
    pub fn start(bus: &Bus, agents: &[Arc<SimAgent>]) -> Self {
        let token = CancellationToken::new();
        let (stop, bus, agents) = (token.clone(), bus.clone(), agents.to_vec());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for agent in agents.iter().filter(|a| !a.is_silent()) {
                    let (bus, heartbeat) = (bus.clone(), agent.heartbeat(INTERVAL));
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), bus.put_heartbeat(&heartbeat)).await;
                    });
                }
            }
        });
        Self(token)
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

pub async fn status(stack: &Stack, id: &AgentId) -> String {
    sqlx::query_scalar("SELECT status FROM agents WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(&stack.db.pool)
        .await
        .unwrap()
}

/// Waits until Postgres says `state` for the agent; returns when it was seen.
pub async fn wait_status(stack: &Stack, id: &AgentId, state: &str, timeout: Duration) -> Instant {
    test_support::eventually(timeout, &format!("agent {id} {state}"), || async {
        (status(stack, id).await == state).then(Instant::now)
    })
    .await
}

/// The agent's transitions, oldest first: (state, reason).
pub async fn transitions(stack: &Stack, id: &AgentId) -> Vec<(String, String)> {
    sqlx::query_as("SELECT state, reason FROM presence_transitions WHERE agent_id = $1 ORDER BY id")
        .bind(id.as_str())
        .fetch_all(&stack.db.pool)
        .await
        .unwrap()
}

pub async fn scalar(stack: &Stack, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&stack.db.pool).await.unwrap()
}

/// Every `PresenceChanged` published on the stack while it lives.
#[derive(Clone, Default)]
pub struct Changes(Arc<Mutex<Vec<PresenceChanged>>>);

impl Changes {
    pub async fn subscribe(stack: &Stack) -> Self {
        let client = stack.client().await;
        let mut sub = client.subscribe(stack.topology.subjects.all_presence_changes()).await.unwrap();
        test_support::nats_round_trip(&client).await;
        let changes = Self::default();
        let seen = Arc::clone(&changes.0);
        tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                let change: PresenceChanged = wire_models::decode(&msg.payload).unwrap();
                assert_eq!(msg.subject.as_str().rsplit('.').next(), Some(change.agent_id.as_str()));
                seen.lock().unwrap().push(change);
            }
        });
        changes
    }

    pub fn of(&self, id: &AgentId) -> Vec<PresenceChanged> {
        self.0.lock().unwrap().iter().filter(|c| &c.agent_id == id).cloned().collect()
    }

    pub fn all(&self) -> Vec<PresenceChanged> {
        self.0.lock().unwrap().clone()
    }
}

/// The Redis view the API reads.
pub async fn redis_view(stack: &Stack, id: &AgentId) -> Option<presence::PresenceView> {
    let redis = stack.redis_config();
    let pool = storage::redis::connect(&redis).await.unwrap();
    let store = presence::PresenceStore::new(pool, presence::Keys::for_config(&redis));
    store.read(std::slice::from_ref(id)).await.unwrap().remove(id)
}
