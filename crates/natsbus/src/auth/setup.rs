//! Generating a complete security setup (keys, JWTs, credentials, server config), and
//! issuing agent credentials from it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nkeys::KeyPair;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use wire_models::AgentId;

use super::jwt::{
    AccountSpec, JetStreamLimits, JwtError, account_jwt_at, creds_file, operator_jwt_at, scoped_user_jwt,
    user_jwt,
};
use super::perms::{AGENT_TAG, Identity, permissions};
use crate::Topology;

/// The backend services, each with credentials of its own.
pub const SERVICES: &[Identity] =
    &[Identity::ApiGateway, Identity::EventIngestor, Identity::PresenceTracker, Identity::AiAnalyzer];

/// Identities that exist only on development and test stacks (`nats-init --dev`): the
/// simulator playing a whole fleet, and a superuser. A production setup never writes
/// their credentials.
pub const DEV_IDENTITIES: &[Identity] = &[Identity::SimulatorFleet, Identity::Superuser];

/// Connection name (and inbox) of the system-account user that pushes account updates.
pub const SYSTEM_USER: &str = "opspilot-sys";

/// The file (in the setup directory) that holds what the api-gateway needs, and only
/// that: see [`GatewayKeys`].
pub const GATEWAY_KEYS_FILE: &str = "gateway-keys.json";

/// Every key of a deployment. The seeds are secrets: `keys.json` holding them is
/// written with mode 0600 and read only by `nats-init`; no service mounts it.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuthSetup {
    pub operator_seed: String,
    pub operator_signing_seed: String,
    pub system_account_seed: String,
    pub account_seed: String,
    /// Signs the backend services' credentials.
    pub account_signing_seed: String,
    /// Signs agents' credentials; scoped, so it grants nothing but the agent
    /// template. Setups written before it existed get one on the next `nats-init`.
    #[serde(default)]
    pub agent_signing_seed: Option<String>,
    pub account_name: String,
    /// The account's JetStream storage.
    #[serde(default = "default_jetstream")]
    pub jetstream: JetStreamLimits,
    /// When the setup was generated (unix seconds): the issue time of the JWTs in the
    /// generated server configuration, so regenerating it is a no-op for the resolver.
    #[serde(default = "now")]
    pub issued_at: i64,
}

impl std::fmt::Debug for AuthSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSetup")
            .field("account_name", &self.account_name)
            .field("jetstream", &self.jetstream)
            .field("issued_at", &self.issued_at)
            .finish_non_exhaustive()
    }
}

fn default_jetstream() -> JetStreamLimits {
    JetStreamLimits::DEFAULT
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Credentials for one identity.
#[derive(Clone)]
pub struct ServiceIdentity {
    pub identity: Identity,
    pub user_public_key: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The creds file text (JWT and seed).
    pub creds: String,
}

impl std::fmt::Debug for ServiceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceIdentity")
            .field("identity", &self.identity)
            .field("user_public_key", &self.user_public_key)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn seed(kp: &KeyPair) -> Result<String, JwtError> {
    kp.seed().map_err(|e| JwtError::Sign(e.to_string()))
}

fn pair(seed: &str) -> Result<KeyPair, JwtError> {
    KeyPair::from_seed(seed).map_err(|e| JwtError::Sign(e.to_string()))
}

/// How `write_all` writes a setup.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Also write the development identities ([`DEV_IDENTITIES`]).
    pub dev: bool,
    /// Lifetime of service credentials (`None`: they never expire).
    pub service_ttl: Option<Duration>,
    /// Write new service credentials even when the current ones are still good.
    pub rotate: bool,
    /// The resolver directory as the server sees it (default: `{dir}/resolver`).
    pub resolver_dir: Option<std::path::PathBuf>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            dev: false,
            service_ttl: Some(Duration::from_secs(90 * 86400)),
            rotate: false,
            resolver_dir: None,
        }
    }
}

/// What `write_all` did with each service's credentials.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    /// Identities that got new credentials, with the public keys they replaced.
    pub renewed: Vec<(Identity, Option<String>)>,
    /// Identities whose credentials were kept.
    pub kept: Vec<Identity>,
}

impl WriteReport {
    /// The replaced public keys (to revoke after a rotation).
    pub fn replaced_keys(&self) -> Vec<String> {
        self.renewed.iter().filter_map(|(_, key)| key.clone()).collect()
    }
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
            agent_signing_seed: Some(seed(&KeyPair::new_account())?),
            account_name: account_name.to_owned(),
            jetstream: JetStreamLimits::DEFAULT,
            issued_at: now(),
        })
    }

    /// Loads `keys.json` from `dir`, or generates and writes it (mode 0600). A setup
    /// from an older version gains the keys it lacks, written back at once.
    pub fn load_or_generate(dir: &Path, account_name: &str) -> std::io::Result<Self> {
        let path = dir.join("keys.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut setup: Self = serde_json::from_str(&text).map_err(std::io::Error::other)?;
            if setup.agent_signing_seed.is_none() {
                setup.agent_signing_seed =
                    Some(seed(&KeyPair::new_account()).map_err(std::io::Error::other)?);
                write_private(&path, &serde_json::to_string_pretty(&setup).map_err(std::io::Error::other)?)?;
            }
            return Ok(setup);
        }
        let setup = Self::generate(account_name).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        write_private(&path, &serde_json::to_string_pretty(&setup).map_err(std::io::Error::other)?)?;
        Ok(setup)
    }

    /// Writes `keys.json` back (after a setting such as the account limits changed).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        write_private(
            &dir.join("keys.json"),
            &serde_json::to_string_pretty(self).map_err(std::io::Error::other)?,
        )
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

    pub fn agent_signer(&self) -> Result<KeyPair, JwtError> {
        pair(
            self.agent_signing_seed
                .as_deref()
                .ok_or_else(|| JwtError::Sign("no agent signing key".into()))?,
        )
    }

    pub fn system_account(&self) -> Result<KeyPair, JwtError> {
        pair(&self.system_account_seed)
    }

    pub fn account_spec(&self) -> Result<AccountSpec, JwtError> {
        Ok(AccountSpec {
            name: self.account_name.clone(),
            public_key: self.account()?.public_key(),
            signing_keys: vec![self.account_signer()?.public_key()],
            agent_signing_key: Some(self.agent_signer()?.public_key()),
            jetstream: Some(self.jetstream),
        })
    }

    fn system_spec(&self) -> Result<AccountSpec, JwtError> {
        Ok(AccountSpec {
            name: "SYS".into(),
            public_key: self.system_account()?.public_key(),
            signing_keys: Vec::new(),
            agent_signing_key: None,
            jetstream: None,
        })
    }

    /// The nats-server configuration fragment: operator mode with the full resolver
    /// (account updates pushed by the gateway are stored in `resolver_dir`).
    pub fn server_config(
        &self,
        resolver_dir: &Path,
        topology: &Topology,
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
        let system_jwt =
            account_jwt_at(&self.system_spec()?, topology, &operator, &BTreeMap::new(), self.issued_at)?;
        let account_jwt = account_jwt_at(
            &self.account_spec()?,
            topology,
            &self.operator_signer()?,
            revocations,
            self.issued_at,
        )?;
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

    /// Credentials of a backend identity, expiring after `ttl` when one is given.
    pub fn service_creds_with_ttl(
        &self,
        identity: &Identity,
        topology: &Topology,
        ttl: Option<Duration>,
    ) -> Result<ServiceIdentity, JwtError> {
        let user = KeyPair::new_user();
        let expires_at = ttl.map(|ttl| {
            chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(90))
        });
        let jwt = user_jwt(
            &identity.name(),
            &user.public_key(),
            &self.account()?.public_key(),
            &self.account_signer()?,
            &permissions(identity, topology),
            expires_at.map(|at| at.timestamp()),
        )?;
        Ok(ServiceIdentity {
            identity: identity.clone(),
            user_public_key: user.public_key(),
            expires_at,
            creds: creds_file(&jwt, &seed(&user)?),
        })
    }

    /// Credentials of a backend identity that never expire (tests and tools).
    pub fn service_creds(
        &self,
        identity: &Identity,
        topology: &Topology,
    ) -> Result<ServiceIdentity, JwtError> {
        self.service_creds_with_ttl(identity, topology, None)
    }

    /// Credentials of a user of the system account (pushes account updates).
    pub fn system_creds(&self) -> Result<String, JwtError> {
        let user = KeyPair::new_user();
        let system = self.system_account()?;
        let perms = super::Permissions {
            publish: vec!["$SYS.REQ.CLAIMS.UPDATE".into(), "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE".into()],
            subscribe: vec![format!("{}.>", super::inbox_prefix(SYSTEM_USER))],
            ..super::Permissions::default()
        };
        let jwt = user_jwt(SYSTEM_USER, &user.public_key(), &system.public_key(), &system, &perms, None)?;
        Ok(creds_file(&jwt, &seed(&user)?))
    }

    /// The issuer that mints agent credentials (tests; the gateway builds its own
    /// from [`GatewayKeys`]).
    pub fn issuer(&self, ttl: Duration) -> Result<Issuer, JwtError> {
        Ok(Issuer { account: self.account()?.public_key(), signer: self.agent_signer()?, ttl })
    }

    /// What the api-gateway holds: the scoped agent key, the operator signing key
    /// (to re-sign the account with its revocations), the system user's credentials,
    /// and the account's public description. Not the operator's own key, not the
    /// account key, not the key that signs services.
    pub fn gateway_keys(&self) -> Result<GatewayKeys, JwtError> {
        Ok(GatewayKeys {
            account: self.account_spec()?,
            agent_signing_seed: SecretString::from(
                self.agent_signing_seed
                    .clone()
                    .ok_or_else(|| JwtError::Sign("no agent signing key".into()))?,
            ),
            operator_signing_seed: SecretString::from(self.operator_signing_seed.clone()),
            system_creds: SecretString::from(self.system_creds()?),
        })
    }

    /// Writes the server config, every service's creds (renewed when missing, a
    /// third of their lifetime from expiry, or on `rotate`), the system creds and the
    /// gateway's keys into `dir`.
    pub fn write_all(
        &self,
        dir: &Path,
        topology: &Topology,
        options: WriteOptions,
    ) -> std::io::Result<WriteReport> {
        let creds_dir = dir.join("creds");
        std::fs::create_dir_all(&creds_dir)?;
        let err = std::io::Error::other;
        let resolver = options.resolver_dir.clone().unwrap_or_else(|| dir.join("resolver"));
        write_private(
            &dir.join("nats-auth.conf"),
            &self.server_config(&resolver, topology, &BTreeMap::new()).map_err(err)?,
        )?;
        let mut report = WriteReport::default();
        let identities = SERVICES.iter().chain(if options.dev { DEV_IDENTITIES } else { &[] });
        for identity in identities {
            let path = creds_dir.join(format!("{}.creds", identity.name()));
            let current = std::fs::read_to_string(&path).ok().and_then(|text| CredsInfo::parse(&text));
            let fresh = current.as_ref().is_some_and(|c| c.fresh_for(options.service_ttl));
            if fresh && !options.rotate {
                report.kept.push(identity.clone());
                continue;
            }
            let creds = self.service_creds_with_ttl(identity, topology, options.service_ttl).map_err(err)?;
            write_private(&path, &creds.creds)?;
            report.renewed.push((identity.clone(), current.map(|c| c.public_key)));
        }
        if !options.dev {
            // A production setup written over a development one loses those identities.
            for identity in DEV_IDENTITIES {
                let _ = std::fs::remove_file(creds_dir.join(format!("{}.creds", identity.name())));
            }
        }
        write_private(&creds_dir.join("sys.creds"), &self.system_creds().map_err(err)?)?;
        write_private(
            &dir.join(GATEWAY_KEYS_FILE),
            &serde_json::to_string_pretty(&self.gateway_keys().map_err(err)?.to_file())
                .map_err(std::io::Error::other)?,
        )?;
        // Public, for tools that address the account by key (a KEDA trigger, nats CLI).
        std::fs::write(dir.join("account.pub"), format!("{}\n", self.account().map_err(err)?.public_key()))?;
        Ok(report)
    }
}

/// What a creds file says about itself (read back to decide whether to renew it).
#[derive(Debug, Clone)]
pub struct CredsInfo {
    pub public_key: String,
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl CredsInfo {
    /// Reads the JWT inside a creds file; `None` when it is not one.
    pub fn parse(creds: &str) -> Option<Self> {
        let jwt = super::parse_creds(creds).ok()?.0;
        let claims = super::decode_claims(&jwt).ok()?;
        Some(Self {
            public_key: claims["sub"].as_str()?.to_owned(),
            issued_at: claims["iat"].as_i64(),
            expires_at: claims["exp"].as_i64(),
        })
    }

    /// Good for at least a third of `ttl` more (and as long-lived as `ttl` asks).
    fn fresh_for(&self, ttl: Option<Duration>) -> bool {
        match (ttl, self.expires_at) {
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(ttl), Some(exp)) => {
                let third = i64::try_from(ttl.as_secs() / 3).unwrap_or(i64::MAX);
                exp - now() > third
            }
        }
    }
}

/// The api-gateway's share of the setup (see [`AuthSetup::gateway_keys`]).
pub struct GatewayKeys {
    pub account: AccountSpec,
    pub agent_signing_seed: SecretString,
    pub operator_signing_seed: SecretString,
    pub system_creds: SecretString,
}

impl std::fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKeys").field("account", &self.account).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct GatewayKeysFile {
    account: AccountSpec,
    agent_signing_seed: String,
    operator_signing_seed: String,
    system_creds: String,
}

impl GatewayKeys {
    fn to_file(&self) -> GatewayKeysFile {
        GatewayKeysFile {
            account: self.account.clone(),
            agent_signing_seed: self.agent_signing_seed.expose_secret().to_owned(),
            operator_signing_seed: self.operator_signing_seed.expose_secret().to_owned(),
            system_creds: self.system_creds.expose_secret().to_owned(),
        }
    }

    /// Reads and checks a gateway-keys file (written by `nats-init`).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: GatewayKeysFile = serde_json::from_str(&text)
            .map_err(|_| format!("{} is not a gateway keys file", path.display()))?;
        let keys = Self {
            account: file.account,
            agent_signing_seed: SecretString::from(file.agent_signing_seed),
            operator_signing_seed: SecretString::from(file.operator_signing_seed),
            system_creds: SecretString::from(file.system_creds),
        };
        let agent = pair(keys.agent_signing_seed.expose_secret())
            .map_err(|_| "the agent signing seed is not valid".to_owned())?;
        if keys.account.agent_signing_key.as_deref() != Some(agent.public_key().as_str()) {
            return Err("the agent signing seed does not match the account's scoped key".into());
        }
        pair(keys.operator_signing_seed.expose_secret())
            .map_err(|_| "the operator signing seed is not valid".to_owned())?;
        super::parse_creds(keys.system_creds.expose_secret())
            .map_err(|_| "the system credentials are not a creds file".to_owned())?;
        Ok(keys)
    }

    /// The issuer of agent credentials.
    pub fn issuer(&self, ttl: Duration) -> Result<Issuer, JwtError> {
        Ok(Issuer {
            account: self.account.public_key.clone(),
            signer: pair(self.agent_signing_seed.expose_secret())?,
            ttl,
        })
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

/// Mints credentials for agents (in the api-gateway, at enrollment), with the scoped
/// agent key.
pub struct Issuer {
    account: String,
    signer: KeyPair,
    ttl: Duration,
}

/// Credentials issued to one agent.
#[derive(Clone)]
pub struct IssuedCreds {
    pub user_public_key: String,
    pub jwt: String,
    /// Present when the backend generated the key pair (the agent sent no public key).
    pub seed: Option<SecretString>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for IssuedCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCreds")
            .field("user_public_key", &self.user_public_key)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl IssuedCreds {
    /// The creds file text, when the seed is known.
    pub fn creds_file(&self) -> Option<String> {
        self.seed.as_ref().map(|seed| creds_file(&self.jwt, seed.expose_secret()))
    }
}

impl Issuer {
    /// The public key of the key that signs.
    pub fn signer_public_key(&self) -> String {
        self.signer.public_key()
    }

    /// Credentials for `agent`. With `user_public_key` (an `U...` NKey the agent
    /// generated) only a JWT is returned and the seed never leaves the agent.
    pub fn issue(&self, agent: &AgentId, user_public_key: Option<&str>) -> Result<IssuedCreds, JwtError> {
        let (public, seed) = match user_public_key {
            Some(public) => {
                check_user_key(public)?;
                (public.to_owned(), None)
            }
            None => {
                let user = KeyPair::new_user();
                (user.public_key(), Some(SecretString::from(seed(&user)?)))
            }
        };
        let expires_at =
            chrono::Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(30));
        // The permissions come from the scoped key's template; the tag tells the
        // server which agent this is.
        let jwt = scoped_user_jwt(
            &Identity::Agent(agent.clone()).name(),
            &public,
            &self.account,
            &self.signer,
            &[format!("{AGENT_TAG}:{agent}")],
            Some(expires_at.timestamp()),
        )?;
        Ok(IssuedCreds { user_public_key: public, jwt, seed, expires_at })
    }
}

/// Checks that `public` is a user NKey (`U...`).
pub fn check_user_key(public: &str) -> Result<(), JwtError> {
    let key = KeyPair::from_public_key(public).map_err(|e| JwtError::Sign(e.to_string()))?;
    if key.key_pair_type() != nkeys::KeyPairType::User {
        return Err(JwtError::Sign("the public key is not a user NKey".into()));
    }
    Ok(())
}
