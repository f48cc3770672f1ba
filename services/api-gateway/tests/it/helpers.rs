use std::sync::Arc;
use std::time::Duration;

use agent_sim::{Bus, Fleet, FleetConfig, RpcBehaviour, RpcMode, SimAgent};
use api_gateway::{Config, Running};
use natsbus::auth::Identity;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::Stack;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire_models::AgentId;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery staple";
pub const BOOTSTRAP: &str = "bootstrap-token-for-tests-0123";

/// A running gateway against a private stack, with one user per role.
pub struct Api {
    pub stack: Stack,
    pub base: String,
    pub http: reqwest::Client,
    pub viewer: String,
    pub operator: String,
    pub admin: String,
    admin_addr: std::net::SocketAddr,
    running: Option<Running>,
    shutdown: CancellationToken,
}

pub async fn start(extra: &[&str]) -> Api {
    let stack = Stack::start().await;
    let js = stack.jetstream().await;
    natsbus::ensure_topology(&js, &stack.topology).await.unwrap();
    start_on(stack, extra).await
}

/// The arguments every in-process gateway starts with: any free port, the test
/// secret, and this stack's NATS, Postgres and Redis.
pub fn base_args(stack: &Stack) -> Vec<String> {
    let mut args = vec![
        "api-gateway".to_owned(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--jwt-secret-file".into(),
        stack.secret_file("jwt-secret", SECRET),
    ];
    args.extend(stack.args_for(&natsbus::auth::Identity::ApiGateway));
    args.extend(stack.redis_args());
    args
}

/// Logs in with [`PASSWORD`] at a gateway started as a process; the access token.
pub async fn login_at(base: &str, email: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn config_for(stack: &Stack, extra: &[&str]) -> Config {
    let mut args = base_args(stack);
    args.extend([
        "--bootstrap-token-file".to_owned(),
        stack.secret_file("bootstrap-token", BOOTSTRAP),
        "--rpc-timeout".into(),
        "1s".into(),
        "--analyze-timeout".into(),
        "3s".into(),
        // Tests make many requests from one address; the limits have their own tests.
        "--rate-limit-ip".into(),
        "0".into(),
        "--rate-limit-user".into(),
        "0".into(),
    ]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config = test_support::parse_config::<Config>(args);
    config.validate().unwrap();
    config
}

pub async fn start_on(stack: Stack, extra: &[&str]) -> Api {
    let config = config_for(&stack, extra);
    let shutdown = CancellationToken::new();
    let running = api_gateway::start(config, shutdown.clone()).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let admin_addr = running.admin_addr;
    let mut api = Api {
        admin_addr,
        stack,
        base,
        http,
        viewer: String::new(),
        operator: String::new(),
        admin: String::new(),
        running: Some(running),
        shutdown,
    };
    for role in ["viewer", "operator", "admin"] {
        let email = format!("{role}@example.com");
        add_user(&api.stack, &email, role).await;
        let token = api.login(&email, PASSWORD).await;
        match role {
            "viewer" => api.viewer = token,
            "operator" => api.operator = token,
            _ => api.admin = token,
        }
    }
    api
}

pub async fn add_user(stack: &Stack, email: &str, role: &str) {
    use argon2::password_hash::PasswordHasher;
    let hash = argon2::Argon2::default().hash_password(PASSWORD.as_bytes()).unwrap().to_string();
    storage::users::create(&stack.db.pool, email, &hash, role).await.unwrap();
}

impl Api {
    /// The admin port (`/metrics`, probes).
    pub fn admin_base(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Sends a request; returns the status and the JSON body (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Registers agents and marks them online, as the presence tracker would.
    pub async fn online_fleet(&self, seed: &str, n: usize) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet::numbered(seed, n));
        let agents: Vec<_> = fleet.agents().iter().map(|a| (a.id.clone(), a.hostname.clone())).collect();
        storage::agents::register_many(&self.stack.db.pool, &agents).await.unwrap();
        let ids: Vec<String> = agents.iter().map(|(id, _)| id.to_string()).collect();
        sqlx::query("UPDATE agents SET status = 'online', status_changed_at = now(), last_seen_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&self.stack.db.pool)
            .await
            .unwrap();
        fleet
    }

    /// Starts the fleet's RPC responder; returns the token that stops it.
    pub async fn serve_rpc(&self, fleet: &Arc<Fleet>, behaviour: RpcBehaviour) -> CancellationToken {
        let bus = Bus::new(
            self.stack.client().await,
            self.stack.topology.subjects.clone(),
            &self.stack.topology.agents_bucket,
        )
        .await
        .unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(fleet).serve_rpc(bus, behaviour, RpcMode::PerAgent, stop.clone()));
        // The subscriptions are made in order on one connection: once the last agent's
        // subject has a responder, every one has. A probe that is no request gets an
        // error reply (or none from a silent agent); only "no responders" means not yet.
        let last = fleet.agents().last().expect("a fleet with agents").id.clone();
        let probe = self.stack.client().await;
        test_support::eventually(Duration::from_secs(10), "the simulated agents' rpc subscriptions", || {
            let (probe, subject) = (probe.clone(), self.stack.topology.subjects.rpc(&last));
            async move {
                let request = async_nats::Request::new()
                    .payload("probe".into())
                    .timeout(Some(Duration::from_millis(100)));
                match probe.send_request(subject, request).await {
                    Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => None,
                    _ => Some(()),
                }
            }
        })
        .await;
        stop
    }

    /// Inserts an incident for an agent and returns its id.
    pub async fn incident(&self, agent: &str, kind: &str, raw_error: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO incidents (agent_id, type, source, raw_error, severity, is_critical, event_id, fingerprint, dedup_key)
             VALUES ($1, $2, 'test', $3, 'critical', true, gen_random_uuid(), md5(random()::text), md5(random()::text))
             RETURNING id",
        )
        .bind(agent)
        .bind(kind)
        .bind(raw_error)
        .fetch_one(&self.stack.db.pool)
        .await
        .unwrap()
    }

    /// Waits until the outcomes this gateway has queued are written: what its audit
    /// endpoint does before it reads, so a client reads its own.
    pub async fn settle_audit(&self) {
        let (status, body) = self.get("/api/v1/audit?limit=1", &self.admin).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// (action, outcome) of each audit row of `agent`, oldest first.
    pub async fn audit_outcomes(&self, agent: &str) -> Vec<(String, String)> {
        self.settle_audit().await;
        sqlx::query_as("SELECT action, outcome FROM audit_log WHERE agent_id = $1 ORDER BY id")
            .bind(agent)
            .fetch_all(&self.stack.db.pool)
            .await
            .unwrap()
    }

    /// A second gateway on the same stack, as another replica behind a load balancer.
    pub async fn replica(&self, extra: &[&str]) -> Replica {
        let shutdown = CancellationToken::new();
        let running = api_gateway::start(config_for(&self.stack, extra), shutdown.clone()).await.unwrap();
        Replica { base: format!("http://{}", running.addr), running, shutdown }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            test_support::lifecycle::stop_within(&self.shutdown, running.wait(), Duration::from_secs(20))
                .await;
        }
        self.shutdown.cancel();
    }
}

/// Asserts a problem document with the given status and type slug.
pub fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, slug: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["type"], format!("urn:opspilot:problem:{slug}"), "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
}

/// Another gateway process on an [`Api`]'s stack.
pub struct Replica {
    pub base: String,
    running: Running,
    shutdown: CancellationToken,
}

impl Replica {
    pub async fn stop(self) {
        test_support::lifecycle::stop_within(&self.shutdown, self.running.wait(), Duration::from_secs(20))
            .await;
    }
}

/// An ai-analyzer (rules, no AI key) on `stack`, with `extra` arguments.
pub async fn start_analyzer(stack: &Stack, extra: &[&str]) -> (ai_analyzer::Running, CancellationToken) {
    let mut args = vec!["ai-analyzer".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(stack.args_for(&natsbus::auth::Identity::AiAnalyzer));
    args.extend(stack.redis_args());
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let config = test_support::parse_config::<ai_analyzer::Config>(args);
    config.validate().unwrap();
    let shutdown = CancellationToken::new();
    (ai_analyzer::start(config, shutdown.clone()).await.unwrap(), shutdown)
}

impl Api {
    /// A `service_down` incident of nginx on `agent`: the rules suggest restarting nginx.
    pub async fn nginx_incident(&self, agent: &str) -> i64 {
        let id = self
            .incident(agent, "service_down", "nginx.service: Main process exited, code=killed, status=9/KILL")
            .await;
        sqlx::query("UPDATE incidents SET source = 'nginx' WHERE id = $1")
            .bind(id)
            .execute(&self.stack.db.pool)
            .await
            .unwrap();
        id
    }
}

/// An enrolled simulated agent on its own NATS connection and credentials, which can
/// be stopped (no heartbeats, no answers) and started again.
pub struct Agent {
    pub fleet: Arc<Fleet>,
    pub bus: Bus,
    running: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl Agent {
    pub fn sim(&self) -> &SimAgent {
        &self.fleet.agents()[0]
    }

    pub fn id(&self) -> &AgentId {
        &self.sim().id
    }

    /// Starts heartbeating (every `heartbeat`) and answering requests.
    pub fn start(&mut self, heartbeat: Duration) {
        assert!(self.running.is_none());
        let config = FleetConfig {
            heartbeat_interval: heartbeat,
            rpc: RpcBehaviour::default(),
            rpc_mode: RpcMode::PerAgent,
            ..FleetConfig::default()
        };
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (fleet, bus, stop) = (Arc::clone(&self.fleet), self.bus.clone(), stop.clone());
            async move { fleet.run(bus, config, stop).await }
        });
        self.running = Some((stop, run));
    }

    pub async fn stop(&mut self) {
        let (stop, run) = self.running.take().expect("a running agent");
        stop.cancel();
        run.await.unwrap().unwrap();
    }
}

/// Enrolls `n` simulated agents through the API, each connected with its own credentials.
pub async fn enroll_agents(api: &Api, n: usize) -> Vec<Agent> {
    let seed = Fleet::numbered(&format!("e2e-{}", api.stack.redis_prefix), n);
    let mut agents = Vec::new();
    for enrolled in agent_sim::enroll::enroll(&api.base, BOOTSTRAP, &seed).await.unwrap() {
        let client = agent_sim::enroll::connect_as(&enrolled, Duration::from_secs(5)).await.unwrap();
        let bus = Bus::new(client, api.stack.topology.subjects.clone(), &api.stack.topology.agents_bucket)
            .await
            .unwrap();
        agents.push(Agent { fleet: Arc::new(Fleet::from_agents(vec![enrolled.agent])), bus, running: None });
    }
    agents
}

/// The three other services, in-process on this stack, each with its own identity.
pub struct Services {
    pub stop: CancellationToken,
    pub ingestor: event_ingestor::Running,
    pub tracker: presence_tracker::Running,
    pub analyzer: ai_analyzer::Running,
}

impl Services {
    pub async fn start(api: &Api) -> Self {
        let stop = CancellationToken::new();
        let args = |name: &str, identity: &Identity, redis: bool, extra: &[&str]| {
            let mut args = vec![name.to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
            args.extend(api.stack.args_for(identity));
            if redis {
                args.extend(api.stack.redis_args());
            }
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        };
        let ingestor = test_support::parse_config::<event_ingestor::Config>(args(
            "event-ingestor",
            &Identity::EventIngestor,
            false,
            &[],
        ));
        let tracker = test_support::parse_config::<presence_tracker::Config>(args(
            "presence-tracker",
            &Identity::PresenceTracker,
            true,
            // Every heartbeat reaches `last_seen_at` in Postgres within a second, where
            // the tests look for them.
            &[
                "--missed-heartbeats",
                "3",
                "--reconcile-interval",
                "250ms",
                "--flush-interval",
                "1s",
                "--last-seen-resolution",
                "0s",
            ],
        ));
        // No OpenRouter key: the rules analyzer answers.
        let analyzer = test_support::parse_config::<ai_analyzer::Config>(args(
            "ai-analyzer",
            &Identity::AiAnalyzer,
            true,
            &["--auto-analyze", "true"],
        ));
        analyzer.validate().unwrap();
        Self {
            ingestor: event_ingestor::start(ingestor, stop.clone()).await.unwrap(),
            tracker: presence_tracker::start(tracker, stop.clone()).await.unwrap(),
            analyzer: ai_analyzer::start(analyzer, stop.clone()).await.unwrap(),
            stop,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let all = async {
            let (a, b, c) = tokio::join!(self.ingestor.wait(), self.tracker.wait(), self.analyzer.wait());
            a.unwrap();
            b.unwrap();
            c.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(20), all).await.expect("the services stop within 20 s");
    }
}
