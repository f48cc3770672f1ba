//! The `agent-sim` command line.

use std::sync::Arc;
use std::time::Duration;

use crate::{Bus, Fleet, FleetConfig, FleetStats, RpcBehaviour, RpcMode};
use natsbus::NatsConfig;
use service_kit::telemetry::TelemetryArgs;

/// Simulated OpsPilot agents: heartbeats, events, inventory and RPC answers.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "agent-sim", version, args_override_self = true, next_help_heading = "Simulation")]
pub struct Args {
    /// Number of simulated agents.
    #[arg(long, env = "SIM_AGENTS", value_name = "SIM_AGENTS", default_value_t = 5)]
    agents: usize,
    /// Fleet name; the same name gives the same agent ids and hostnames.
    #[arg(long, env = "SIM_SEED", value_name = "SIM_SEED", default_value = "sim")]
    seed: String,
    /// Heartbeat interval of every agent.
    #[arg(long, env = "SIM_HEARTBEAT_INTERVAL", value_name = "SIM_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = service_kit::config::parse_duration)]
    heartbeat_interval: Duration,
    /// Events per second across the whole fleet.
    #[arg(long, env = "SIM_EVENTS_PER_SEC", value_name = "SIM_EVENTS_PER_SEC", default_value_t = 0.5)]
    events_per_sec: f64,
    /// How often each agent sends an inventory snapshot.
    #[arg(long, env = "SIM_INVENTORY_INTERVAL", value_name = "SIM_INVENTORY_INTERVAL", default_value = "60s", value_parser = service_kit::config::parse_duration)]
    inventory_interval: Duration,
    /// Fraction of inventory snapshots that change.
    #[arg(long, env = "SIM_INVENTORY_CHANGE", value_name = "SIM_INVENTORY_CHANGE", default_value_t = 0.1)]
    inventory_change: f64,
    /// Delay before answering an action.
    #[arg(long, env = "SIM_RPC_DELAY", value_name = "SIM_RPC_DELAY", default_value = "0ms", value_parser = service_kit::config::parse_duration)]
    rpc_delay: Duration,
    /// Fraction of actions answered with an error.
    #[arg(long, env = "SIM_RPC_FAILURE_RATE", value_name = "SIM_RPC_FAILURE_RATE", default_value_t = 0.0)]
    rpc_failure_rate: f64,
    /// How the fleet listens for actions.
    #[arg(long, env = "SIM_RPC_MODE", value_name = "SIM_RPC_MODE", value_enum, default_value = "per-agent")]
    rpc_mode: RpcMode,
    /// Publishes in flight at once.
    #[arg(long, env = "SIM_CONCURRENCY", value_name = "SIM_CONCURRENCY", default_value_t = 256)]
    concurrency: usize,
    /// Enroll the agents through this API first (e.g. http://127.0.0.1:8080), as real
    /// agents do; without it the agents use ids derived from SIM_SEED.
    #[arg(long = "api-url", env = "SIM_API_URL", value_name = "SIM_API_URL")]
    api_url: Option<String>,
    /// Enrollment token used with SIM_API_URL: SIM_ENROLL_TOKEN in the environment, or
    /// this file (never a flag, never logged).
    #[arg(long = "enroll-token-file", env = "SIM_ENROLL_TOKEN_FILE", value_name = "SIM_ENROLL_TOKEN_FILE")]
    enroll_token_file: Option<std::path::PathBuf>,
    /// SIM_ENROLL_TOKEN, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    enroll_token: Option<secrecy::SecretString>,
    /// Where the agents keep their NKeys between runs (`agent-keys.json`), so a
    /// restart proves the same identities instead of being refused as unknown keys.
    #[arg(long = "state-dir", env = "SIM_STATE_DIR", value_name = "SIM_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, env = "SIM_DURATION", value_name = "SIM_DURATION", value_parser = service_kit::config::parse_duration)]
    duration: Option<Duration>,
    #[command(flatten, next_help_heading = "Telemetry")]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    nats: NatsConfig,
}

impl service_kit::config::LoadSecrets for Args {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.enroll_token = env.secret("SIM_ENROLL_TOKEN", self.enroll_token_file.as_deref())?;
        self.nats.load_secrets(env)
    }
}

impl Args {
    pub fn validate(&self) -> Result<(), String> {
        self.telemetry.validate()?;
        self.nats.validate()?;
        if self.api_url.is_some() != self.enroll_token.is_some() {
            return Err("SIM_API_URL and SIM_ENROLL_TOKEN: set both to enroll, or neither".into());
        }
        if self.agents == 0 {
            return Err("SIM_AGENTS: must be at least 1".into());
        }
        for (name, value) in
            [("SIM_INVENTORY_CHANGE", self.inventory_change), ("SIM_RPC_FAILURE_RATE", self.rpc_failure_rate)]
        {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{name}: must be between 0 and 1"));
            }
        }
        if !(self.events_per_sec >= 0.0 && self.events_per_sec.is_finite()) {
            return Err("SIM_EVENTS_PER_SEC: must be a non-negative number".into());
        }
        Ok(())
    }
}

/// Runs the fleet until `shutdown` (or `--duration`).
pub async fn run(args: Args, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    if let Some(duration) = args.duration {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    let seeded = Fleet::numbered(&args.seed, args.agents);
    let config = FleetConfig {
        heartbeat_interval: args.heartbeat_interval,
        events_per_sec: args.events_per_sec,
        inventory_interval: Some(args.inventory_interval),
        inventory_change_ratio: args.inventory_change,
        rpc: RpcBehaviour {
            delay: args.rpc_delay,
            jitter: Duration::ZERO,
            failure_rate: args.rpc_failure_rate,
            silent: false,
        },
        rpc_mode: args.rpc_mode,
        concurrency: args.concurrency,
    };
    let enrolled = match (&args.api_url, &args.enroll_token) {
        (Some(api), Some(token)) => {
            use secrecy::ExposeSecret as _;
            let keyring = match &args.state_dir {
                Some(dir) => crate::enroll::Keyring::load(dir)?,
                None => crate::enroll::Keyring::in_memory(),
            };
            let mut enroller = crate::enroll::Enroller::new(api, token.expose_secret(), keyring)?;
            let (enrolled, skipped) = enroller.enroll(&seeded).await?;
            for skip in &skipped {
                // Revoked, or enrolled before with a key this run does not hold: an
                // administrator decides (delete the revoked agent, or resolve the
                // identity conflict); the other agents run.
                tracing::warn!(hostname = %skip.hostname, status = skip.status, reason = %skip.reason, "simulated agent may not enroll; skipped");
            }
            tracing::info!(agents = enrolled.len(), skipped = skipped.len(), api = %api, "simulated agents enrolled");
            if enrolled.is_empty() {
                // Staying up keeps the rest of a local stack running (the run script
                // stops everything when one process exits); there is nothing to do.
                tracing::error!("no simulated agent may enroll; idle until stopped (see the warnings above)");
                shutdown.cancelled().await;
                return Ok(());
            }
            Some(enrolled)
        }
        _ => None,
    };
    let fleets: Vec<(Arc<Fleet>, Bus, async_nats::Client)> = match enrolled {
        // With bus security every agent connects as itself, with its own credentials.
        Some(enrolled) if enrolled.iter().all(|e| e.creds.is_some()) => {
            let mut fleets = Vec::with_capacity(enrolled.len());
            for agent in enrolled {
                let client = crate::enroll::connect_as(&agent, args.nats.request_timeout).await?;
                let bus = Bus::new(client.clone(), args.nats.subjects(), &args.nats.agents_bucket).await?;
                fleets.push((Arc::new(Fleet::from_agents(vec![agent.agent])), bus, client));
            }
            tracing::info!(agents = fleets.len(), "simulated agents connected with their own credentials");
            fleets
        }
        other => {
            let fleet = match other {
                Some(enrolled) => Fleet::from_agents(enrolled.into_iter().map(|e| e.agent).collect()),
                None => seeded,
            };
            let client = natsbus::connect(&args.nats, "agent-sim").await?;
            let bus = Bus::new(client.clone(), args.nats.subjects(), &args.nats.agents_bucket).await?;
            vec![(Arc::new(fleet), bus, client)]
        }
    };
    tracing::info!(agents = args.agents, seed = %args.seed, "simulated agents starting");
    let share = fleets.len() as f64;
    let mut runs = tokio::task::JoinSet::new();
    for (fleet, bus, _) in &fleets {
        let config = FleetConfig { events_per_sec: config.events_per_sec / share, ..config.clone() };
        let (fleet, bus, shutdown) = (Arc::clone(fleet), bus.clone(), shutdown.clone());
        runs.spawn(async move { fleet.run(bus, config, shutdown).await });
    }
    while let Some(result) = runs.join_next().await {
        result??;
    }
    let total = |pick: fn(&FleetStats) -> &std::sync::atomic::AtomicU64| -> u64 {
        fleets.iter().map(|(f, _, _)| FleetStats::get(pick(&f.stats))).sum()
    };
    for (_, _, client) in &fleets {
        client.flush().await?;
    }
    tracing::info!(
        heartbeats = total(|s| &s.heartbeats),
        events = total(|s| &s.events),
        inventory = total(|s| &s.inventory),
        rpc_answered = total(|s| &s.rpc_answered),
        errors = total(|s| &s.errors),
        "simulated agents stopped"
    );
    Ok(())
}
