use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use natsbus::NatsConfig;
use secrecy::{ExposeSecret, SecretString};
use service_kit::config::parse_duration;
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;
use storage::redis::RedisConfig;

use crate::auth::Role;

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
    pub admin: service_kit::service::AdminArgs,
    #[command(flatten, next_help_heading = "Telemetry")]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub(crate) bus_auth: crate::bus_auth::BusAuthArgs,
}

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Create the database if missing, apply migrations and exit (safe to run from
    /// several places at once).
    Migrate,
    /// Create a user and exit; the password is read from standard input (one line) or
    /// from ADMIN_PASSWORD.
    CreateUser {
        /// The user's email (their login).
        #[arg(long)]
        email: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = parse_role, default_value = "admin")]
        role: Role,
    },
    /// Generate (or complete) the bus security setup in a directory: keys, the
    /// nats-server configuration fragment, every service's credentials and the
    /// gateway's key file. Existing keys are kept, and service credentials are
    /// renewed only when a third of their lifetime is left (or with --rotate), so
    /// running it again is safe. With OPSPILOT_DEV it also writes the development
    /// identities (the simulator's fleet identity and a superuser).
    NatsInit(crate::nats_init::NatsInitArgs),
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "must be viewer, operator or admin".to_owned())
}

/// HTTP, security and behaviour settings.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "HTTP API")]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(
        id = "http-addr",
        long = "http-addr",
        env = "HTTP_ADDR",
        value_name = "HTTP_ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// Secret that signs access tokens (HS256), at least 32 bytes: JWT_SECRET in the
    /// environment, or this file. Never a flag, never logged.
    #[arg(
        id = "jwt-secret-file",
        long = "jwt-secret-file",
        env = "JWT_SECRET_FILE",
        value_name = "JWT_SECRET_FILE",
        global = true
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWT_SECRET, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub jwt_secret: Option<SecretString>,
    /// `iss` claim of issued tokens; tokens from any other issuer are refused.
    #[arg(
        id = "jwt-issuer",
        long = "jwt-issuer",
        env = "JWT_ISSUER",
        value_name = "JWT_ISSUER",
        default_value = "opspilot",
        global = true
    )]
    pub jwt_issuer: String,
    /// Lifetime of an access token.
    #[arg(id = "token-ttl", long = "token-ttl", env = "TOKEN_TTL", value_name = "TOKEN_TTL", default_value = "1h", value_parser = parse_duration, global = true)]
    pub token_ttl: Duration,
    /// Development mode: accept a short or default JWT_SECRET. Never in production.
    #[arg(id = "dev", long = "dev", env = "OPSPILOT_DEV", value_name = "OPSPILOT_DEV", global = true)]
    pub dev: bool,
    /// Email of the first admin, created at start when there are no users yet.
    #[arg(
        id = "admin-email",
        long = "admin-email",
        env = "ADMIN_EMAIL",
        value_name = "ADMIN_EMAIL",
        global = true
    )]
    pub admin_email: Option<String>,
    /// Password of that first admin (and `create-user`'s, instead of standard input):
    /// ADMIN_PASSWORD in the environment, or this file. Never a flag, never logged.
    #[arg(
        id = "admin-password-file",
        long = "admin-password-file",
        env = "ADMIN_PASSWORD_FILE",
        value_name = "ADMIN_PASSWORD_FILE",
        global = true
    )]
    pub admin_password_file: Option<PathBuf>,
    /// ADMIN_PASSWORD, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub admin_password: Option<SecretString>,
    /// An enrollment token accepted without a database entry (local development):
    /// BOOTSTRAP_TOKEN in the environment, or this file. Never a flag, never logged.
    #[arg(
        id = "bootstrap-token-file",
        long = "bootstrap-token-file",
        env = "BOOTSTRAP_TOKEN_FILE",
        value_name = "BOOTSTRAP_TOKEN_FILE",
        global = true
    )]
    pub bootstrap_token_file: Option<PathBuf>,
    /// BOOTSTRAP_TOKEN, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub bootstrap_token: Option<SecretString>,
    /// NATS URLs handed to enrolling agents (default: the gateway's own NATS_URLS).
    #[arg(
        id = "agent-nats-urls",
        long = "agent-nats-urls",
        env = "AGENT_NATS_URLS",
        value_name = "AGENT_NATS_URLS",
        value_parser = natsbus::parse_server_urls,
        global = true
    )]
    pub agent_nats_urls: Option<natsbus::ServerUrls>,
    /// Heartbeat interval handed to enrolling agents, in seconds.
    #[arg(
        id = "agent-heartbeat-interval",
        long = "agent-heartbeat-interval",
        env = "AGENT_HEARTBEAT_INTERVAL",
        value_name = "AGENT_HEARTBEAT_INTERVAL",
        default_value_t = 10,
        global = true
    )]
    pub agent_heartbeat_interval: u32,
    /// Silence after which an agent counts as offline when only Postgres knows about it.
    #[arg(id = "offline-threshold", long = "offline-threshold", env = "OFFLINE_THRESHOLD", value_name = "OFFLINE_THRESHOLD", default_value = "30s", value_parser = parse_duration, global = true)]
    pub offline_threshold: Duration,
    /// How long an execute waits for the agent's reply before answering 504.
    #[arg(id = "rpc-timeout", long = "rpc-timeout", env = "RPC_TIMEOUT", value_name = "RPC_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub rpc_timeout: Duration,
    /// How long a client may take to send a whole request body before it gets 408.
    #[arg(id = "body-timeout", long = "body-timeout", env = "BODY_TIMEOUT", value_name = "BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub body_timeout: Duration,
    /// How long an analyze waits for the ai-analyzer.
    #[arg(id = "analyze-timeout", long = "analyze-timeout", env = "ANALYZE_TIMEOUT", value_name = "ANALYZE_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub analyze_timeout: Duration,
    /// Requests per minute per client address (0 = no limit).
    #[arg(
        id = "rate-limit-ip",
        long = "rate-limit-ip",
        env = "RATE_LIMIT_PER_IP",
        value_name = "RATE_LIMIT_PER_IP",
        default_value_t = 1200,
        global = true
    )]
    pub rate_limit_ip: u32,
    /// Requests per minute per user (0 = no limit).
    #[arg(
        id = "rate-limit-user",
        long = "rate-limit-user",
        env = "RATE_LIMIT_PER_USER",
        value_name = "RATE_LIMIT_PER_USER",
        default_value_t = 1200,
        global = true
    )]
    pub rate_limit_user: u32,
    /// Login attempts per minute per client address.
    #[arg(
        id = "rate-limit-login",
        long = "rate-limit-login",
        env = "RATE_LIMIT_LOGIN",
        value_name = "RATE_LIMIT_LOGIN",
        default_value_t = 10,
        global = true
    )]
    pub rate_limit_login: u32,
    /// Login attempts per 10 minutes per account.
    #[arg(
        id = "rate-limit-login-account",
        long = "rate-limit-login-account",
        env = "RATE_LIMIT_LOGIN_ACCOUNT",
        value_name = "RATE_LIMIT_LOGIN_ACCOUNT",
        default_value_t = 20,
        global = true
    )]
    pub rate_limit_login_account: u32,
    /// Enrollment attempts per minute per client address.
    #[arg(
        id = "rate-limit-enroll",
        long = "rate-limit-enroll",
        env = "RATE_LIMIT_ENROLL",
        value_name = "RATE_LIMIT_ENROLL",
        default_value_t = 60,
        global = true
    )]
    pub rate_limit_enroll: u32,
    /// Believe one hop of X-Forwarded-For from any peer (the rightmost entry): only
    /// when nothing but your proxy can reach the gateway. TRUSTED_PROXIES is safer.
    #[arg(
        id = "trust-proxy",
        long = "trust-proxy",
        env = "TRUST_PROXY_HEADERS",
        value_name = "TRUST_PROXY_HEADERS",
        global = true
    )]
    pub trust_proxy: bool,
    /// Proxies whose X-Forwarded-For is believed, as comma-separated networks or
    /// addresses (`10.0.0.0/8,192.168.1.10`). The client is the rightmost address
    /// that is not one of them; a request from any other peer is taken at its address.
    #[arg(id = "trusted-proxies", long = "trusted-proxies", env = "TRUSTED_PROXIES", value_name = "TRUSTED_PROXIES", value_parser = parse_networks, global = true)]
    pub trusted_proxies: Option<Networks>,
    /// Password hashes (logins, password changes) computed at once; each holds 19 MiB.
    /// Past it a request waits up to `PASSWORD_HASH_WAIT`, then gets 503 with Retry-After.
    #[arg(
        id = "max-concurrent-password-hashes",
        long = "max-concurrent-password-hashes",
        env = "MAX_CONCURRENT_PASSWORD_HASHES",
        value_name = "MAX_CONCURRENT_PASSWORD_HASHES",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=256),
        global = true
    )]
    pub max_concurrent_hashes: u16,
    /// How long a login waits for a hashing slot before it gets 503 with Retry-After.
    #[arg(id = "password-hash-wait", long = "password-hash-wait", env = "PASSWORD_HASH_WAIT", value_name = "PASSWORD_HASH_WAIT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub password_hash_wait: Duration,
    /// Live-stream events a client may fall behind by before it is sent `lagged` and
    /// closed (the replica's broadcast ring; each slot holds one event).
    #[arg(
        id = "stream-buffer",
        long = "stream-buffer",
        env = "STREAM_BUFFER",
        value_name = "STREAM_BUFFER",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(16..=1_048_576),
        global = true
    )]
    pub stream_buffer: u32,
    /// The kernel send buffer of each HTTP connection (`SO_SNDBUF`; the kernel doubles
    /// it). Bounded, so a client that stops reading a live stream holds this much, not
    /// megabytes, and falls behind the feed where the gateway can see it (`lagged`).
    #[arg(id = "http-send-buffer", long = "http-send-buffer", env = "HTTP_SEND_BUFFER", value_name = "HTTP_SEND_BUFFER", default_value = "128KiB", value_parser = parse_send_buffer, global = true)]
    pub http_send_buffer: u64,
    /// How often an idle live stream gets a keep-alive comment.
    #[arg(id = "stream-keepalive", long = "stream-keepalive", env = "STREAM_KEEPALIVE", value_name = "STREAM_KEEPALIVE", default_value = "15s", value_parser = parse_duration, global = true)]
    pub stream_keepalive: Duration,
    /// A mutating fleet action to more agents than this must repeat their number in
    /// `confirm`.
    #[arg(
        id = "action-confirm-over",
        long = "action-confirm-over",
        env = "ACTION_CONFIRM_OVER",
        value_name = "ACTION_CONFIRM_OVER",
        default_value_t = 50,
        global = true
    )]
    pub action_confirm_over: u32,
    /// The most agents one fleet action may target.
    #[arg(
        id = "action-max-targets",
        long = "action-max-targets",
        env = "ACTION_MAX_TARGETS",
        value_name = "ACTION_MAX_TARGETS",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        global = true
    )]
    pub action_max_targets: u32,
    /// How long cached reads (agent lists) are reused; 0 disables the cache.
    #[arg(id = "cache-ttl", long = "cache-ttl", env = "API_CACHE_TTL", value_name = "API_CACHE_TTL", default_value = "2s", value_parser = parse_duration, global = true)]
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("http_addr", &self.http_addr)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "[REDACTED]"))
            .field("admin_password", &self.admin_password.as_ref().map(|_| "[REDACTED]"))
            .field("bootstrap_token", &self.bootstrap_token.as_ref().map(|_| "[REDACTED]"))
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

impl service_kit::config::LoadSecrets for ServeArgs {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.jwt_secret = env.secret("JWT_SECRET", self.jwt_secret_file.as_deref())?;
        self.admin_password = env.secret("ADMIN_PASSWORD", self.admin_password_file.as_deref())?;
        self.bootstrap_token = env.secret("BOOTSTRAP_TOKEN", self.bootstrap_token_file.as_deref())?;
        Ok(())
    }
}

impl service_kit::config::LoadSecrets for Config {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.serve.load_secrets(env)?;
        self.nats.load_secrets(env)?;
        self.db.load_secrets(env)?;
        self.redis.load_secrets(env)
    }
}

/// Parsed TRUSTED_PROXIES.
#[derive(Debug, Clone)]
pub struct Networks(pub(crate) Vec<ipnet::IpNet>);

fn parse_networks(s: &str) -> Result<Networks, String> {
    crate::client_ip::parse_networks(s).map(Networks)
}

/// The original design's placeholder secret; refused outside development mode.
const DEFAULT_SECRETS: &[&str] = &["change_me", "changeme", "secret"];
const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Validates everything before anything binds or connects.
    pub fn validate(&self) -> Result<(), String> {
        self.telemetry.validate()?;
        self.db.validate()?;
        self.db.check_secrets(self.serve.dev)?;
        match &self.command {
            Some(Command::Migrate) => return Ok(()),
            Some(Command::CreateUser { email, .. }) => {
                return crate::routes::auth::validate_email(email)
                    .map_err(|_| "--email: not a valid email".into());
            }
            Some(Command::NatsInit(_)) => return Ok(()),
            None | Some(Command::Serve) => {}
        }
        self.nats.validate()?;
        self.redis.validate()?;
        let dev = self.serve.dev;
        self.redis.check_secrets(dev)?;
        self.nats.check_secrets(dev)?;
        let Some(secret) = &self.serve.jwt_secret else {
            return Err("JWT_SECRET: required (at least 32 random bytes)".into());
        };
        let secret = secret.expose_secret();
        service_kit::config::check_secret("JWT_SECRET", secret, dev)?;
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
        if self.serve.jwt_issuer.is_empty() || self.serve.jwt_issuer.len() > 128 {
            return Err("JWT_ISSUER: 1 to 128 characters".into());
        }
        if self.serve.token_ttl < Duration::from_secs(60)
            || self.serve.token_ttl > Duration::from_secs(30 * 86400)
        {
            return Err("TOKEN_TTL: between 1m and 30d".into());
        }
        if !(1..=3600).contains(&self.serve.agent_heartbeat_interval) {
            return Err("AGENT_HEARTBEAT_INTERVAL: between 1 and 3600 seconds".into());
        }
        if self.serve.password_hash_wait > Duration::from_secs(60) {
            return Err("PASSWORD_HASH_WAIT: at most 60s".into());
        }
        if self.serve.rpc_timeout.is_zero() || self.serve.rpc_timeout > Duration::from_secs(300) {
            return Err("RPC_TIMEOUT: between 1ms and 5m".into());
        }
        if self.serve.body_timeout.is_zero() || self.serve.body_timeout > Duration::from_secs(300) {
            return Err("BODY_TIMEOUT: between 1ms and 5m".into());
        }
        if self.serve.analyze_timeout.is_zero() {
            return Err("ANALYZE_TIMEOUT: must be positive".into());
        }
        if self.serve.admin_email.is_some() != self.serve.admin_password.is_some() {
            return Err("ADMIN_EMAIL and ADMIN_PASSWORD: set both or neither".into());
        }
        if let Some(email) = &self.serve.admin_email {
            crate::routes::auth::validate_email(email)
                .map_err(|_| "ADMIN_EMAIL: not a valid email".to_owned())?;
        }
        if let Some(password) = &self.serve.admin_password {
            service_kit::config::check_secret("ADMIN_PASSWORD", password.expose_secret(), dev)?;
            crate::routes::auth::validate_password(password)
                .map_err(|_| "ADMIN_PASSWORD: 12 to 1024 characters".to_owned())?;
        }
        self.bus_auth.validate()?;
        if let Some(token) = &self.serve.bootstrap_token {
            service_kit::config::check_secret("BOOTSTRAP_TOKEN", token.expose_secret(), dev)?;
        }
        if let Some(token) = &self.serve.bootstrap_token
            && token.expose_secret().len() < 16
            && !self.serve.dev
        {
            return Err("BOOTSTRAP_TOKEN: at least 16 characters".into());
        }
        Ok(())
    }
}

fn parse_send_buffer(s: &str) -> Result<u64, String> {
    let bytes = service_kit::config::parse_bytes(s)?;
    if (4096..=64 * 1024 * 1024).contains(&bytes) { Ok(bytes) } else { Err("between 4KiB and 64MiB".into()) }
}
