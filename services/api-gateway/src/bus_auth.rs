//! The gateway's part of bus security: minting each enrolled agent's NATS credentials
//! and pushing revocations to the servers.

use std::path::PathBuf;
use std::time::Duration;

use natsbus::auth::{GatewayKeys, IssuedCreds, Issuer, RevocationPusher};
use secrecy::ExposeSecret;
use wire_models::AgentId;

use crate::error::ApiError;

/// Bus security settings.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Bus security")]
pub(crate) struct BusAuthArgs {
    /// Directory written by `api-gateway nats-init`: the gateway reads
    /// `gateway-keys.json` there (and its own `creds/api-gateway.creds` when
    /// NATS_CREDS is unset).
    #[arg(
        id = "nats-auth-dir",
        long = "nats-auth-dir",
        env = "NATS_AUTH_DIR",
        value_name = "NATS_AUTH_DIR",
        global = true
    )]
    pub(crate) auth_dir: Option<PathBuf>,
    /// The gateway's key file itself (`gateway-keys.json`: the scoped key that signs
    /// agent credentials, the operator signing key that re-signs the account with its
    /// revocations, the system user's credentials); instead of NATS_AUTH_DIR, e.g. a
    /// mounted Secret. Never logged.
    #[arg(
        id = "nats-gateway-keys",
        long = "nats-gateway-keys",
        env = "NATS_GATEWAY_KEYS",
        value_name = "NATS_GATEWAY_KEYS",
        global = true
    )]
    pub(crate) gateway_keys: Option<PathBuf>,
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

impl std::fmt::Debug for BusAuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusAuthArgs")
            .field("auth_dir", &self.auth_dir)
            .field("gateway_keys", &self.gateway_keys)
            .field("credentials_ttl", &self.credentials_ttl)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl BusAuthArgs {
    fn keys_path(&self) -> Option<PathBuf> {
        self.gateway_keys
            .clone()
            .or_else(|| self.auth_dir.as_ref().map(|dir| dir.join(natsbus::auth::GATEWAY_KEYS_FILE)))
    }

    fn keys(&self) -> Result<Option<GatewayKeys>, String> {
        let Some(path) = self.keys_path() else { return Ok(None) };
        let variable = if self.gateway_keys.is_some() { "NATS_GATEWAY_KEYS" } else { "NATS_AUTH_DIR" };
        GatewayKeys::load(&path)
            .map(Some)
            .map_err(|e| format!("{variable}: {e} (run `api-gateway nats-init` to write it)"))
    }

    /// Checks the settings before anything connects.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self.keys()? {
            None if self.insecure => Ok(()),
            None => Err("NATS_AUTH_DIR (or NATS_GATEWAY_KEYS): required for bus security; \
                         OPSPILOT_INSECURE_BUS=true runs without it, for development only"
                .into()),
            Some(_) => Ok(()),
        }
    }
}

/// A key credentials are about to be issued for.
pub(crate) struct PendingKey {
    pub(crate) public: String,
    seed: Option<secrecy::SecretString>,
}

/// Issues credentials and pushes revocations; `None` inside when bus security is off.
pub(crate) struct BusAuth {
    inner: Option<(Issuer, RevocationPusher)>,
}

impl BusAuth {
    pub(crate) async fn start(args: &BusAuthArgs, nats: &natsbus::NatsConfig) -> anyhow::Result<Self> {
        let Some(keys) = args.keys().map_err(anyhow::Error::msg)? else {
            tracing::warn!(
                "bus security is OFF (OPSPILOT_INSECURE_BUS): agents get no NATS credentials; development only"
            );
            return Ok(Self { inner: None });
        };
        let topology = nats.topology();
        let issuer = keys.issuer(args.credentials_ttl)?;
        let options = async_nats::ConnectOptions::with_credentials(keys.system_creds.expose_secret())?;
        let system = natsbus::connect_as(nats, options, natsbus::auth::SYSTEM_USER).await?;
        let operator_signer = natsbus::auth::KeyPair::from_seed(keys.operator_signing_seed.expose_secret())?;
        let pusher = RevocationPusher { spec: keys.account.clone(), topology, operator_signer, system };
        tracing::info!("bus security on: agents get credentials of their own");
        Ok(Self { inner: Some((issuer, pusher)) })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The key new credentials will be for: the agent's own (checked to be a user
    /// NKey) or one generated here, whose seed goes back to the agent once. `None`
    /// without bus security.
    pub(crate) fn prepare_key(&self, requested: Option<&str>) -> Result<Option<PendingKey>, ApiError> {
        if self.inner.is_none() {
            return Ok(None);
        }
        match requested {
            Some(public) => {
                natsbus::auth::check_user_key(public).map_err(|_| {
                    ApiError::bad_request("invalid-public-key", "nats_public_key must be a user NKey (U...)")
                })?;
                Ok(Some(PendingKey { public: public.to_owned(), seed: None }))
            }
            None => {
                let pair = natsbus::auth::KeyPair::new_user();
                let seed =
                    pair.seed().map_err(|e| ApiError::Internal(anyhow::anyhow!("generating a key: {e}")))?;
                Ok(Some(PendingKey {
                    public: pair.public_key(),
                    seed: Some(secrecy::SecretString::from(seed)),
                }))
            }
        }
    }

    /// Signs credentials for `agent` and `key`.
    pub(crate) fn issue(&self, agent: &AgentId, key: PendingKey) -> Result<Option<IssuedCreds>, ApiError> {
        let Some((issuer, _)) = &self.inner else { return Ok(None) };
        let mut issued = issuer
            .issue(agent, Some(&key.public))
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing agent credentials: {e}")))?;
        issued.seed = key.seed;
        Ok(Some(issued))
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
