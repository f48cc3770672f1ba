use std::process::ExitCode;

use event_ingestor::Config;

// Every message is decoded, fingerprinted and batched: many short-lived allocations,
// where glibc's allocator cost over a quarter of the ingestor's CPU while draining.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = service_kit::config::parse();
    if let Err(message) = config.validate() {
        service_kit::config::exit_config_error(message);
    }
    let telemetry = config.telemetry.clone();
    service_kit::runtime::serve_main("event-ingestor", &telemetry, |shutdown| {
        event_ingestor::run(config, shutdown)
    })
    .await
}
