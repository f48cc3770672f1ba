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
    nats_urls: Vec<String>,
    nats_credentials: Option<Credentials>,
}

#[derive(Deserialize)]
struct Credentials {
    creds: Option<String>,
}

/// An agent as enrollment left it: its id, and its own NATS credentials when the
/// deployment runs with bus security.
pub struct Enrolled {
    pub agent: SimAgent,
    pub creds: Option<String>,
    pub nats_urls: Vec<String>,
}

/// Enrolls every agent of `fleet` by machine fingerprint (running it again gives the
/// same ids).
pub async fn enroll(api_base: &str, token: &str, fleet: &Fleet) -> anyhow::Result<Vec<Enrolled>> {
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
        enrolled.push(Enrolled {
            agent: SimAgent::new(id, agent.hostname.clone()),
            creds: body.nats_credentials.and_then(|c| c.creds),
            nats_urls: body.nats_urls,
        });
    }
    Ok(enrolled)
}

/// Enrolls every agent of `fleet` and returns a fleet with the ids the backend assigned.
pub async fn enroll_fleet(api_base: &str, token: &str, fleet: &Fleet) -> anyhow::Result<Fleet> {
    let enrolled = enroll(api_base, token, fleet).await?;
    Ok(Fleet::from_agents(enrolled.into_iter().map(|e| e.agent).collect()))
}

/// Connects as the agent itself, with its own credentials (its inbox prefix follows
/// from its identity).
pub async fn connect_as(
    agent: &Enrolled,
    request_timeout: std::time::Duration,
) -> anyhow::Result<async_nats::Client> {
    let creds = agent.creds.as_deref().ok_or_else(|| anyhow::anyhow!("no credentials were issued"))?;
    let options = async_nats::ConnectOptions::with_credentials(creds)?;
    let name = natsbus::auth::Identity::Agent(agent.agent.id.clone()).name();
    Ok(natsbus::connect_with(options, &agent.nats_urls, &name, request_timeout).await?)
}
