//! `opspilot-chaos`: see the library's documentation, or `--help`.

use std::process::ExitCode;

use clap::Parser as _;
use opspilot_chaos::runner::{self, Args};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    runner::init_tool();
    match runner::run(&args).await {
        Ok(report) => {
            println!("\n{}", report.render());
            if report.pass() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(err) => {
            eprintln!("chaos: {err:#}");
            ExitCode::from(2)
        }
    }
}
