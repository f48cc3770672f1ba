use std::process::ExitCode;

use event_ingestor::Config;

// Every message is decoded, fingerprinted and batched: many short-lived allocations,
// where glibc's allocator cost over a quarter of the ingestor's CPU while draining.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    service_kit::runtime::main("event-ingestor", Config::validate, |c| &c.telemetry, event_ingestor::run)
        .await
}
