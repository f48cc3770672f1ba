use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::StorageError;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl From<SslMode> for PgSslMode {
    fn from(mode: SslMode) -> Self {
        match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// Postgres settings, as the original backend named them (`DB_*`), or one URL.
#[derive(Clone, clap::Args)]
pub struct DbConfig {
    /// Full connection URL (`postgres://user:pass@host:port/db?sslmode=...`); when set
    /// it replaces the DB_* settings.
    #[arg(id = "database-url", long = "database-url", env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true, value_parser = service_kit::config::secret)]
    pub database_url: Option<SecretString>,
    /// Database host.
    #[arg(
        id = "db-host",
        long = "db-host",
        env = "DB_HOST",
        value_name = "DB_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: String,
    /// Database port.
    #[arg(id = "db-port", long = "db-port", env = "DB_PORT", value_name = "DB_PORT", default_value_t = 5432)]
    pub port: u16,
    /// Database user.
    #[arg(
        id = "db-user",
        long = "db-user",
        env = "DB_USER",
        value_name = "DB_USER",
        default_value = "postgres"
    )]
    pub user: String,
    /// Database password (never logged).
    #[arg(id = "db-password", long = "db-password", env = "DB_PASSWORD", value_name = "DB_PASSWORD", hide_env_values = true, value_parser = service_kit::config::secret)]
    pub password: Option<SecretString>,
    /// Database name.
    #[arg(
        id = "db-name",
        long = "db-name",
        env = "DB_NAME",
        value_name = "DB_NAME",
        default_value = "opspilot"
    )]
    pub name: String,
    /// TLS mode, as libpq's `sslmode`. Use `disable` for a database on loopback,
    /// `verify-full` for one across a network.
    #[arg(
        id = "db-sslmode",
        long = "db-sslmode",
        env = "DB_SSLMODE",
        value_name = "DB_SSLMODE",
        value_enum,
        default_value = "prefer"
    )]
    pub sslmode: SslMode,
    /// Largest number of pooled connections.
    #[arg(
        id = "db-max-connections",
        long = "db-max-connections",
        env = "DB_MAX_CONNECTIONS",
        value_name = "DB_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub max_connections: u32,
    /// How long to wait for a pooled connection before failing.
    #[arg(id = "db-acquire-timeout", long = "db-acquire-timeout", env = "DB_ACQUIRE_TIMEOUT", value_name = "DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = service_kit::config::parse_duration)]
    pub acquire_timeout: Duration,
    /// Longest any single statement may run (Postgres `statement_timeout`).
    #[arg(id = "db-statement-timeout", long = "db-statement-timeout", env = "DB_STATEMENT_TIMEOUT", value_name = "DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = service_kit::config::parse_duration)]
    pub statement_timeout: Duration,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("database_url", &self.database_url.as_ref().map(|_| "[REDACTED]"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[REDACTED]"))
            .field("name", &self.name)
            .field("sslmode", &self.sslmode)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl DbConfig {
    /// Builds connection options, validating the URL if one is given. Errors never
    /// contain the URL (it may hold a password).
    pub fn connect_options(&self) -> Result<PgConnectOptions, StorageError> {
        let options = match &self.database_url {
            Some(url) => {
                let url = url.expose_secret();
                let invalid = || StorageError::Config("DATABASE_URL: not a valid postgres:// URL".into());
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid());
                }
                PgConnectOptions::from_str(url).map_err(|_| invalid())?
            }
            None => {
                let mut options = PgConnectOptions::new()
                    .host(&self.host)
                    .port(self.port)
                    .username(&self.user)
                    .database(&self.name)
                    .ssl_mode(self.sslmode.into());
                if let Some(password) = &self.password {
                    options = options.password(password.expose_secret());
                }
                options
            }
        };
        let timeout_ms = self.statement_timeout.as_millis().to_string();
        Ok(options.application_name("opspilot").options([("statement_timeout", timeout_ms.as_str())]))
    }

    /// Refuses a placeholder or example password outside development mode.
    pub fn check_secrets(&self, dev: bool) -> Result<(), String> {
        if let Some(password) = &self.password {
            service_kit::config::check_secret("DB_PASSWORD", password.expose_secret(), dev)?;
        }
        if let Some(url) = &self.database_url
            && let Some(password) = service_kit::config::url_password(url.expose_secret())
        {
            service_kit::config::check_secret("DATABASE_URL", &password, dev)?;
        }
        Ok(())
    }

    /// Validates the settings without connecting (so a bad value exits before binding).
    pub fn validate(&self) -> Result<(), String> {
        self.connect_options().map_err(|e| match e {
            StorageError::Config(message) => message,
            other => other.to_string(),
        })?;
        if self.max_connections == 0 {
            return Err("DB_MAX_CONNECTIONS: must be at least 1".into());
        }
        if self.database_url.is_none() && self.host.trim().is_empty() {
            return Err("DB_HOST: must not be empty".into());
        }
        Ok(())
    }

    /// `host:port/db` for logs, without credentials.
    pub fn display_target(&self) -> String {
        match &self.database_url {
            Some(_) => "DATABASE_URL".to_owned(),
            None => format!("{}:{}/{}", self.host, self.port, self.name),
        }
    }
}
