//! The ai-analyzer: explains an incident and proposes one safe, allow-listed action,
//! with OpenRouter (or any OpenAI-compatible endpoint) or with built-in rules.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::net::SocketAddr;
use std::time::Duration;

use natsbus::NatsConfig;
use presence::RedisConfig;
use secrecy::SecretString;
use service_kit::admin::Readiness;
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Configuration of the ai-analyzer.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ai-analyzer",
    version,
    args_override_self = true,
    about = "OpsPilot AI analyzer: incident analysis over NATS"
)]
pub struct Config {
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    /// OpenRouter API key; without it the rule-based analyzer answers (never logged).
    #[arg(long = "openrouter-key", env = "OPENROUTER_KEY", value_name = "OPENROUTER_KEY", hide_env_values = true, value_parser = secret)]
    pub openrouter_key: Option<SecretString>,
    /// Address of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long = "admin-addr",
        env = "ADMIN_ADDR",
        value_name = "ADMIN_ADDR",
        default_value = "0.0.0.0:9093"
    )]
    pub admin_addr: SocketAddr,
    /// How long a shutdown may take to finish analyses in flight.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE", default_value = "20s", value_parser = service_kit::config::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.telemetry.validate()?;
        self.nats.validate()?;
        self.db.validate()?;
        self.redis.validate()
    }
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// A started analyzer.
pub struct Running {
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the analyzer stops (after `shutdown` is cancelled, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Connects to everything, then serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// Connects to everything and starts serving; returns once ready.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    use anyhow::Context as _;

    let client = natsbus::connect(&config.nats, "ai-analyzer").await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = config.nats.topology();
    natsbus::ensure_topology(&js, &topology).await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;
    let redis = presence::connect(&config.redis).await?;
    if config.openrouter_key.is_none() {
        tracing::info!("OPENROUTER_KEY is not set; the rule-based analyzer answers");
    }

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()))
        .with_check("redis", presence::ready_check(redis.clone()));
    let (admin_addr, admin) =
        service_kit::admin::spawn(config.admin_addr, readiness, shutdown.clone()).await?;
    tracing::info!(%admin_addr, "ai-analyzer ready");

    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        client.flush().await.context("flushing nats")?;
        admin.await??;
        Ok(())
    });
    Ok(Running { admin_addr, task })
}
