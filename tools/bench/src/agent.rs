//! Scenario `agent`: the real agent at rest. An `opspilot-agent` (release build)
//! enrolled through the gateway, heartbeating every 10 s with its default event
//! sources, sampled for RSS and CPU over three heartbeat intervals. The issue's
//! targets: under 15 MiB and under 0.5 % of a core.

use std::time::Duration;

use serde_json::json;
use test_support::process::ServiceProcess;

use crate::ingest::prepare;
use crate::proc::Sampler;
use crate::report::Row;
use crate::{gateway, services};

pub(crate) async fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(1, "bench-agent").await?;
    let gw = gateway::start(&setup.stack).await?;
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/v1/enrollment-tokens", gw.base))
        .bearer_auth(&gw.token)
        .json(&json!({"name": "bench agent", "max_uses": 1}))
        .send()
        .await?
        .json()
        .await?;
    let token = created["token"].as_str().ok_or_else(|| anyhow::anyhow!("no token: {created}"))?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().display().to_string();
    std::fs::write(dir.path().join("token"), token)?;
    std::fs::write(dir.path().join("machine-id"), format!("{}\n", uuid::Uuid::new_v4().simple()))?;
    std::fs::write(dir.path().join("app.log"), "")?;
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "state_dir = \"{root}/state\"\napi = \"{}\"\n\
             [[events.logs]]\npath = \"{root}/app.log\"\npatterns = [\"(?i)error\"]\n\
             [host]\nmachine_id = \"{root}/machine-id\"\n",
            gw.base
        ),
    )?;
    let binary = services::binary("opspilot-agent")?;
    let config = format!("{root}/agent.toml");
    let token_file = format!("{root}/token");
    let enrolled = tokio::process::Command::new(&binary)
        .args(["--config", &config, "enroll", "--token-file", &token_file])
        .output()
        .await?;
    anyhow::ensure!(enrolled.status.success(), "enroll: {}", String::from_utf8_lossy(&enrolled.stderr));
    let mut agent = ServiceProcess::spawn(&binary, &[], &["--config", &config, "run"]);
    agent.wait_for_line("opspilot-agent running", Duration::from_secs(30)).await;
    // Past start-up (first inventory, first events) before measuring rest.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut sampler = Sampler::start(agent.pid().unwrap_or(0));
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sampler.sample();
    }
    rows.push(
        Row::new("agent", "opspilot-agent: RSS idle", sampler.peak_rss_mib, "MiB")
            .floor("< 15 MiB", sampler.peak_rss_mib < 15.0),
    );
    let cores = sampler.cores();
    rows.push(
        Row::new("agent", "opspilot-agent: CPU idle (10 s heartbeat)", cores * 100.0, "% of a core")
            .floor("< 0.5 %", cores < 0.005),
    );
    agent.signal("TERM");
    let _ = agent.wait(Duration::from_secs(20)).await;
    gw.service.stop().await;
    Ok(())
}
