//! `make bench`: each OpsPilot figure beside the ceiling of the parts underneath,
//! measured in the same run, so a noisy shared machine still gives comparable ratios.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod actions;
mod agent;
mod console;
mod fleet_actions;
mod footprint;
mod gateway;
mod ingest;
mod inventory;
mod lifecycle;
mod presence;
mod proc;
mod reads;
mod report;
mod services;
mod stream;
mod wrk;

use clap::Parser;

/// OpsPilot benchmarks.
#[derive(Debug, Parser)]
#[command(name = "opspilot-bench", version)]
struct Args {
    /// Events in the drain scenarios.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events in the live scenario.
    #[arg(long, default_value_t = 100_000)]
    live_events: usize,
    /// Agents in the inventory scenario (each sends `--snapshots-per-agent`).
    #[arg(long, default_value_t = 5_000)]
    inventory_agents: usize,
    #[arg(long, default_value_t = 20)]
    snapshots_per_agent: usize,
    /// Fleet sizes of the presence scenario.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    presence_sizes: Vec<usize>,
    /// Seconds of steady heartbeats measured at each presence size.
    #[arg(long, default_value_t = 10)]
    presence_hold: u64,
    /// Agents of the large presence run, heartbeating every 30 s (0 skips it: it takes
    /// several minutes).
    #[arg(long, default_value_t = 1_000_000)]
    presence_million: usize,
    /// Heartbeat interval of the large presence run, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    presence_million_interval: u64,
    /// Agents and incidents in the database for the read scenario.
    #[arg(long, default_value_t = 100_000)]
    read_agents: usize,
    #[arg(long, default_value_t = 1_000_000)]
    read_incidents: usize,
    /// Clients on the live stream in the stream scenario.
    #[arg(long, default_value_t = 1000)]
    stream_clients: usize,
    /// Events a second the agents publish in the stream scenario, for `--stream-seconds`.
    #[arg(long, default_value_t = 10_000)]
    stream_rate: u32,
    #[arg(long, default_value_t = 20)]
    stream_seconds: u64,
    /// Of `--stream-rate`, events a second that open a new incident (the rest recur).
    #[arg(long, default_value_t = 100)]
    stream_new_rate: u32,
    /// Agents whose events recur in the stream scenario (seven open incidents each, each
    /// one coalesced update a second on the stream).
    #[arg(long, default_value_t = 2)]
    stream_recurring_agents: usize,
    /// Fleet sizes a fleet-wide action goes to, in the `fleet` scenario.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    fleet_sizes: Vec<usize>,
    /// Events a simulated day of the `lifecycle` scenario ingests (a month of days).
    #[arg(long, default_value_t = 100_000)]
    month_events_per_day: usize,
    /// Scenarios to run (comma-separated: ingest,inventory,presence,actions,fleet,reads,console,stream,footprint,agent,lifecycle;
    /// `lifecycle` simulates a month of storage with the maintenance worker's clock advanced;
    /// `fleet` sends one fleet-wide action to each of `--fleet-sizes` agents;
    /// `console` renders the console's pages on the read scenario's data;
    /// `statement` times the ingest SQL statement alone, for profiling, and is not in the default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,inventory,presence,actions,fleet,reads,console,stream,footprint,agent,lifecycle"
    )]
    only: Vec<String>,
    /// Where to write the results.
    #[arg(long, default_value = "tools/bench/results")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The report is the output; logs only when something is wrong (RUST_LOG overrides).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = chrono::Utc::now();
    let mut rows = Vec::new();
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    if wants("statement") {
        ingest::statement_alone(args.events, 1000, &mut rows).await?;
        ingest::statement_alone(args.events, 5000, &mut rows).await?;
    }
    if wants("ingest") {
        ingest::run(args.events, args.live_events, &mut rows).await?;
    }
    if wants("inventory") {
        inventory::run(args.inventory_agents, args.snapshots_per_agent, &mut rows).await?;
    }
    if wants("presence") {
        let hold = std::time::Duration::from_secs(args.presence_hold);
        for size in &args.presence_sizes {
            presence::run(*size, std::time::Duration::from_secs(10), hold, &mut rows).await?;
        }
        if args.presence_million > 0 {
            // A full interval of steady state at least.
            let hold = hold.max(std::time::Duration::from_secs(30));
            let interval = std::time::Duration::from_secs(args.presence_million_interval);
            presence::run(args.presence_million, interval, hold, &mut rows).await?;
        }
    }
    if wants("actions") {
        actions::run(&mut rows).await?;
    }
    if wants("fleet") {
        for size in &args.fleet_sizes {
            fleet_actions::run(*size, &mut rows).await?;
        }
    }
    if wants("reads") || wants("console") {
        let parts = reads::Parts { api: wants("reads"), console: wants("console") };
        reads::run(args.read_agents, args.read_incidents, parts, &mut rows).await?;
    }
    if wants("stream") {
        let load = stream::Load {
            clients: args.stream_clients,
            rate: args.stream_rate,
            seconds: args.stream_seconds,
            new_rate: args.stream_new_rate,
            recurring_agents: args.stream_recurring_agents,
        };
        stream::run(&load, &mut rows).await?;
    }
    if wants("footprint") {
        footprint::run(&mut rows).await?;
    }
    if wants("agent") {
        agent::run(&mut rows).await?;
    }
    if wants("lifecycle") {
        lifecycle::run(args.month_events_per_day, &mut rows).await?;
    }
    report::print_table(&rows);
    let result = serde_json::json!({
        "started_at": started,
        "finished_at": chrono::Utc::now(),
        "machine": report::machine(),
        "rows": rows,
    });
    std::fs::create_dir_all(&args.out)?;
    let text = serde_json::to_string_pretty(&result)?;
    std::fs::write(args.out.join("latest.json"), &text)?;
    std::fs::write(args.out.join(format!("{}.json", started.format("%Y%m%dT%H%M%SZ"))), &text)?;
    let failed: Vec<_> = rows.iter().filter(|r| r.pass == Some(false)).collect();
    if !failed.is_empty() {
        eprintln!("{} figure(s) below their floor", failed.len());
    }
    Ok(())
}
