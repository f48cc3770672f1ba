//! `opspilot-agent`: parse the command line, set up logging, run the subcommand.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = opspilot_agent::cli::Cli::parse();
    opspilot_agent::cli::init_logging();
    opspilot_agent::cli::main(cli).await
}
