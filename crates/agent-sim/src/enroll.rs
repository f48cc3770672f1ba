//! Enrollment through the API, as a real agent does on first start.

use serde::{Deserialize, Serialize};

use crate::{Fleet, SimAgent};

#[derive(Serialize)]
struct EnrollRequest<'a> {
    token: &'a str,
    machine_fingerprint: &'a str,
    hostname: &'a str,
}

#[derive(Deserialize)]
struct EnrollResponse {
    agent_id: String,
}

/// Enrolls every agent of `fleet` (by machine fingerprint, so running it again gives
/// the same ids) and returns a fleet with the ids the backend assigned.
pub async fn enroll_fleet(api_base: &str, token: &str, fleet: &Fleet) -> anyhow::Result<Fleet> {
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let url = format!("{}/api/v1/agents/enroll", api_base.trim_end_matches('/'));
    let mut enrolled = Vec::with_capacity(fleet.agents().len());
    for agent in fleet.agents() {
        let fingerprint = agent.machine_fingerprint();
        let response = http
            .post(&url)
            .json(&EnrollRequest { token, machine_fingerprint: &fingerprint, hostname: &agent.hostname })
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("enrolling {} failed with {status}: {body}", agent.hostname);
        }
        let body: EnrollResponse = response.json().await?;
        let id = wire_models::AgentId::parse(&body.agent_id)?;
        enrolled.push(SimAgent::new(id, agent.hostname.clone()));
    }
    Ok(Fleet::from_agents(enrolled))
}
