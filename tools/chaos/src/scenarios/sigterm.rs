//! Scenario 4: SIGTERM to every service at once, mid-run. Each drains what it holds
//! and exits 0 within its grace period; agents keep publishing into JetStream
//! meanwhile; once everything is started again the totals still match.

use std::time::{Duration, Instant};

use super::{Ctx, Outcome, Scenario, conclude};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, GRACE, presence_bound};
use crate::load::{Load, LoadPlan};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options = ClusterOptions { fleet: ctx.sizes.fleet, probes: 1, ..ClusterOptions::default() };
    let mut cluster =
        Cluster::start(Scenario::Sigterm.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Sigterm.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let plan = LoadPlan::new(ctx.sizes.events, ctx.sizes.rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    let mut outcome = Outcome::default();
    load.wait_fraction(0.4).await;

    cluster.fault_begins(0);
    let names = cluster.all_names();
    let sent = Instant::now();
    for name in &names {
        cluster.signal(name, "TERM")?;
    }
    let mut exits = Vec::new();
    for (name, exit) in cluster.wait_exits(&names, sent, GRACE + Duration::from_secs(5)).await? {
        outcome.check(exit.code == Some(0), format!("{name} exited with {:?} on SIGTERM", exit.code));
        outcome.check(exit.after <= GRACE, format!("{name} took {:?} to stop (grace {GRACE:?})", exit.after));
        exits.push(format!(
            "{name} {} in {:.2}s",
            exit.code.map_or("killed".into(), |c| c.to_string()),
            exit.after.as_secs_f64()
        ));
    }
    let stored_at_stop = cluster.stored().await?;
    outcome.note(format!("SIGTERM to all with {stored_at_stop} events stored; exits: {}", exits.join(", ")));

    // Everything is down for a moment while agents keep publishing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in &names {
        cluster.spawn(name)?;
    }
    for name in &names {
        cluster.wait_ready(name).await?;
    }
    let restarted = Instant::now();
    let probe = cluster.fault_over(0, restarted).await?;
    outcome.presence("the restart of every service", probe, presence_bound());
    outcome.ledger = load.finish().await?;
    Ok(outcome)
}
