use std::process::ExitCode;

use presence_tracker::Config;

#[tokio::main]
async fn main() -> ExitCode {
    service_kit::runtime::main("presence-tracker", Config::validate, |c| &c.telemetry, presence_tracker::run)
        .await
}
