//! The shape of every service's `main`: telemetry, crypto provider, metrics recorder,
//! the shutdown signal, run, report why it stopped, flush spans.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::telemetry::TelemetryArgs;

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
