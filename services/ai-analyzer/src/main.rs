use std::process::ExitCode;

use ai_analyzer::Config;

#[tokio::main]
async fn main() -> ExitCode {
    service_kit::runtime::main("ai-analyzer", Config::validate, |c| &c.telemetry, ai_analyzer::run).await
}
