//! One scenario's world: a private stack (nats-server in operator mode, a fresh
//! database, a Redis key prefix), the four services started as processes from the
//! built binaries, a fleet of simulated agents under load, and a few agents enrolled
//! through the API that connect with their own credentials and serve as presence
//! probes. Dependencies can sit behind a [`TcpProxy`] so a scenario can cut them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::{Bus, Fleet, FleetConfig, RpcMode, SimAgent};
use anyhow::Context as _;
use async_nats::jetstream::consumer::pull;
use natsbus::auth::Identity;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{Stack, TcpProxy};
use tokio_util::sync::CancellationToken;

use crate::binaries::Binaries;
use crate::mock_ai::MockAi;
use crate::proc::{Exit, Proc};
use crate::secrets::Secrets;

/// Shutdown grace period given to every service.
pub const GRACE: Duration = Duration::from_secs(10);
/// Heartbeat interval of the probe agents; with three missed heartbeats their offline
/// threshold is 6 s.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Heartbeat interval of the bulk fleet (threshold 15 s).
pub const FLEET_INTERVAL: Duration = Duration::from_secs(5);
/// How often the tracker's deadline scan runs.
pub const RECONCILE: Duration = Duration::from_secs(1);
/// Letters one agent may have parked per hour (`DLQ_AGENT_MESSAGES_PER_HOUR`, given to
/// every service explicitly; the services' default).
pub const DLQ_AGENT_MESSAGES_PER_HOUR: u64 = 1000;
/// Payload bytes one agent may have copied into the dead-letter stream per hour
/// (`DLQ_AGENT_BYTES_PER_HOUR`; the services' default).
pub const DLQ_AGENT_BYTES_PER_HOUR: u64 = 4 * 1024 * 1024;
/// The largest payload copied into one letter (`DLQ_MAX_PAYLOAD`; the default).
pub const DLQ_MAX_PAYLOAD: u64 = 64 * 1024;

/// The presence promise: no agent is in a wrong state for longer than its threshold
/// plus the reconcile interval plus a second, once a fault is over.
pub fn presence_bound() -> Duration {
    PROBE_INTERVAL * 3 + RECONCILE + Duration::from_secs(1)
}

const ADMIN_EMAIL: &str = "chaos-admin@example.com";
const VIEWER_EMAIL: &str = "chaos-viewer@example.com";

/// A service in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Ingestor,
    Tracker,
    Analyzer,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Gateway => "api-gateway",
            Kind::Ingestor => "event-ingestor",
            Kind::Tracker => "presence-tracker",
            Kind::Analyzer => "ai-analyzer",
        }
    }

    fn ready_line(self) -> &'static str {
        match self {
            Kind::Gateway => "api-gateway ready",
            Kind::Ingestor => "event-ingestor ready",
            Kind::Tracker => "presence-tracker ready",
            Kind::Analyzer => "ai-analyzer ready",
        }
    }

    fn identity(self) -> Identity {
        match self {
            Kind::Gateway => Identity::ApiGateway,
            Kind::Ingestor => Identity::EventIngestor,
            Kind::Tracker => Identity::PresenceTracker,
            Kind::Analyzer => Identity::AiAnalyzer,
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub ingestors: usize,
    /// Agents of the bulk fleet (registered directly, publishing as the simulator).
    pub fleet: usize,
    /// Presence probes: each is one agent that falls silent during a fault and one that
    /// starts only after it.
    pub probes: usize,
    /// Put Postgres behind a proxy the scenario can cut.
    pub db_proxy: bool,
    /// Put Redis behind a proxy the scenario can cut.
    pub redis_proxy: bool,
    /// The bulk fleet answers actions (for the HTTP run).
    pub fleet_rpc: bool,
    /// NATS nodes: 1 is a single server; more is a loopback cluster with every stream
    /// replicated on each node.
    pub nats_nodes: usize,
    /// The cluster's routes and client connections go through proxies, so a node can be
    /// cut off (`Stack::partition`).
    pub partitionable: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            ingestors: 2,
            fleet: 200,
            probes: 1,
            db_proxy: false,
            redis_proxy: false,
            fleet_rpc: false,
            nats_nodes: 1,
            partitionable: false,
        }
    }
}

struct Service {
    kind: Kind,
    name: String,
    /// The admin port (the HTTP port for the gateway), the same for every incarnation.
    port: u16,
    /// The port of `/healthz`, `/readyz` and `/metrics` (`ADMIN_ADDR`): the gateway's
    /// is its own, the other services' is `port`.
    admin_port: u16,
    incarnation: u32,
    proc: Option<Proc>,
    /// A signal was sent to the current incarnation: its exit is no crash.
    signalled: bool,
}

/// A presence probe: `leaving` falls silent when a fault begins, `newcomer` starts
/// speaking only once it is over.
pub struct Probe {
    pub leaving: Arc<SimAgent>,
    pub newcomer: Arc<SimAgent>,
}

/// When the probe agents changed state after a fault.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    pub leaving_offline_after: Duration,
    pub newcomer_online_after: Duration,
}

/// The running cluster of one scenario.
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub stack: Stack,
    bins: Binaries,
    pub secrets: Secrets,
    pub db_proxy: Option<TcpProxy>,
    pub redis_proxy: Option<TcpProxy>,
    services: Vec<Service>,
    jwt_secret: String,
    admin_password: String,
    bootstrap_token: String,
    openrouter_key: String,
    pub mock_ai: MockAi,
    pub http: reqwest::Client,
    pub api_base: String,
    pub admin_token: String,
    pub viewer_token: String,
    pub fleet: Arc<Fleet>,
    pub fleet_bus: Bus,
    /// An agent nobody enrolled (its events are dead-lettered).
    pub stranger: Arc<SimAgent>,
    pub steady: Arc<SimAgent>,
    pub probes: Vec<Probe>,
    /// Everything that runs in the background until [`Cluster::finish`].
    background: CancellationToken,
    /// Makes this cluster's agent ids and hostnames its own.
    token: String,
}

fn random_secret(prefix: &str) -> String {
    let bytes: [u8; 24] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

impl Cluster {
    /// Starts everything and waits until the fleet is online.
    pub async fn start(
        name: &str,
        run_dir: &Path,
        bins: &Binaries,
        secrets: &Secrets,
        options: &ClusterOptions,
    ) -> anyhow::Result<Self> {
        let dir = run_dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // A cluster returns with the (replicated) topology in place.
        let stack = if options.partitionable {
            Stack::start_partitionable_cluster(options.nats_nodes).await
        } else if options.nats_nodes > 1 {
            Stack::start_cluster(options.nats_nodes).await
        } else {
            let stack = Stack::start().await;
            natsbus::ensure_topology(&stack.jetstream().await, &stack.topology).await?;
            stack
        };

        // Every secret this cluster hands out is registered before anything can log it.
        secrets.add_auth_setup(name, &stack.auth.setup);
        for entry in std::fs::read_dir(stack.auth.dir().join("creds"))? {
            let path = entry?.path();
            let creds = std::fs::read_to_string(&path)?;
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            secrets.add_creds(&format!("{name} {file}"), &creds);
        }
        let jwt_secret = random_secret("chaos-jwt-");
        let admin_password = random_secret("chaos-admin-pw-");
        let bootstrap_token = random_secret("chaos-bootstrap-");
        let openrouter_key = random_secret("sk-or-v1-chaos");
        secrets.add(format!("{name} JWT_SECRET"), &jwt_secret);
        secrets.add(format!("{name} admin password"), &admin_password);
        secrets.add(format!("{name} BOOTSTRAP_TOKEN"), &bootstrap_token);
        secrets.add(format!("{name} OPENROUTER_KEY"), &openrouter_key);

        let db_proxy =
            if options.db_proxy { Some(TcpProxy::start(stack.db.server_addr()).await) } else { None };
        let redis_proxy = if options.redis_proxy {
            let url = test_support::redis_url();
            let addr = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
            Some(TcpProxy::start(addr).await)
        } else {
            None
        };
        let mock_ai = MockAi::start(&openrouter_key).await?;

        let mut services = vec![Service::new(Kind::Gateway, "api-gateway".into())];
        for i in 1..=options.ingestors {
            services.push(Service::new(Kind::Ingestor, format!("event-ingestor-{i}")));
        }
        services.push(Service::new(Kind::Tracker, "presence-tracker".into()));
        services.push(Service::new(Kind::Analyzer, "ai-analyzer".into()));
        let api_base = format!("http://127.0.0.1:{}", services[0].port);

        let fleet_client = stack.client_as(&Identity::SimulatorFleet).await;
        let fleet_bus =
            Bus::new(fleet_client, stack.topology.subjects.clone(), &stack.topology.agents_bucket).await?;
        let token = test_support::unique_token();
        let fleet = Arc::new(Fleet::numbered(&format!("{name}-{token}"), options.fleet));
        let rows: Vec<_> = fleet.agents().iter().map(|a| (a.id.clone(), a.hostname.clone())).collect();
        storage::agents::register_many(&stack.db.pool, &rows).await?;

        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let mut cluster = Self {
            name: name.to_owned(),
            dir,
            stack,
            bins: bins.clone(),
            secrets: secrets.clone(),
            db_proxy,
            redis_proxy,
            services,
            jwt_secret,
            admin_password,
            bootstrap_token,
            openrouter_key,
            mock_ai,
            http,
            api_base,
            admin_token: String::new(),
            viewer_token: String::new(),
            fleet,
            fleet_bus,
            stranger: Arc::new(SimAgent::numbered(&format!("{name}-stranger"), 0)),
            // Both replaced by the agents enrolled in `start_agents`.
            steady: Arc::new(SimAgent::numbered("placeholder", 0)),
            probes: Vec::new(),
            background: CancellationToken::new(),
            token,
        };
        let names: Vec<String> = cluster.services.iter().map(|s| s.name.clone()).collect();
        for name in &names {
            cluster.spawn(name)?;
        }
        for name in &names {
            cluster.wait_ready(name).await?;
        }
        cluster.setup_api().await?;
        cluster.start_agents(options).await?;
        Ok(cluster)
    }

    /// The secret that signs the gateway's tokens (the hostile set forges with it).
    pub(crate) fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// Logs in and creates a second user through the API.
    async fn setup_api(&mut self) -> anyhow::Result<()> {
        self.admin_token = self.login(ADMIN_EMAIL, &self.admin_password.clone()).await?;
        self.secrets.add(format!("{} admin access token", self.name), &self.admin_token);
        self.viewer_token = self.add_user(VIEWER_EMAIL, "viewer").await?;
        Ok(())
    }

    /// Creates a user with `role` through the API and logs in as them; returns the
    /// access token. The password and the token are registered as secrets.
    pub async fn add_user(&self, email: &str, role: &str) -> anyhow::Result<String> {
        let password = random_secret(&format!("chaos-{role}-pw-"));
        self.secrets.add(format!("{} {role} password", self.name), &password);
        let (status, body) = self
            .api_post(
                "/api/v1/users",
                &self.admin_token,
                &json!({"email": email, "password": password, "role": role}),
            )
            .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "creating a user: {status} {body}");
        let token = self.login(email, &password).await?;
        self.secrets.add(format!("{} {role} access token", self.name), &token);
        Ok(token)
    }

    /// Creates an enrollment token through the API (registered as a secret).
    /// A fresh nonce from the enrollment challenge endpoint.
    pub async fn enroll_challenge(&self) -> anyhow::Result<String> {
        let response =
            self.http.post(format!("{}/api/v1/agents/enroll/challenge", self.api_base)).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status == StatusCode::CREATED, "asking for a challenge: {status} {body}");
        body["nonce"].as_str().map(str::to_owned).context("no nonce in the challenge")
    }

    pub async fn enrollment_token(&self, name: &str, max_uses: u32) -> anyhow::Result<String> {
        let (status, body) = self
            .api_post(
                "/api/v1/enrollment-tokens",
                &self.admin_token,
                &json!({"name": name, "max_uses": max_uses}),
            )
            .await?;
        anyhow::ensure!(status == StatusCode::CREATED, "creating an enrollment token: {status} {body}");
        let token = body["token"].as_str().context("no token in the response")?.to_owned();
        self.secrets.add(format!("{} enrollment token", self.name), &token);
        Ok(token)
    }

    async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/v1/auth/login", self.api_base))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status == StatusCode::OK, "login as {email}: {status} {body}");
        body["access_token"].as_str().map(str::to_owned).context("no access_token in the login response")
    }

    /// Enrolls the probe agents through the API (each gets credentials of its own and
    /// connects with them), starts their heartbeats and the bulk fleet, and waits until
    /// everyone that speaks is online.
    async fn start_agents(&mut self, options: &ClusterOptions) -> anyhow::Result<()> {
        let token = self.enrollment_token("chaos probes", 100).await?;

        let wanted = Fleet::numbered(&format!("{}-{}-probe", self.name, self.token), 1 + 2 * options.probes);
        let enrolled = agent_sim::enroll::enroll(&self.api_base, &token, &wanted).await?;
        let mut buses = Vec::new();
        let mut agents = Vec::new();
        for agent in &enrolled {
            let creds = agent.creds.as_deref().context("enrollment returned no credentials")?;
            self.secrets.add_creds(&format!("{} agent {}", self.name, agent.agent.id), creds);
            let client = agent_sim::enroll::connect_as(agent, Duration::from_secs(5)).await?;
            buses.push(
                Bus::new(client, self.stack.topology.subjects.clone(), &self.stack.topology.agents_bucket)
                    .await?,
            );
            agents.push(Arc::new(SimAgent::new(agent.agent.id.clone(), agent.agent.hostname.clone())));
        }
        self.steady = Arc::clone(&agents[0]);
        self.probes = agents[1..]
            .chunks(2)
            .map(|pair| Probe { leaving: Arc::clone(&pair[0]), newcomer: Arc::clone(&pair[1]) })
            .collect();
        for probe in &self.probes {
            probe.newcomer.set_silent(true);
        }
        tokio::spawn(probe_heartbeats(
            agents.into_iter().zip(buses).collect(),
            || {},
            self.background.clone(),
        ));

        let config = FleetConfig {
            heartbeat_interval: FLEET_INTERVAL,
            events_per_sec: 0.0,
            inventory_interval: Some(Duration::from_secs(20)),
            rpc_mode: if options.fleet_rpc { RpcMode::Shared } else { RpcMode::Off },
            concurrency: 64,
            ..FleetConfig::default()
        };
        let (fleet, bus, stop) = (Arc::clone(&self.fleet), self.fleet_bus.clone(), self.background.clone());
        tokio::spawn(async move {
            if let Err(err) = fleet.run(bus, config, stop).await {
                tracing::warn!(error = %err, "the simulated fleet stopped");
            }
        });

        let speaking = (self.fleet.agents().len() + 1 + self.probes.len()) as i64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let online: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE status = 'online'")
                .fetch_one(&self.stack.db.pool)
                .await?;
            if online >= speaking {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "only {online} of {speaking} agents came online");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn service(&mut self, name: &str) -> anyhow::Result<&mut Service> {
        self.services.iter_mut().find(|s| s.name == name).with_context(|| format!("no service {name}"))
    }

    /// Names of the services of a kind.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.services.iter().filter(|s| s.kind == kind).map(|s| s.name.clone()).collect()
    }

    /// Names of every service.
    pub fn all_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    fn env(&self, kind: Kind, port: u16, admin_port: u16) -> Vec<(&'static str, String)> {
        let mut env = self.stack.env_for(&kind.identity());
        let mut set = |key: &'static str, value: String| {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        };
        if let Some(proxy) = &self.db_proxy {
            set("DATABASE_URL", self.stack.db.url_via_port(proxy.port()));
        }
        if let Some(proxy) = &self.redis_proxy {
            set("REDIS_URL", format!("redis://127.0.0.1:{}", proxy.port()));
        }
        set(
            "RUST_LOG",
            "info,api_gateway=debug,event_ingestor=debug,presence_tracker=debug,ai_analyzer=debug,\
             natsbus=debug,storage=debug,presence=debug,service_kit=debug"
                .into(),
        );
        set("SHUTDOWN_GRACE", format!("{}s", GRACE.as_secs()));
        // The dead-letter budgets the hostile-agents step checks, stated rather than assumed.
        set("DLQ_AGENT_MESSAGES_PER_HOUR", DLQ_AGENT_MESSAGES_PER_HOUR.to_string());
        set("DLQ_AGENT_BYTES_PER_HOUR", DLQ_AGENT_BYTES_PER_HOUR.to_string());
        set("DLQ_MAX_PAYLOAD", DLQ_MAX_PAYLOAD.to_string());
        match kind {
            Kind::Gateway => {
                set("HTTP_ADDR", format!("127.0.0.1:{port}"));
                set("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"));
                set("JWT_SECRET", self.jwt_secret.clone());
                set("ADMIN_EMAIL", ADMIN_EMAIL.into());
                set("ADMIN_PASSWORD", self.admin_password.clone());
                set("BOOTSTRAP_TOKEN", self.bootstrap_token.clone());
                set("RPC_TIMEOUT", "2s".into());
                set("ANALYZE_TIMEOUT", "15s".into());
                set("AGENT_HEARTBEAT_INTERVAL", PROBE_INTERVAL.as_secs().to_string());
                // Load tools make many requests from one address; limits have their own tests.
                set("RATE_LIMIT_PER_IP", "0".into());
                set("RATE_LIMIT_PER_USER", "0".into());
            }
            Kind::Ingestor => {
                set("ADMIN_ADDR", format!("127.0.0.1:{port}"));
                set("INGEST_ACK_WAIT", "5s".into());
                set("INGEST_BATCH_SIZE", "500".into());
                set("INGEST_SUMMARY_INTERVAL", "5s".into());
            }
            Kind::Tracker => {
                set("ADMIN_ADDR", format!("127.0.0.1:{port}"));
                set("PRESENCE_MISSED_HEARTBEATS", "3".into());
                set("PRESENCE_RECONCILE_INTERVAL", format!("{}s", RECONCILE.as_secs()));
                set("PRESENCE_FLUSH_INTERVAL", "2s".into());
                set("PRESENCE_WATCH_STALL_TIMEOUT", "3s".into());
            }
            Kind::Analyzer => {
                set("ADMIN_ADDR", format!("127.0.0.1:{port}"));
                set("OPENROUTER_KEY", self.openrouter_key.clone());
                set("OPENROUTER_BASE_URL", self.mock_ai.base_url.clone());
                set("AI_TIMEOUT", "5s".into());
                set("AI_DEADLINE", "10s".into());
                set("AI_MAX_ATTEMPTS", "2".into());
            }
        }
        env
    }

    /// Starts a new incarnation of a service (its log is `{name}.{n}.log`).
    pub fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let (kind, port, admin_port) = {
            let service = self.service(name)?;
            anyhow::ensure!(
                service.proc.as_mut().is_none_or(|p| !p.is_running()),
                "{name} is already running"
            );
            (service.kind, service.port, service.admin_port)
        };
        let env = self.env(kind, port, admin_port);
        let binary = self.bins.path(kind.binary());
        let dir = self.dir.clone();
        let service = self.service(name)?;
        service.incarnation += 1;
        service.signalled = false;
        let log = dir.join(format!("{name}.{}.log", service.incarnation));
        service.proc = Some(Proc::spawn(name, &binary, &env, &log)?);
        Ok(())
    }

    /// Waits for the service's readiness line and for `/readyz` to answer 200.
    pub async fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let http = self.http.clone();
        let service = self.service(name)?;
        let (kind, port) = (service.kind, service.port);
        let proc = service.proc.as_mut().with_context(|| format!("{name} is not running"))?;
        proc.wait_for_line(kind.ready_line(), Duration::from_secs(60)).await?;
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{name}: {url} never answered 200");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the service answers `/readyz` with 200 right now.
    pub async fn is_ready(&self, name: &str) -> bool {
        let Some(service) = self.services.iter().find(|s| s.name == name) else { return false };
        let url = format!("http://127.0.0.1:{}/readyz", service.port);
        matches!(self.http.get(url).send().await, Ok(r) if r.status() == StatusCode::OK)
    }

    /// The base URL of a service's admin port (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_base(&self, name: &str) -> Option<String> {
        self.services.iter().find(|s| s.name == name).map(|s| format!("http://127.0.0.1:{}", s.admin_port))
    }

    /// Whether the service answers `/readyz` on its admin port with 200 right now.
    pub async fn is_admin_ready(&self, name: &str) -> bool {
        let Some(base) = self.admin_base(name) else { return false };
        matches!(self.http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == StatusCode::OK)
    }

    /// Sends a signal to a running service.
    pub fn signal(&mut self, name: &str, signal: &str) -> anyhow::Result<()> {
        let service = self.service(name)?;
        service.signalled = true;
        service.proc.as_ref().with_context(|| format!("{name} is not running"))?.signal(signal)
    }

    /// Waits for a service to exit after a signal.
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) -> anyhow::Result<Exit> {
        let service = self.service(name)?;
        let proc = service.proc.as_mut().with_context(|| format!("{name} is not running"))?;
        proc.wait(timeout).await
    }

    /// Waits for several services to exit (after a signal sent at `sent`); each exit's
    /// `after` counts from `sent`, whatever order they stop in.
    pub async fn wait_exits(
        &mut self,
        names: &[String],
        sent: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<(String, Exit)>> {
        let mut exits: Vec<(String, Exit)> = Vec::new();
        while exits.len() < names.len() {
            for name in names {
                if exits.iter().any(|(n, _)| n == name) {
                    continue;
                }
                let service = self.service(name)?;
                let proc = service.proc.as_mut().with_context(|| format!("{name} is not running"))?;
                if let Some(code) = proc.try_exit()? {
                    exits.push((name.clone(), Exit { code, after: sent.elapsed() }));
                }
            }
            anyhow::ensure!(
                sent.elapsed() < timeout,
                "still running {timeout:?} after the signal: {:?}",
                names.iter().filter(|n| !exits.iter().any(|(e, _)| e == *n)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(exits)
    }

    /// SIGKILLs a service and waits until it is gone.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, "KILL")?;
        self.wait_exit(name, Duration::from_secs(10)).await?;
        Ok(())
    }

    /// Starts a service again and waits until it is ready.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn(name)?;
        self.wait_ready(name).await
    }

    /// Waits until the events consumer has nothing pending and nothing unacknowledged,
    /// and stays so for a moment (dead letters are published before the ack).
    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        let js = self.stack.jetstream().await;
        let deadline = Instant::now() + timeout;
        let mut quiet_since: Option<Instant> = None;
        loop {
            let drained = async {
                let stream = js.get_stream(&self.stack.topology.events_stream).await.ok()?;
                let mut consumer = stream.get_consumer::<pull::Config>("event-ingestor").await.ok()?;
                let info = consumer.info().await.ok()?;
                Some(info.num_pending == 0 && info.num_ack_pending == 0)
            }
            .await
            .unwrap_or(false);
            match (drained, quiet_since) {
                (true, Some(since)) if since.elapsed() >= Duration::from_millis(500) => return Ok(()),
                (true, None) => quiet_since = Some(Instant::now()),
                (true, Some(_)) => {}
                (false, _) => quiet_since = None,
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the events consumer did not drain within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rows in `ingested_events` right now.
    pub async fn stored(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM ingested_events").fetch_one(&self.stack.db.pool).await?)
    }

    /// An agent's status as Postgres has it.
    pub async fn status(&self, agent: &SimAgent) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT status FROM agents WHERE id = $1")
            .bind(agent.id.as_str())
            .fetch_one(&self.stack.db.pool)
            .await?)
    }

    async fn wait_status(&self, agent: &SimAgent, state: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status(agent).await.ok().as_deref() == Some(state) {
                return Ok(Instant::now());
            }
            anyhow::ensure!(Instant::now() < deadline, "agent {} not {state} within {timeout:?}", agent.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A fault begins: probe `i`'s leaving agent falls silent.
    pub fn fault_begins(&self, i: usize) {
        if let Some(probe) = self.probes.get(i) {
            probe.leaving.set_silent(true);
        }
    }

    /// A fault is over (since `ended`): probe `i`'s newcomer starts speaking; waits
    /// until the leaving agent is offline and the newcomer online.
    pub async fn fault_over(&self, i: usize, ended: Instant) -> anyhow::Result<ProbeResult> {
        let probe = self.probes.get(i).with_context(|| format!("no probe {i}"))?;
        probe.newcomer.set_silent(false);
        let wait = presence_bound() * 4;
        let (offline, online) = tokio::join!(
            self.wait_status(&probe.leaving, "offline", wait),
            self.wait_status(&probe.newcomer, "online", wait)
        );
        let (offline, online) = (offline?, online?);
        Ok(ProbeResult {
            leaving_offline_after: offline.saturating_duration_since(ended),
            newcomer_online_after: online.saturating_duration_since(ended),
        })
    }

    /// Checks every agent that kept speaking (the steady probe and the bulk fleet)
    /// never went offline; returns the failures.
    pub async fn speakers_never_offline(&self) -> anyhow::Result<Vec<String>> {
        let mut failures = Vec::new();
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM presence_transitions WHERE agent_id = $1 ORDER BY id")
                .bind(self.steady.id.as_str())
                .fetch_all(&self.stack.db.pool)
                .await?;
        if states != ["online"] {
            failures.push(format!("the steady agent's transitions were {states:?}, not [online]"));
        }
        let ids: Vec<String> = self.fleet.agents().iter().map(|a| a.id.to_string()).collect();
        let offline: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM presence_transitions WHERE state = 'offline' AND agent_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&self.stack.db.pool)
        .await?;
        if offline > 0 {
            failures.push(format!("{offline} agents of the fleet went offline while they kept sending"));
        }
        Ok(failures)
    }

    /// POST with the given token; returns the status and the JSON body.
    pub async fn api_post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let response =
            self.http.post(format!("{}{path}", self.api_base)).bearer_auth(token).json(body).send().await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The SimulatorFleet-side jetstream context of the test harness (superuser).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        self.stack.jetstream().await
    }

    /// Stops everything: the agents, then every service with SIGTERM (each must exit 0
    /// within its grace period), then the stack. Returns the failures seen.
    pub async fn finish(mut self) -> Vec<String> {
        self.background.cancel();
        let mut failures = Vec::new();
        // A service that is gone although nobody signalled it crashed.
        for service in &mut self.services {
            if let Some(proc) = service.proc.as_mut()
                && !service.signalled
                && let Ok(Some(code)) = proc.try_exit()
            {
                failures.push(format!(
                    "{} exited on its own (code {code:?}); see {}",
                    service.name,
                    proc.log_path().display()
                ));
            }
        }
        let running: Vec<String> = self
            .services
            .iter_mut()
            .filter_map(|s| s.proc.as_mut().is_some_and(Proc::is_running).then(|| s.name.clone()))
            .collect();
        for name in &running {
            if let Err(err) = self.signal(name, "TERM") {
                failures.push(format!("stopping {name}: {err:#}"));
            }
        }
        for name in &running {
            match self.wait_exit(name, GRACE + Duration::from_secs(5)).await {
                Ok(Exit { code: Some(0), .. }) => {}
                Ok(exit) => failures.push(format!("{name} exited with {:?} on SIGTERM", exit.code)),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        // A cluster's other nodes as nats-server.n1.log, ...
        let nodes = std::iter::once(&self.stack.nats).chain(&self.stack.peers);
        for (index, node) in nodes.enumerate() {
            let copy = match index {
                0 => "nats-server.log".to_owned(),
                _ => format!("nats-server.n{index}.log"),
            };
            if let Err(err) = std::fs::copy(node.dir().join("nats-server.log"), self.dir.join(&copy)) {
                failures.push(format!("copying the nats-server log to {copy}: {err}"));
            }
        }
        delete_redis_keys(&self.stack.redis_prefix).await;
        failures.extend(panics_logged(&self.dir));
        failures
    }
}

impl Service {
    fn new(kind: Kind, name: String) -> Self {
        let port = test_support::free_port();
        let admin_port = if kind == Kind::Gateway { test_support::free_port() } else { port };
        Self { kind, name, port, admin_port, incarnation: 0, proc: None, signalled: false }
    }
}

/// Every panic a service logged (through the panic hook), even one that did not take the
/// process down.
fn panics_logged(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let panics = text.lines().filter(|l| l.contains("\"message\":\"panic\"")).count();
        if panics > 0 {
            found.push(format!("{panics} panics logged in {}", path.display()));
        }
    }
    found
}

/// Heartbeats of `agents`, each through its own connection, every [`PROBE_INTERVAL`]
/// unless silenced. A failed put is skipped, as an agent would, and reported to
/// `failed`.
pub(crate) async fn probe_heartbeats<F>(agents: Vec<(Arc<SimAgent>, Bus)>, failed: F, stop: CancellationToken)
where
    F: Fn() + Clone + Send + 'static,
{
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (agent, bus) in &agents {
            if agent.is_silent() {
                continue;
            }
            let (bus, heartbeat, failed) = (bus.clone(), agent.heartbeat(PROBE_INTERVAL), failed.clone());
            tokio::spawn(async move {
                if !matches!(
                    tokio::time::timeout(PROBE_INTERVAL, bus.put_heartbeat(&heartbeat)).await,
                    Ok(Ok(()))
                ) {
                    failed();
                }
            });
        }
    }
}

/// Deletes the cluster's Redis keys (never FLUSHDB: other runs share the server).
async fn delete_redis_keys(prefix: &str) {
    let prefix = prefix.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        let Ok(mut conn) = redis::Client::open(test_support::redis_url()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut conn).unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    })
    .await;
}
