use std::process::ExitCode;

use api_gateway::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = service_kit::config::parse();
    if let Err(message) = config.validate() {
        service_kit::config::exit_config_error(message);
    }
    let telemetry = config.telemetry.clone();
    service_kit::runtime::serve_main("api-gateway", &telemetry, |shutdown| api_gateway::run(config, shutdown))
        .await
}
