//! Generating a complete security setup (keys, JWTs, credentials, server config), and
//! issuing agent credentials from it.

use std::collections::BTreeMap;
use std::path::Path;

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use wire_models::AgentId;

use super::jwt::{AccountSpec, JwtError, account_jwt_at, creds_file, operator_jwt_at, user_jwt};
use super::perms::{Identity, permissions};
use crate::Topology;

/// The backend services, each with credentials of its own.
pub const SERVICES: &[Identity] = &[
    Identity::ApiGateway,
    Identity::EventIngestor,
    Identity::PresenceTracker,
    Identity::AiAnalyzer,
    Identity::SimulatorFleet,
    Identity::Superuser,
];

/// Connection name (and inbox) of the system-account user that pushes account updates.
pub const SYSTEM_USER: &str = "opspilot-sys";

/// Every key of a deployment. The seeds are secrets; `keys.json` holding them is
/// written with mode 0600 and only the gateway reads the two signing seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthSetup {
    pub operator_seed: String,
    pub operator_signing_seed: String,
    pub system_account_seed: String,
    pub account_seed: String,
    pub account_signing_seed: String,
    pub account_name: String,
    /// When the setup was generated (unix seconds): the issue time of the JWTs in the
    /// generated server configuration, so regenerating it is a no-op for the resolver.
    #[serde(default = "now")]
    pub issued_at: i64,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Credentials for one identity.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    pub identity: Identity,
    pub creds: String,
}

fn seed(kp: &KeyPair) -> Result<String, JwtError> {
    kp.seed().map_err(|e| JwtError::Sign(e.to_string()))
}

fn pair(seed: &str) -> Result<KeyPair, JwtError> {
    KeyPair::from_seed(seed).map_err(|e| JwtError::Sign(e.to_string()))
}

impl AuthSetup {
    /// Fresh keys for a new deployment.
    pub fn generate(account_name: &str) -> Result<Self, JwtError> {
        Ok(Self {
            operator_seed: seed(&KeyPair::new_operator())?,
            operator_signing_seed: seed(&KeyPair::new_operator())?,
            system_account_seed: seed(&KeyPair::new_account())?,
            account_seed: seed(&KeyPair::new_account())?,
            account_signing_seed: seed(&KeyPair::new_account())?,
            account_name: account_name.to_owned(),
            issued_at: now(),
        })
    }

    /// Loads `keys.json` from `dir`, or generates and writes it (mode 0600).
    pub fn load_or_generate(dir: &Path, account_name: &str) -> std::io::Result<Self> {
        let path = dir.join("keys.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return serde_json::from_str(&text).map_err(std::io::Error::other);
        }
        let setup = Self::generate(account_name).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        write_private(&path, &serde_json::to_string_pretty(&setup).map_err(std::io::Error::other)?)?;
        Ok(setup)
    }

    pub fn operator(&self) -> Result<KeyPair, JwtError> {
        pair(&self.operator_seed)
    }

    pub fn operator_signer(&self) -> Result<KeyPair, JwtError> {
        pair(&self.operator_signing_seed)
    }

    pub fn account(&self) -> Result<KeyPair, JwtError> {
        pair(&self.account_seed)
    }

    pub fn account_signer(&self) -> Result<KeyPair, JwtError> {
        pair(&self.account_signing_seed)
    }

    pub fn system_account(&self) -> Result<KeyPair, JwtError> {
        pair(&self.system_account_seed)
    }

    pub fn account_spec(&self) -> Result<AccountSpec, JwtError> {
        Ok(AccountSpec {
            name: self.account_name.clone(),
            public_key: self.account()?.public_key(),
            signing_keys: vec![self.account_signer()?.public_key()],
            jetstream: true,
        })
    }

    fn system_spec(&self) -> Result<AccountSpec, JwtError> {
        Ok(AccountSpec {
            name: "SYS".into(),
            public_key: self.system_account()?.public_key(),
            signing_keys: Vec::new(),
            jetstream: false,
        })
    }

    /// The nats-server configuration fragment: operator mode with the full resolver
    /// (account updates pushed by the gateway are stored in `resolver_dir`).
    pub fn server_config(
        &self,
        resolver_dir: &Path,
        revocations: &BTreeMap<String, i64>,
    ) -> Result<String, JwtError> {
        let operator = self.operator()?;
        let system = self.system_account()?;
        let operator_jwt = operator_jwt_at(
            "opspilot",
            &operator,
            &system.public_key(),
            &[self.operator_signer()?.public_key()],
            self.issued_at,
        )?;
        let system_jwt = account_jwt_at(&self.system_spec()?, &operator, &BTreeMap::new(), self.issued_at)?;
        let account_jwt =
            account_jwt_at(&self.account_spec()?, &self.operator_signer()?, revocations, self.issued_at)?;
        Ok(format!(
            "# Generated by OpsPilot: operator-mode security. Do not edit; regenerate.\n\
             operator: {operator_jwt}\n\
             system_account: {sys}\n\
             resolver: {{\n  type: full\n  dir: \"{dir}\"\n  allow_delete: false\n  interval: \"2m\"\n  timeout: \"3s\"\n}}\n\
             resolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
            sys = system.public_key(),
            acc = self.account()?.public_key(),
            dir = resolver_dir.display(),
        ))
    }

    /// Credentials of a backend identity (no expiry: rotate by regenerating).
    pub fn service_creds(
        &self,
        identity: &Identity,
        topology: &Topology,
    ) -> Result<ServiceIdentity, JwtError> {
        let user = KeyPair::new_user();
        let jwt = user_jwt(
            &identity.name(),
            &user.public_key(),
            &self.account()?.public_key(),
            &self.account_signer()?,
            &permissions(identity, topology),
            None,
        )?;
        Ok(ServiceIdentity { identity: identity.clone(), creds: creds_file(&jwt, &seed(&user)?) })
    }

    /// Credentials of a user of the system account (pushes account updates).
    pub fn system_creds(&self) -> Result<String, JwtError> {
        let user = KeyPair::new_user();
        let system = self.system_account()?;
        let perms = super::Permissions {
            publish: vec!["$SYS.REQ.CLAIMS.UPDATE".into(), "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE".into()],
            subscribe: vec![format!("{}.>", super::inbox_prefix(SYSTEM_USER))],
            allow_responses: false,
        };
        let jwt = user_jwt(SYSTEM_USER, &user.public_key(), &system.public_key(), &system, &perms, None)?;
        Ok(creds_file(&jwt, &seed(&user)?))
    }

    /// The issuer the gateway uses to mint agent credentials.
    pub fn issuer(&self, topology: Topology, ttl: std::time::Duration) -> Result<Issuer, JwtError> {
        Ok(Issuer { account: self.account()?.public_key(), signer: self.account_signer()?, topology, ttl })
    }

    /// Writes the server config, every service's creds and the system creds into `dir`.
    pub fn write_all(&self, dir: &Path, topology: &Topology) -> std::io::Result<()> {
        let creds_dir = dir.join("creds");
        std::fs::create_dir_all(&creds_dir)?;
        let err = std::io::Error::other;
        write_private(
            &dir.join("nats-auth.conf"),
            &self.server_config(&dir.join("resolver"), &BTreeMap::new()).map_err(err)?,
        )?;
        for identity in SERVICES {
            let creds = self.service_creds(identity, topology).map_err(err)?;
            write_private(&creds_dir.join(format!("{}.creds", identity.name())), &creds.creds)?;
        }
        write_private(&creds_dir.join("sys.creds"), &self.system_creds().map_err(err)?)?;
        // Public, for tools that address the account by key (a KEDA trigger, nats CLI).
        std::fs::write(dir.join("account.pub"), format!("{}\n", self.account().map_err(err)?.public_key()))?;
        Ok(())
    }
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

/// Mints credentials for agents (in the api-gateway, at enrollment).
pub struct Issuer {
    account: String,
    signer: KeyPair,
    topology: Topology,
    ttl: std::time::Duration,
}

/// Credentials issued to one agent.
#[derive(Debug, Clone)]
pub struct IssuedCreds {
    pub user_public_key: String,
    pub jwt: String,
    /// Present when the backend generated the key pair (the agent sent no public key).
    pub seed: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl IssuedCreds {
    /// The creds file text, when the seed is known.
    pub fn creds_file(&self) -> Option<String> {
        self.seed.as_ref().map(|seed| creds_file(&self.jwt, seed))
    }
}

impl Issuer {
    /// Builds an issuer from its parts (the gateway's configuration).
    pub fn new(
        account_public_key: &str,
        account_signing_seed: &str,
        topology: Topology,
        ttl: std::time::Duration,
    ) -> Result<Self, JwtError> {
        Ok(Self {
            account: account_public_key.to_owned(),
            signer: pair(account_signing_seed)?,
            topology,
            ttl,
        })
    }

    /// Credentials for `agent`. With `user_public_key` (an `U...` NKey the agent
    /// generated) only a JWT is returned and the seed never leaves the agent.
    pub fn issue(&self, agent: &AgentId, user_public_key: Option<&str>) -> Result<IssuedCreds, JwtError> {
        let (public, seed) = match user_public_key {
            Some(public) => {
                let key = KeyPair::from_public_key(public).map_err(|e| JwtError::Sign(e.to_string()))?;
                if key.key_pair_type() != nkeys::KeyPairType::User {
                    return Err(JwtError::Sign("the public key is not a user NKey".into()));
                }
                (public.to_owned(), None)
            }
            None => {
                let user = KeyPair::new_user();
                (user.public_key(), Some(seed(&user)?))
            }
        };
        let expires_at =
            chrono::Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(30));
        let jwt = user_jwt(
            &Identity::Agent(agent.clone()).name(),
            &public,
            &self.account,
            &self.signer,
            &permissions(&Identity::Agent(agent.clone()), &self.topology),
            Some(expires_at.timestamp()),
        )?;
        Ok(IssuedCreds { user_public_key: public, jwt, seed, expires_at })
    }
}
