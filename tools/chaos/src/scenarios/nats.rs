//! Scenario 2: the NATS server (file storage) is killed and started again mid-run.
//! Nobody restarts the services: they reconnect by themselves, the consumers resume,
//! the presence KV watch recovers (a silenced agent goes offline within its bound, a
//! new one comes online, a steady one never flickers), and the accounting is exact.

use std::time::{Duration, Instant};

use super::{Ctx, Outcome, Scenario, conclude};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, presence_bound};
use crate::load::{Load, LoadPlan};

/// How long a client may take to reconnect after a one-second server outage (its
/// backoff: 100 ms doubling, plus up to 250 ms of jitter per attempt).
const NATS_RECONNECT: Duration = Duration::from_secs(2);

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options = ClusterOptions { fleet: ctx.sizes.fleet, probes: 1, ..ClusterOptions::default() };
    let mut cluster =
        Cluster::start(Scenario::Nats.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Nats.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let plan = LoadPlan::new(ctx.sizes.events, ctx.sizes.rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    let mut outcome = Outcome::default();
    load.wait_fraction(0.4).await;
    let acked_before = load.acked();

    cluster.fault_begins(0);
    cluster.stack.nats.kill().await;
    tokio::time::sleep(ctx.sizes.nats_outage).await;
    cluster.stack.nats.restart().await;
    let restarted = Instant::now();
    outcome.note(format!(
        "nats-server SIGKILLed with {acked_before} events acknowledged, restarted after {:?}",
        ctx.sizes.nats_outage
    ));

    // The tracker deliberately gives every agent a full threshold once its input is back
    // (agents need that long to reconnect and speak), so the bound counts from when it
    // has reconnected: its client's reconnect backoff is allowed on top.
    let probe = cluster.fault_over(0, restarted).await?;
    outcome.presence("the nats restart", probe, presence_bound() + NATS_RECONNECT);
    outcome.ledger = load.finish().await?;

    // Every service reconnected by itself: still the first incarnation, and ready.
    let mut reconnected = Vec::new();
    for name in cluster.all_names() {
        let ready = cluster.is_ready(&name).await;
        outcome.check(ready, format!("{name} is not ready after the nats restart"));
        let log = cluster.dir.join(format!("{name}.1.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("reconnected to nats") {
            reconnected.push(name);
        }
    }
    outcome.check(
        reconnected.len() == cluster.all_names().len(),
        format!("only {reconnected:?} logged a reconnect"),
    );
    outcome.note(format!("{} services reconnected without a restart", reconnected.len()));
    Ok(outcome)
}
