//! The shape of every service's `main`: telemetry, crypto provider, metrics recorder,
//! the shutdown signal, run, report why it stopped, flush spans.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::telemetry::TelemetryArgs;

/// A service binary's whole `main`: parse the configuration, read its secrets and
/// `validate` it (a bad one exits 64 with one line naming the variable), then
/// [`serve_main`] with the telemetry settings `telemetry` finds in it.
pub async fn main<C, F, Fut>(
    service: &'static str,
    validate: fn(&C) -> Result<(), String>,
    telemetry: fn(&C) -> &TelemetryArgs,
    run: F,
) -> ExitCode
where
    C: clap::Parser + crate::config::LoadSecrets,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = crate::config::parse();
    if let Err(message) = validate(&config) {
        crate::config::exit_config_error(message);
    }
    let telemetry = telemetry(&config).clone();
    serve_main(service, &telemetry, |shutdown| run(config, shutdown)).await
}

/// Runs a service until it finishes or a signal asks it to stop. Telemetry is set up
/// first, so everything `run` logs is captured; pending spans are flushed last.
pub async fn serve_main<F, Fut>(service: &'static str, telemetry: &TelemetryArgs, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // Before telemetry: the OTLP exporter builds an HTTP client, which needs it.
    crate::install_crypto_provider();
    let guard = match crate::telemetry::init(service, telemetry) {
        Ok(guard) => guard,
        Err(err) => crate::config::exit_config_error(format!("telemetry: {err:#}")),
    };
    crate::metrics::install();
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");

    let shutdown = crate::shutdown::on_signal();
    let code = match run(shutdown).await {
        Ok(()) => {
            tracing::info!(service, "stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(service, error = format!("{err:#}"), "stopped on error");
            ExitCode::FAILURE
        }
    };
    // The exporter flushes on its own thread and blocks until done.
    let _ = tokio::task::spawn_blocking(move || guard.shutdown()).await;
    code
}
