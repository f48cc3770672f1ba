//! The gateway's part of bus security: minting each enrolled agent's NATS credentials
//! and pushing revocations to the servers.

use std::path::PathBuf;
use std::time::Duration;

use natsbus::auth::{AuthSetup, IssuedCreds, Issuer, RevocationPusher};
use secrecy::{ExposeSecret, SecretString};
use wire_models::AgentId;

use crate::error::ApiError;

/// Bus security settings.
#[derive(Clone, clap::Args)]
pub(crate) struct BusAuthArgs {
    /// Directory written by `api-gateway nats-init` (keys.json, creds/); the simplest
    /// way to give the gateway everything below.
    #[arg(
        id = "nats-auth-dir",
        long = "nats-auth-dir",
        env = "NATS_AUTH_DIR",
        value_name = "NATS_AUTH_DIR",
        global = true
    )]
    pub(crate) auth_dir: Option<PathBuf>,
    /// Public key of the OpsPilot NATS account (`A...`).
    #[arg(
        id = "nats-account-public-key",
        long = "nats-account-public-key",
        env = "NATS_ACCOUNT_PUBLIC_KEY",
        value_name = "NATS_ACCOUNT_PUBLIC_KEY",
        global = true
    )]
    pub(crate) account_public_key: Option<String>,
    /// Seed of the account signing key that signs agent credentials (never logged).
    #[arg(id = "nats-account-signing-seed", long = "nats-account-signing-seed", env = "NATS_ACCOUNT_SIGNING_SEED", value_name = "NATS_ACCOUNT_SIGNING_SEED", hide_env_values = true, value_parser = secret, global = true)]
    pub(crate) account_signing_seed: Option<SecretString>,
    /// Seed of the operator signing key that re-signs the account with its revocations
    /// (never logged).
    #[arg(id = "nats-operator-signing-seed", long = "nats-operator-signing-seed", env = "NATS_OPERATOR_SIGNING_SEED", value_name = "NATS_OPERATOR_SIGNING_SEED", hide_env_values = true, value_parser = secret, global = true)]
    pub(crate) operator_signing_seed: Option<SecretString>,
    /// Credentials of the system-account user that pushes account updates.
    #[arg(
        id = "nats-system-creds",
        long = "nats-system-creds",
        env = "NATS_SYSTEM_CREDS",
        value_name = "NATS_SYSTEM_CREDS",
        global = true
    )]
    pub(crate) system_creds: Option<PathBuf>,
    /// Lifetime of the NATS credentials given to an agent; it re-enrolls to rotate them.
    #[arg(id = "agent-credentials-ttl", long = "agent-credentials-ttl", env = "AGENT_CREDENTIALS_TTL", value_name = "AGENT_CREDENTIALS_TTL", default_value = "30d", value_parser = service_kit::config::parse_duration, global = true)]
    pub(crate) credentials_ttl: Duration,
    /// Development only: run without bus security (agents get no credentials). Logs a
    /// warning; never in production.
    #[arg(
        id = "insecure-bus",
        long = "insecure-bus",
        env = "OPSPILOT_INSECURE_BUS",
        value_name = "OPSPILOT_INSECURE_BUS",
        global = true
    )]
    pub(crate) insecure: bool,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

impl std::fmt::Debug for BusAuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusAuthArgs")
            .field("auth_dir", &self.auth_dir)
            .field("account_public_key", &self.account_public_key)
            .field("account_signing_seed", &self.account_signing_seed.as_ref().map(|_| "[REDACTED]"))
            .field("operator_signing_seed", &self.operator_signing_seed.as_ref().map(|_| "[REDACTED]"))
            .field("system_creds", &self.system_creds)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The resolved secrets.
struct Material {
    account_public_key: String,
    account_signing_seed: SecretString,
    operator_signing_seed: SecretString,
    account_name: String,
    system_creds: PathBuf,
}

impl BusAuthArgs {
    fn material(&self) -> Result<Option<Material>, String> {
        if let Some(dir) = &self.auth_dir {
            let text = std::fs::read_to_string(dir.join("keys.json"))
                .map_err(|e| format!("NATS_AUTH_DIR: cannot read keys.json: {e}"))?;
            let setup: AuthSetup = serde_json::from_str(&text)
                .map_err(|_| "NATS_AUTH_DIR: keys.json is not valid".to_owned())?;
            let account = setup.account().map_err(|_| "NATS_AUTH_DIR: invalid account seed".to_owned())?;
            return Ok(Some(Material {
                account_public_key: account.public_key(),
                account_signing_seed: SecretString::from(setup.account_signing_seed.clone()),
                operator_signing_seed: SecretString::from(setup.operator_signing_seed.clone()),
                account_name: setup.account_name.clone(),
                system_creds: dir.join("creds").join("sys.creds"),
            }));
        }
        match (
            &self.account_public_key,
            &self.account_signing_seed,
            &self.operator_signing_seed,
            &self.system_creds,
        ) {
            (Some(key), Some(account_seed), Some(operator_seed), Some(creds)) => Ok(Some(Material {
                account_public_key: key.clone(),
                account_signing_seed: account_seed.clone(),
                operator_signing_seed: operator_seed.clone(),
                account_name: "OPSPILOT".into(),
                system_creds: creds.clone(),
            })),
            (None, None, None, None) => Ok(None),
            _ => Err("NATS_ACCOUNT_PUBLIC_KEY, NATS_ACCOUNT_SIGNING_SEED, NATS_OPERATOR_SIGNING_SEED and \
                      NATS_SYSTEM_CREDS: set all four (or NATS_AUTH_DIR)"
                .into()),
        }
    }

    /// Checks the settings before anything connects.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self.material()? {
            None if self.insecure => Ok(()),
            None => Err("NATS_AUTH_DIR (or the NATS_ACCOUNT_* settings): required for bus security; \
                         OPSPILOT_INSECURE_BUS=true runs without it, for development only"
                .into()),
            Some(m) => {
                Issuer::new(
                    &m.account_public_key,
                    m.account_signing_seed.expose_secret(),
                    natsbus::Topology::default(),
                    self.credentials_ttl,
                )
                .map_err(|_| "NATS_ACCOUNT_SIGNING_SEED: not a valid account seed".to_owned())?;
                natsbus::auth::KeyPair::from_seed(m.operator_signing_seed.expose_secret())
                    .map_err(|_| "NATS_OPERATOR_SIGNING_SEED: not a valid operator seed".to_owned())?;
                if !m.system_creds.is_file() {
                    return Err(format!(
                        "NATS_SYSTEM_CREDS: {} is not a readable file",
                        m.system_creds.display()
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Issues credentials and pushes revocations; `None` inside when bus security is off.
pub(crate) struct BusAuth {
    inner: Option<(Issuer, RevocationPusher)>,
}

impl BusAuth {
    pub(crate) async fn start(args: &BusAuthArgs, nats: &natsbus::NatsConfig) -> anyhow::Result<Self> {
        let Some(m) = args.material().map_err(anyhow::Error::msg)? else {
            tracing::warn!(
                "bus security is OFF (OPSPILOT_INSECURE_BUS): agents get no NATS credentials; development only"
            );
            return Ok(Self { inner: None });
        };
        let topology = nats.topology();
        let issuer = Issuer::new(
            &m.account_public_key,
            m.account_signing_seed.expose_secret(),
            topology,
            args.credentials_ttl,
        )?;
        let options = async_nats::ConnectOptions::new().credentials_file(&m.system_creds).await?;
        let system = natsbus::connect_with(
            options,
            &nats.server_urls(),
            natsbus::auth::SYSTEM_USER,
            nats.request_timeout,
        )
        .await?;
        let operator_signer = natsbus::auth::KeyPair::from_seed(m.operator_signing_seed.expose_secret())?;
        let pusher = RevocationPusher {
            spec: natsbus::auth::AccountSpec {
                name: m.account_name,
                public_key: m.account_public_key,
                signing_keys: vec![
                    natsbus::auth::KeyPair::from_seed(m.account_signing_seed.expose_secret())?.public_key(),
                ],
                jetstream: true,
            },
            operator_signer,
            system,
        };
        tracing::info!("bus security on: agents get credentials of their own");
        Ok(Self { inner: Some((issuer, pusher)) })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub(crate) fn issue(
        &self,
        agent: &AgentId,
        user_public_key: Option<&str>,
    ) -> Result<Option<IssuedCreds>, ApiError> {
        let Some((issuer, _)) = &self.inner else { return Ok(None) };
        issuer
            .issue(agent, user_public_key)
            .map(Some)
            .map_err(|e| ApiError::bad_request("invalid-public-key", e.to_string()))
    }

    /// Pushes the current revocation list (from Postgres) to the servers.
    pub(crate) async fn sync(&self, pool: &storage::PgPool) -> Result<(), ApiError> {
        let Some((_, pusher)) = &self.inner else { return Ok(()) };
        let revocations = storage::credentials::revocations(pool).await?;
        pusher.push(&revocations).await.map_err(|e| {
            ApiError::Unavailable(format!("the revocation did not reach the message bus yet: {e}"))
        })?;
        metrics::gauge!("opspilot_bus_revocations").set(revocations.len() as f64);
        Ok(())
    }
}

/// Pushes the revocation list now and then, so a server that missed an update (it was
/// restarting, say) converges.
pub(crate) async fn resync_forever(
    auth: std::sync::Arc<BusAuth>,
    pool: storage::PgPool,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if !auth.enabled() {
        return;
    }
    loop {
        if let Err(err) = auth.sync(&pool).await {
            tracing::warn!(error = %err, "pushing revocations failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
