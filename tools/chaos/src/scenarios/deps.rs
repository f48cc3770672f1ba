//! Scenario 3: Postgres, then Redis, cut for every service mid-run (through a TCP
//! proxy, as the shared servers must stay up for everything else on the machine).
//! Ingestion waits and resumes without losing or dead-lettering anything, and
//! presence is right again within its bound after each outage.

use std::time::Instant;

use super::{Ctx, Outcome, Scenario, conclude};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, presence_bound};
use crate::load::{Load, LoadPlan};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options = ClusterOptions {
        fleet: ctx.sizes.fleet,
        probes: 2,
        db_proxy: true,
        redis_proxy: true,
        ..ClusterOptions::default()
    };
    let mut cluster =
        Cluster::start(Scenario::Deps.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Deps.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let plan = LoadPlan::new(ctx.sizes.events, ctx.sizes.rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    let mut outcome = Outcome::default();
    let outage = ctx.sizes.outage;

    load.wait_fraction(0.2).await;
    cluster.fault_begins(0);
    let stored_before = cluster.stored().await?;
    if let Some(proxy) = &cluster.db_proxy {
        proxy.cut();
    }
    tokio::time::sleep(outage).await;
    let stored_during = cluster.stored().await?;
    if let Some(proxy) = &cluster.db_proxy {
        proxy.restore();
    }
    let restored = Instant::now();
    outcome.note(format!(
        "postgres cut for {outage:?} with {stored_before} events stored; {} more were committed meanwhile \
         (batches already in flight)",
        stored_during - stored_before
    ));
    let probe = cluster.fault_over(0, restored).await?;
    outcome.presence("the postgres outage", probe, presence_bound());

    load.wait_fraction(0.6).await;
    cluster.fault_begins(1);
    if let Some(proxy) = &cluster.redis_proxy {
        proxy.cut();
    }
    tokio::time::sleep(outage).await;
    if let Some(proxy) = &cluster.redis_proxy {
        proxy.restore();
    }
    let restored = Instant::now();
    outcome.note(format!("redis cut for {outage:?}"));
    let probe = cluster.fault_over(1, restored).await?;
    outcome.presence("the redis outage", probe, presence_bound());

    outcome.ledger = load.finish().await?;
    for name in cluster.all_names() {
        let ready = cluster.is_ready(&name).await;
        outcome.check(ready, format!("{name} is not ready after the outages"));
    }
    Ok(outcome)
}
