use std::net::SocketAddr;

use natsbus::NatsConfig;
use presence::RedisConfig;
use secrecy::{ExposeSecret, SecretString};
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;

/// Configuration of the api-gateway.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "api-gateway",
    version,
    args_override_self = true,
    about = "OpsPilot api-gateway: the operator HTTP API"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
}

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Create the database if missing, apply migrations and exit (safe to run from
    /// several places at once).
    Migrate,
}

/// HTTP and security settings.
#[derive(Clone, clap::Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(
        long = "http-addr",
        env = "HTTP_ADDR",
        value_name = "HTTP_ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// Secret that signs access tokens (HS256); at least 32 bytes. Never logged.
    #[arg(long = "jwt-secret", env = "JWT_SECRET", value_name = "JWT_SECRET", hide_env_values = true, value_parser = secret, global = true)]
    pub jwt_secret: Option<SecretString>,
    /// Development mode: accept a short or default JWT_SECRET. Never in production.
    #[arg(long = "dev", env = "OPSPILOT_DEV", value_name = "OPSPILOT_DEV", global = true)]
    pub dev: bool,
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("http_addr", &self.http_addr)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "[REDACTED]"))
            .field("dev", &self.dev)
            .finish()
    }
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// The original design's placeholder secret; refused outside development mode.
const DEFAULT_SECRETS: &[&str] = &["change_me", "changeme", "secret"];
const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Validates everything before anything binds or connects.
    pub fn validate(&self) -> Result<(), String> {
        self.telemetry.validate()?;
        self.db.validate()?;
        if matches!(self.command, Some(Command::Migrate)) {
            return Ok(());
        }
        self.nats.validate()?;
        self.redis.validate()?;
        let Some(secret) = &self.serve.jwt_secret else {
            return Err("JWT_SECRET: required (at least 32 random bytes)".into());
        };
        let secret = secret.expose_secret();
        let weak = secret.len() < MIN_SECRET_BYTES || DEFAULT_SECRETS.contains(&secret);
        if weak && !self.serve.dev {
            return Err(format!(
                "JWT_SECRET: must be at least {MIN_SECRET_BYTES} bytes and not a default value \
                 (set OPSPILOT_DEV=true only for local development)"
            ));
        }
        if weak {
            tracing::warn!("JWT_SECRET is weak; accepted only because OPSPILOT_DEV is set");
        }
        Ok(())
    }
}
