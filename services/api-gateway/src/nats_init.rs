//! `api-gateway nats-init`: writes (or completes) the bus security setup, and rotates
//! or revokes credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use service_kit::config::parse_duration;

use anyhow::Context as _;
use natsbus::auth::{
    AuthSetup, GATEWAY_KEYS_FILE, Identity, JetStreamLimits, RevocationPusher, WriteOptions,
};
use secrecy::ExposeSecret as _;

use crate::config::Config;

/// What the subcommand is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsInitArgs {
    /// Where to write keys.json, nats-auth.conf, gateway-keys.json and creds/.
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Lifetime of the services' credentials.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    service_creds_ttl: Duration,
    /// Write new credentials for every service now, revoke the ones they replace
    /// and push the revocations (needs the database and NATS). Services pick up
    /// the new files when the server drops the old credentials.
    #[arg(long)]
    rotate: bool,
    /// Revoke this NATS user public key (a service's or an agent's) and push the
    /// revocation (needs the database and NATS). Repeatable.
    #[arg(long = "revoke-key", value_name = "USER_PUBLIC_KEY")]
    revoke_keys: Vec<String>,
    /// The account's JetStream disk limit (every stream together, all replicas).
    #[arg(long, value_parser = service_kit::config::parse_bytes)]
    account_max_disk: Option<u64>,
    /// The account's JetStream memory limit.
    #[arg(long, value_parser = service_kit::config::parse_bytes)]
    account_max_memory: Option<u64>,
    /// The resolver directory as the NATS server sees it (default: DIR/resolver).
    #[arg(long)]
    resolver_dir: Option<std::path::PathBuf>,
    /// Also copy each identity's files into EXPORT_DIR/<identity>/ (the gateway's
    /// key file with the gateway's, nats-auth.conf into nats/), so each container
    /// can mount only its own.
    #[arg(long)]
    export_dir: Option<std::path::PathBuf>,
}

pub(crate) async fn run(config: &Config, req: NatsInitArgs) -> anyhow::Result<()> {
    let dir = &req.dir;
    let mut setup = AuthSetup::load_or_generate(dir, "OPSPILOT")
        .with_context(|| format!("reading or writing keys in {}", dir.display()))?;
    if req.account_max_disk.is_some() || req.account_max_memory.is_some() {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        setup.jetstream = JetStreamLimits {
            disk_bytes: req.account_max_disk.map_or(setup.jetstream.disk_bytes, as_i64),
            memory_bytes: req.account_max_memory.map_or(setup.jetstream.memory_bytes, as_i64),
        };
        setup.save(dir).with_context(|| format!("writing {}", dir.join("keys.json").display()))?;
    }
    let topology = config.nats.topology();
    let needed = u64::try_from(setup.jetstream.disk_bytes).unwrap_or(0);
    let reserved = topology.max_bytes.total().saturating_mul(topology.replicas as u64);
    if reserved > needed {
        tracing::warn!(
            reserved,
            account_max_disk = needed,
            "the streams reserve more than the account may store; raise --account-max-disk or lower the *_MAX_BYTES"
        );
    }
    let dev = config.serve.dev;
    let options = WriteOptions {
        dev,
        service_ttl: Some(req.service_creds_ttl),
        rotate: req.rotate,
        resolver_dir: req.resolver_dir.clone(),
    };
    let report =
        setup.write_all(dir, &topology, options).with_context(|| format!("writing {}", dir.display()))?;
    for (identity, _) in &report.renewed {
        tracing::info!(identity = %identity.name(), "service credentials written");
    }
    if let Some(export) = &req.export_dir {
        export_identities(dir, export, dev)
            .with_context(|| format!("exporting into {}", export.display()))?;
    }
    tracing::info!(dir = %dir.display(), dev, "bus security files written: nats-auth.conf, gateway-keys.json, creds/");

    let replaced = report.replaced_keys();
    if (req.rotate && !replaced.is_empty()) || !req.revoke_keys.is_empty() {
        let pool = storage::connect(&config.db).await.context("rotation and revocation need the database")?;
        storage::check_schema(&pool).await?;
        let now = chrono::Utc::now();
        let ttl = chrono::Duration::from_std(req.service_creds_ttl).unwrap_or(chrono::Duration::days(90));
        if !replaced.is_empty() {
            // Still valid until their own expiry, at the latest one lifetime from now.
            storage::credentials::revoke_keys(&pool, "service", &replaced, now + ttl).await?;
        }
        if !req.revoke_keys.is_empty() {
            for key in &req.revoke_keys {
                natsbus::auth::check_user_key(key)
                    .map_err(|_| anyhow::anyhow!("--revoke-key {key}: not a user NKey"))?;
            }
            storage::credentials::revoke_keys(
                &pool,
                "manual",
                &req.revoke_keys,
                now + chrono::Duration::days(366),
            )
            .await?;
        }
        push_revocations(config, &setup, &pool).await?;
        tracing::info!(
            rotated = replaced.len(),
            revoked = req.revoke_keys.len(),
            "revocations pushed to the bus"
        );
    }
    Ok(())
}

/// Pushes the account with every revocation on record, as the gateway does.
async fn push_revocations(config: &Config, setup: &AuthSetup, pool: &storage::PgPool) -> anyhow::Result<()> {
    let keys = setup.gateway_keys()?;
    let options = async_nats::ConnectOptions::with_credentials(keys.system_creds.expose_secret())?;
    let system = natsbus::connect_as(&config.nats, options, natsbus::auth::SYSTEM_USER).await?;
    let pusher = RevocationPusher {
        spec: keys.account.clone(),
        topology: config.nats.topology(),
        operator_signer: natsbus::auth::KeyPair::from_seed(keys.operator_signing_seed.expose_secret())?,
        system,
    };
    pusher.push(&storage::credentials::revocations(pool).await?).await?;
    Ok(())
}

/// One directory per identity, holding only what that identity's container needs.
fn export_identities(dir: &Path, export: &Path, dev: bool) -> std::io::Result<()> {
    let copy = |from: PathBuf, to_dir: PathBuf| -> std::io::Result<()> {
        std::fs::create_dir_all(&to_dir)?;
        let Some(name) = from.file_name() else { return Ok(()) };
        let to = to_dir.join(name);
        std::fs::copy(&from, &to)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
    };
    let identities =
        natsbus::auth::SERVICES.iter().chain(if dev { natsbus::auth::DEV_IDENTITIES } else { &[] });
    for identity in identities {
        let name = identity.name();
        copy(dir.join("creds").join(format!("{name}.creds")), export.join(&name))?;
        if *identity == Identity::ApiGateway {
            copy(dir.join(GATEWAY_KEYS_FILE), export.join(&name))?;
        }
    }
    copy(dir.join("nats-auth.conf"), export.join("nats"))?;
    copy(dir.join("account.pub"), export.join("nats"))
}
