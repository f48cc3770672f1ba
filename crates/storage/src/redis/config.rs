use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::Timeouts;
use secrecy::{ExposeSecret, SecretString};

use super::pool::{Manager, Pool};
use super::{Keys, RedisError};

/// The Redis of a development machine, when REDIS_URL is not set.
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Redis settings shared by every service.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis URL (`redis://[:password@]host:port/db`, `rediss://` for TLS; default
    /// redis://127.0.0.1:6379): REDIS_URL in the environment, or this file. Never a
    /// flag and never logged: it may hold a password.
    #[arg(
        id = "redis-url-file",
        long = "redis-url-file",
        env = "REDIS_URL_FILE",
        value_name = "REDIS_URL_FILE",
        global = true
    )]
    pub url_file: Option<PathBuf>,
    /// REDIS_URL, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip = SecretString::from(DEFAULT_URL))]
    pub url: SecretString,
    /// The Redis password (AUTH), when the URL holds none: REDIS_PASSWORD in the
    /// environment, or this file. Never a flag, never logged.
    #[arg(
        id = "redis-password-file",
        long = "redis-password-file",
        env = "REDIS_PASSWORD_FILE",
        value_name = "REDIS_PASSWORD_FILE",
        global = true
    )]
    pub password_file: Option<PathBuf>,
    /// REDIS_PASSWORD, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub password: Option<SecretString>,
    /// PEM file of the CA(s) that signed the server's certificate, for a `rediss://`
    /// URL; it replaces the system's roots. Without it the system's roots are trusted.
    #[arg(
        id = "redis-tls-ca",
        long = "redis-tls-ca",
        env = "REDIS_TLS_CA",
        value_name = "REDIS_TLS_CA",
        global = true
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a Redis that requires one (`tls-auth-clients`),
    /// with REDIS_TLS_KEY.
    #[arg(
        id = "redis-tls-cert",
        long = "redis-tls-cert",
        env = "REDIS_TLS_CERT",
        value_name = "REDIS_TLS_CERT",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "redis-tls-key",
        long = "redis-tls-key",
        env = "REDIS_TLS_KEY",
        value_name = "REDIS_TLS_KEY",
        global = true
    )]
    pub tls_key: Option<PathBuf>,
    /// Prefix of every key OpsPilot writes, so several deployments (or tests) can share
    /// one Redis.
    #[arg(
        id = "redis-prefix",
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        value_name = "REDIS_PREFIX",
        default_value = "opspilot:",
        global = true
    )]
    pub prefix: String,
    /// Largest number of pooled connections.
    #[arg(
        id = "redis-pool-size",
        long = "redis-pool-size",
        env = "REDIS_POOL_SIZE",
        value_name = "REDIS_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub pool_size: usize,
    /// Timeout for getting a connection and for each command.
    #[arg(id = "redis-timeout", long = "redis-timeout", env = "REDIS_TIMEOUT", value_name = "REDIS_TIMEOUT", default_value = "2s", value_parser = service_kit::config::parse_duration, global = true)]
    pub timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"[REDACTED]")
            .field("password", &self.password.as_ref().map(|_| "[REDACTED]"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl service_kit::config::LoadSecrets for RedisConfig {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        if let Some(url) = env.secret("REDIS_URL", self.url_file.as_deref())? {
            self.url = url;
        }
        self.password = env.secret("REDIS_PASSWORD", self.password_file.as_deref())?;
        Ok(())
    }
}

impl RedisConfig {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// Refuses a placeholder or example password outside development mode, and a
    /// `rediss://` URL that turns certificate checks off (`#insecure`).
    pub fn check_secrets(&self, dev: bool) -> Result<(), String> {
        if self.url.expose_secret().ends_with("#insecure") && !dev {
            return Err("REDIS_URL: #insecure turns TLS certificate checks off; \
                        only with OPSPILOT_DEV=true, for local development"
                .into());
        }
        if let Some(password) = &self.password {
            service_kit::config::check_secret("REDIS_PASSWORD", password.expose_secret(), dev)?;
        }
        match service_kit::config::url_password(self.url.expose_secret()) {
            Some(password) => service_kit::config::check_secret("REDIS_URL", &password, dev),
            None => Ok(()),
        }
    }

    /// Checks the URL, the password, the TLS files and the prefix without connecting.
    pub fn validate(&self) -> Result<(), String> {
        self.client().map_err(|e| match e {
            RedisError::Config(message) => message,
            other => other.to_string(),
        })?;
        if self.password.is_some() && service_kit::config::url_password(self.url.expose_secret()).is_some() {
            return Err("REDIS_URL and REDIS_PASSWORD: both carry a password; set it in one place".into());
        }
        if self.prefix.chars().any(|c| c.is_whitespace() || c.is_control()) || self.prefix.len() > 64 {
            return Err("REDIS_PREFIX: at most 64 characters, no whitespace".into());
        }
        if self.pool_size == 0 {
            return Err("REDIS_POOL_SIZE: must be at least 1".into());
        }
        Ok(())
    }

    /// `host:port` for logs, without credentials.
    pub fn display_target(&self) -> String {
        ::redis::Client::open(self.url.expose_secret())
            .map(|c| c.get_connection_info().addr().to_string())
            .unwrap_or_else(|_| "invalid".into())
    }

    /// A client for these settings: the URL, REDIS_PASSWORD, and for `rediss://` the
    /// CA and client certificate. The files are read on every call, so a pool built
    /// later sees renewed ones. Errors never contain the URL (it may hold a password).
    pub fn client(&self) -> Result<::redis::Client, RedisError> {
        use ::redis::IntoConnectionInfo as _;
        let invalid = || RedisError::Config("REDIS_URL: not a valid redis:// or rediss:// URL".into());
        let mut info = self.url.expose_secret().into_connection_info().map_err(|_| invalid())?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password.expose_secret());
            info = info.set_redis_settings(settings);
        }
        let tls_files = self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some();
        if !tls_files {
            return ::redis::Client::open(info).map_err(|_| invalid());
        }
        if !matches!(info.addr(), ::redis::ConnectionAddr::TcpTls { .. }) {
            return Err(RedisError::Config(
                "REDIS_TLS_CA, REDIS_TLS_CERT, REDIS_TLS_KEY: need a rediss:// REDIS_URL".into(),
            ));
        }
        use service_kit::config::{Pem, read_pem};
        let config = |message: String| RedisError::Config(message);
        let root_cert = match &self.tls_ca {
            Some(ca) => Some(read_pem("REDIS_TLS_CA", ca, Pem::Certificates).map_err(config)?),
            None => None,
        };
        let client_tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
                client_cert: read_pem("REDIS_TLS_CERT", cert, Pem::Certificates).map_err(config)?,
                client_key: read_pem("REDIS_TLS_KEY", key, Pem::PrivateKey).map_err(config)?,
            }),
            (None, None) => None,
            _ => return Err(config("REDIS_TLS_CERT and REDIS_TLS_KEY: set both or neither".into())),
        };
        ::redis::Client::build_with_tls(info, ::redis::TlsCertificates { client_tls, root_cert })
            .map_err(|e| config(format!("REDIS_TLS_CA, REDIS_TLS_CERT, REDIS_TLS_KEY: {e}")))
    }

    pub fn build_pool(&self) -> Result<Pool, RedisError> {
        let manager = Manager::new(&self.client()?)?;
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(self.pool_size)
            .timeouts(Timeouts {
                wait: Some(self.timeout),
                create: Some(self.timeout),
                recycle: Some(self.timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| RedisError::Config(e.to_string()))?;
        Ok(Pool::new(pool))
    }
}
