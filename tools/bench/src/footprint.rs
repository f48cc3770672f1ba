//! Scenario 6: each service's memory and CPU at rest, and its start-up time to ready.

use std::time::Duration;

use natsbus::auth::Identity;

use crate::ingest::prepare;
use crate::proc::Sampler;
use crate::report::Row;
use crate::{gateway, services};

pub(crate) async fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(10, "bench-footprint").await?;
    let admin = || ("ADMIN_ADDR", "127.0.0.1:0".to_owned());
    let gw = gateway::start(&setup.stack).await?;
    let mut running = vec![("api-gateway", gw.service)];
    for (name, identity) in [
        ("event-ingestor", Identity::EventIngestor),
        ("presence-tracker", Identity::PresenceTracker),
        ("ai-analyzer", Identity::AiAnalyzer),
    ] {
        running.push((name, services::start(&setup.stack, &identity, name, &[admin()]).await?));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samplers: Vec<_> = running.iter().map(|(name, s)| (*name, Sampler::start(s.pid()))).collect();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (_, sampler) in &mut samplers {
            sampler.sample();
        }
    }
    for ((name, sampler), (_, service)) in samplers.iter().zip(&running) {
        rows.push(
            Row::new("footprint", &format!("{name}: RSS idle"), sampler.peak_rss_mib, "MiB")
                .floor("< 50 MiB", sampler.peak_rss_mib < 50.0),
        );
        rows.push(Row::new("footprint", &format!("{name}: CPU idle"), sampler.cores(), "cores"));
        rows.push(Row::new(
            "footprint",
            &format!("{name}: start-up to ready"),
            service.startup.as_secs_f64() * 1000.0,
            "ms",
        ));
    }
    for (_, service) in running {
        service.stop().await;
    }
    Ok(())
}
