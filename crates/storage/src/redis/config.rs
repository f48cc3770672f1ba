use std::fmt;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::Timeouts;
use secrecy::{ExposeSecret, SecretString};

use super::pool::{Manager, Pool};
use super::{Keys, RedisError};

/// Redis settings shared by every service.
#[derive(Clone, clap::Args)]
pub struct RedisConfig {
    /// Redis URL (`redis://[:password@]host:port/db`); never logged, it may hold a password.
    #[arg(id = "redis-url", long = "redis-url", env = "REDIS_URL", value_name = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = service_kit::config::secret)]
    pub url: SecretString,
    /// Prefix of every key OpsPilot writes, so several deployments (or tests) can share
    /// one Redis.
    #[arg(
        id = "redis-prefix",
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        value_name = "REDIS_PREFIX",
        default_value = "opspilot:"
    )]
    pub prefix: String,
    /// Largest number of pooled connections.
    #[arg(
        id = "redis-pool-size",
        long = "redis-pool-size",
        env = "REDIS_POOL_SIZE",
        value_name = "REDIS_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: usize,
    /// Timeout for getting a connection and for each command.
    #[arg(id = "redis-timeout", long = "redis-timeout", env = "REDIS_TIMEOUT", value_name = "REDIS_TIMEOUT", default_value = "2s", value_parser = service_kit::config::parse_duration)]
    pub timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"[REDACTED]")
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConfig {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// Refuses a placeholder or example password in the URL outside development mode,
    /// and a `rediss://` URL that turns certificate checks off (`#insecure`).
    pub fn check_secrets(&self, dev: bool) -> Result<(), String> {
        if self.url.expose_secret().ends_with("#insecure") && !dev {
            return Err("REDIS_URL: #insecure turns TLS certificate checks off; \
                        only with OPSPILOT_DEV=true, for local development"
                .into());
        }
        match service_kit::config::url_password(self.url.expose_secret()) {
            Some(password) => service_kit::config::check_secret("REDIS_URL", &password, dev),
            None => Ok(()),
        }
    }

    /// Checks the URL and prefix without connecting.
    pub fn validate(&self) -> Result<(), String> {
        ::redis::Client::open(self.url.expose_secret())
            .map_err(|_| "REDIS_URL: not a valid redis:// or rediss:// URL".to_owned())?;
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

    pub fn build_pool(&self) -> Result<Pool, RedisError> {
        let manager = Manager::new(self.url.expose_secret())
            .map_err(|_| RedisError::Config("REDIS_URL: not a valid redis:// URL".into()))?;
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
