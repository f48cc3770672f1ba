//! The presence-tracker: watches heartbeats in the `AGENTS` KV bucket and keeps every
//! agent's online/offline state in Redis, mirrored to Postgres.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::net::SocketAddr;
use std::time::Duration;

use natsbus::NatsConfig;
use presence::RedisConfig;
use service_kit::admin::Readiness;
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Configuration of the presence-tracker.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "presence-tracker",
    version,
    args_override_self = true,
    about = "OpsPilot presence tracker: heartbeats in, online/offline transitions out"
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
    /// Address of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long = "admin-addr",
        env = "ADMIN_ADDR",
        value_name = "ADMIN_ADDR",
        default_value = "0.0.0.0:9092"
    )]
    pub admin_addr: SocketAddr,
    /// How long a shutdown may take to flush pending writes.
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

/// A started tracker.
pub struct Running {
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the tracker stops (after `shutdown` is cancelled, or on a fatal error).
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

    let client = natsbus::connect(&config.nats, "presence-tracker").await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = config.nats.topology();
    natsbus::ensure_topology(&js, &topology).await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;
    let redis = presence::connect(&config.redis).await?;

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()))
        .with_check("redis", presence::ready_check(redis.clone()));
    let (admin_addr, admin) =
        service_kit::admin::spawn(config.admin_addr, readiness, shutdown.clone()).await?;
    tracing::info!(%admin_addr, "presence-tracker ready");

    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        client.flush().await.context("flushing nats")?;
        admin.await??;
        Ok(())
    });
    Ok(Running { admin_addr, task })
}
