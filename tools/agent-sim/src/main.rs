//! `agent-sim`: runs N simulated agents against an OpsPilot backend.

use std::process::ExitCode;

use agent_sim::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = service_kit::config::parse();
    if let Err(message) = args.validate() {
        service_kit::config::exit_config_error(message);
    }
    let telemetry = args.telemetry.clone();
    service_kit::runtime::serve_main("agent-sim", &telemetry, |shutdown| agent_sim::cli::run(args, shutdown))
        .await
}
