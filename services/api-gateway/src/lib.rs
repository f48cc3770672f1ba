//! The api-gateway: the HTTP API operators, dashboards and scripts use. It reaches
//! agents and the other services only through NATS and Postgres.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod config;

pub use config::{Command, Config, ServeArgs};

use std::net::SocketAddr;

use axum::Router;
use service_kit::admin::Readiness;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the gateway stops (after `shutdown` is cancelled, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Runs the subcommand the configuration names (serving by default).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => start(config, shutdown).await?.wait().await,
        Command::Migrate => {
            storage::ensure_database(&config.db).await?;
            let pool = storage::connect(&config.db).await?;
            storage::migrate(&pool).await?;
            Ok(())
        }
    }
}

/// Connects to everything and starts serving HTTP; returns once ready.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    use anyhow::Context as _;

    let client = natsbus::connect(&config.nats, "api-gateway").await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;
    let redis = presence::connect(&config.redis).await?;

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()))
        .with_check("redis", presence::ready_check(redis.clone()));
    let app: Router = service_kit::admin::router(readiness);

    let listener = tokio::net::TcpListener::bind(config.serve.http_addr)
        .await
        .with_context(|| format!("binding {}", config.serve.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api-gateway ready");
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving http")?;
        client.flush().await.context("flushing nats")?;
        Ok(())
    });
    Ok(Running { addr, task })
}
