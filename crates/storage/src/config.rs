use std::fmt;
use std::path::PathBuf;
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

/// Postgres settings, as the original backend named them (`DB_*`), or one URL. Every
/// flag is global, so the gateway's subcommands (`migrate`, `create-user`) take them too.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Postgres")]
pub struct DbConfig {
    /// Full connection URL (`postgres://user:pass@host:port/db?sslmode=...`), replacing
    /// the DB_* settings: DATABASE_URL in the environment, or this file. Never a flag:
    /// it may hold a password.
    #[arg(
        id = "database-url-file",
        long = "database-url-file",
        env = "DATABASE_URL_FILE",
        value_name = "DATABASE_URL_FILE",
        global = true
    )]
    pub database_url_file: Option<PathBuf>,
    /// DATABASE_URL, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub database_url: Option<SecretString>,
    /// Database host.
    #[arg(
        id = "db-host",
        long = "db-host",
        env = "DB_HOST",
        value_name = "DB_HOST",
        default_value = "127.0.0.1",
        global = true
    )]
    pub host: String,
    /// Database port.
    #[arg(
        id = "db-port",
        long = "db-port",
        env = "DB_PORT",
        value_name = "DB_PORT",
        default_value_t = 5432,
        global = true
    )]
    pub port: u16,
    /// Database user.
    #[arg(
        id = "db-user",
        long = "db-user",
        env = "DB_USER",
        value_name = "DB_USER",
        default_value = "postgres",
        global = true
    )]
    pub user: String,
    /// Database password: DB_PASSWORD in the environment, or this file (never logged,
    /// never a flag).
    #[arg(
        id = "db-password-file",
        long = "db-password-file",
        env = "DB_PASSWORD_FILE",
        value_name = "DB_PASSWORD_FILE",
        global = true
    )]
    pub password_file: Option<PathBuf>,
    /// DB_PASSWORD, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub password: Option<SecretString>,
    /// Database name.
    #[arg(
        id = "db-name",
        long = "db-name",
        env = "DB_NAME",
        value_name = "DB_NAME",
        default_value = "opspilot",
        global = true
    )]
    pub name: String,
    /// TLS mode, as libpq's `sslmode`. Use `disable` for a database on loopback,
    /// `verify-full` for one across a network (with DB_SSLROOTCERT for a private CA).
    #[arg(
        id = "db-sslmode",
        long = "db-sslmode",
        env = "DB_SSLMODE",
        value_name = "DB_SSLMODE",
        value_enum,
        default_value = "prefer",
        global = true
    )]
    pub sslmode: SslMode,
    /// PEM file of the CA(s) that signed the database's certificate (libpq's
    /// `sslrootcert`), for `verify-ca` and `verify-full`; without it the public web
    /// roots are trusted. Also applies to DATABASE_URL.
    #[arg(
        id = "db-sslrootcert",
        long = "db-sslrootcert",
        env = "DB_SSLROOTCERT",
        value_name = "DB_SSLROOTCERT",
        global = true
    )]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) for a database that authenticates clients by
    /// certificate (libpq's `sslcert`), with DB_SSLKEY.
    #[arg(
        id = "db-sslcert",
        long = "db-sslcert",
        env = "DB_SSLCERT",
        value_name = "DB_SSLCERT",
        global = true
    )]
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM; libpq's `sslkey`).
    #[arg(id = "db-sslkey", long = "db-sslkey", env = "DB_SSLKEY", value_name = "DB_SSLKEY", global = true)]
    pub sslkey: Option<PathBuf>,
    /// Largest number of pooled connections.
    #[arg(
        id = "db-max-connections",
        long = "db-max-connections",
        env = "DB_MAX_CONNECTIONS",
        value_name = "DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub max_connections: u32,
    /// How long to wait for a pooled connection before failing.
    #[arg(id = "db-acquire-timeout", long = "db-acquire-timeout", env = "DB_ACQUIRE_TIMEOUT", value_name = "DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = service_kit::config::parse_duration, global = true)]
    pub acquire_timeout: Duration,
    /// Longest any single statement may run (Postgres `statement_timeout`).
    #[arg(id = "db-statement-timeout", long = "db-statement-timeout", env = "DB_STATEMENT_TIMEOUT", value_name = "DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = service_kit::config::parse_duration, global = true)]
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
            .field("sslrootcert", &self.sslrootcert)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl service_kit::config::LoadSecrets for DbConfig {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.database_url = env.secret("DATABASE_URL", self.database_url_file.as_deref())?;
        self.password = env.secret("DB_PASSWORD", self.password_file.as_deref())?;
        Ok(())
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
        let options = match &self.sslrootcert {
            Some(ca) => options.ssl_root_cert(ca),
            None => options,
        };
        let options = match (&self.sslcert, &self.sslkey) {
            (Some(cert), Some(key)) => options.ssl_client_cert(cert).ssl_client_key(key),
            _ => options,
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
        use service_kit::config::{Pem, read_pem};
        if let Some(ca) = &self.sslrootcert {
            read_pem("DB_SSLROOTCERT", ca, Pem::Certificates)?;
        }
        match (&self.sslcert, &self.sslkey) {
            (Some(cert), Some(key)) => {
                read_pem("DB_SSLCERT", cert, Pem::Certificates)?;
                read_pem("DB_SSLKEY", key, Pem::PrivateKey)?;
            }
            (None, None) => {}
            _ => return Err("DB_SSLCERT and DB_SSLKEY: set both or neither".into()),
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
