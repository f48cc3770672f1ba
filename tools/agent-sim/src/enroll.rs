//! Enrollment through the API, as a real agent does (docs/PROTOCOL.md, section 3.1):
//! each agent generates its own NKey, keeps it, and when its machine is already
//! enrolled proves it holds that key by signing a fresh challenge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agent_client::{EnrollClient, EnrollError, EnrollRequest};
use anyhow::Context as _;
use natsbus::auth::KeyPair;

use crate::{Fleet, SimAgent};

/// An agent as enrollment left it: its id, and its own NATS credentials when the
/// deployment runs with bus security.
pub struct Enrolled {
    pub agent: SimAgent,
    pub creds: Option<String>,
    pub nats_urls: Vec<String>,
}

/// An agent the backend would not enroll, and why (a revoked agent, a key that is
/// not on record).
#[derive(Debug, Clone)]
pub struct Skipped {
    pub hostname: String,
    pub status: u16,
    pub reason: String,
}

/// The NKeys of the simulated agents, by machine fingerprint. With a directory they
/// survive restarts (`agent-keys.json`, mode 0600), so the agents prove the same
/// identities the next time; without one they live as long as the process.
pub struct Keyring {
    file: Option<PathBuf>,
    seeds: BTreeMap<String, String>,
}

impl Keyring {
    pub fn in_memory() -> Self {
        Self { file: None, seeds: BTreeMap::new() }
    }

    /// Loads (or starts) the keyring kept in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join("agent-keys.json");
        let seeds = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Self { file: Some(file), seeds })
    }

    /// The key for a machine, and whether it existed before (then the machine may be
    /// enrolled, and the key is the one on record).
    fn key_for(&mut self, fingerprint: &str) -> anyhow::Result<(KeyPair, bool)> {
        if let Some(seed) = self.seeds.get(fingerprint) {
            return Ok((KeyPair::from_seed(seed)?, true));
        }
        let pair = KeyPair::new_user();
        self.seeds.insert(fingerprint.to_owned(), pair.seed()?);
        Ok((pair, false))
    }

    /// Writes the keyring atomically, as the agent writes its own seed.
    fn save(&self) -> anyhow::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        agent_client::files::write_private(file, serde_json::to_string_pretty(&self.seeds)?.as_bytes())?;
        Ok(())
    }
}

/// Enrolls fleets through one API with one keyring.
pub struct Enroller {
    client: EnrollClient,
    token: String,
    keyring: Keyring,
}

impl Enroller {
    pub fn new(api_base: &str, token: &str, keyring: Keyring) -> anyhow::Result<Self> {
        Ok(Self { client: EnrollClient::new(api_base)?, token: token.to_owned(), keyring })
    }

    /// Enrolls every agent of `fleet`; an agent the backend refuses (revoked, or its
    /// key is not on record) is skipped and reported, the others go on.
    pub async fn enroll(&mut self, fleet: &Fleet) -> anyhow::Result<(Vec<Enrolled>, Vec<Skipped>)> {
        let mut enrolled = Vec::with_capacity(fleet.agents().len());
        let mut skipped = Vec::new();
        for agent in fleet.agents() {
            match self.enroll_one(agent).await? {
                Ok(done) => enrolled.push(done),
                Err(skip) => skipped.push(skip),
            }
        }
        self.keyring.save()?;
        Ok((enrolled, skipped))
    }

    async fn enroll_one(&mut self, agent: &SimAgent) -> anyhow::Result<Result<Enrolled, Skipped>> {
        let fingerprint = agent.machine_fingerprint();
        let (key, known) = self.keyring.key_for(&fingerprint)?;
        let public = key.public_key();
        let proof = if known { Some(self.client.prove(&key, &fingerprint, &public).await?) } else { None };
        let request = EnrollRequest {
            token: Some(&self.token),
            machine_fingerprint: &fingerprint,
            hostname: &agent.hostname,
            nats_public_key: &public,
            proof,
        };
        let body = match self.client.enroll(&request).await {
            Ok(body) => body,
            Err(EnrollError::Refused { status: status @ (403 | 409), detail, .. }) => {
                return Ok(Err(Skipped { hostname: agent.hostname.clone(), status, reason: detail }));
            }
            Err(err) => return Err(err).with_context(|| format!("enrolling {}", agent.hostname)),
        };
        let creds = match body.nats_credentials {
            Some(c) => Some(natsbus::auth::creds_file(&c.jwt, &key.seed()?)),
            None => None,
        };
        Ok(Ok(Enrolled {
            agent: SimAgent::new(body.agent_id, agent.hostname.clone()),
            creds,
            nats_urls: body.nats_urls,
        }))
    }
}

/// Enrolls every agent of `fleet` with keys generated now (a fresh deployment: an
/// agent the backend refuses is an error).
pub async fn enroll(api_base: &str, token: &str, fleet: &Fleet) -> anyhow::Result<Vec<Enrolled>> {
    let (enrolled, skipped) = Enroller::new(api_base, token, Keyring::in_memory())?.enroll(fleet).await?;
    if let Some(skip) = skipped.first() {
        anyhow::bail!("enrolling {} was refused ({}): {}", skip.hostname, skip.status, skip.reason);
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
    Ok(agent_client::connect(options, &agent.nats_urls, &agent.agent.id, request_timeout).await?)
}
