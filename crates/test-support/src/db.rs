use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

/// A database of this test's own, created empty and migrated, dropped when the
/// value is dropped.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
    options: PgConnectOptions,
    admin: PgConnectOptions,
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("OPSPILOT_TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable".to_owned()
    });
    PgConnectOptions::from_str(&url)
        .expect("OPSPILOT_TEST_DATABASE_URL is not a valid postgres URL")
        .log_statements(tracing::log::LevelFilter::Trace)
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn create() -> Self {
        let db = Self::create_empty().await;
        storage::migrate(&db.pool).await.expect("migrating the test database");
        db
    }

    /// Creates a fresh database without running migrations.
    pub async fn create_empty() -> Self {
        let admin = admin_options();
        let name = format!("opspilot_test_{}", crate::unique_token());
        let mut conn = sqlx::PgConnection::connect_with(&admin)
            .await
            .expect("connecting to postgres as admin (is it running? see scripts/dev-services.sh)");
        // The name is generated here (`opspilot_test_` + hex), never user input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("creating the test database");
        let _ = conn.close().await;
        let options = admin.clone().database(&name);
        let pool = storage::connect_with(options.clone(), 10, Duration::from_secs(10))
            .await
            .expect("connecting to the test database");
        Self { name, pool, options, admin }
    }

    /// Connection options for this database (to start services against it).
    pub fn options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// A `postgres://` URL for this database (to pass to a service as DATABASE_URL).
    pub fn url(&self) -> String {
        let base = std::env::var("OPSPILOT_TEST_DATABASE_URL").unwrap_or_else(|_| {
            "postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable".to_owned()
        });
        let (before_query, query) = base.split_once('?').map_or((base.as_str(), ""), |(a, b)| (a, b));
        let without_db = before_query.rsplit_once('/').map_or(before_query, |(a, _)| a);
        if query.is_empty() {
            format!("{without_db}/{}", self.name)
        } else {
            format!("{without_db}/{}?{query}", self.name)
        }
    }

    /// The same URL with another port (to go through a [`crate::TcpProxy`]).
    pub fn url_via_port(&self, port: u16) -> String {
        let url = self.url();
        let port_start = url.rfind(':').map(|i| i + 1).unwrap_or(0);
        let port_end = url[port_start..].find('/').map(|i| port_start + i).unwrap_or(url.len());
        format!("{}{port}{}", &url[..port_start], &url[port_end..])
    }

    /// host:port of the Postgres server.
    pub fn server_addr(&self) -> String {
        format!("{}:{}", self.options.get_host(), self.options.get_port())
    }

    /// A new pool on this database (a pool must not be shared across runtimes).
    pub async fn new_pool(&self) -> PgPool {
        storage::connect_with(self.options(), 10, Duration::from_secs(10)).await.expect("connecting")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        self.pool.close_event();
        // Dropping needs async work outside the (possibly finished) test runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect_with(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
