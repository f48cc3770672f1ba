use std::process::ExitCode;

use api_gateway::Config;

#[tokio::main]
async fn main() -> ExitCode {
    service_kit::runtime::main("api-gateway", Config::validate, |c| &c.telemetry, api_gateway::run).await
}
