//! Redis as a managed service runs it: with a password, and over TLS.

use clap::Parser as _;
use test_support::RedisServer;

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    redis: storage::redis::RedisConfig,
}

fn config(url: &str) -> storage::redis::RedisConfig {
    Args::try_parse_from(["test", "--redis-url", url]).unwrap().redis
}

#[tokio::test]
async fn a_password_protected_redis_needs_the_password() {
    test_support::init_tracing();
    let server = RedisServer::with_password("s3cret-redis-password").await;
    let port = server.port();
    let good = config(&format!("redis://:s3cret-redis-password@127.0.0.1:{port}"));
    good.validate().unwrap();
    good.check_secrets(false).unwrap();
    let pool = storage::redis::connect(&good).await.unwrap();
    storage::redis::ping(&pool).await.unwrap();
    let wrong = config(&format!("redis://:wrong@127.0.0.1:{port}"));
    assert!(storage::redis::connect(&wrong).await.is_err());
    let none = config(&format!("redis://127.0.0.1:{port}"));
    assert!(storage::redis::connect(&none).await.is_err());
    // A shipped placeholder is refused before anything connects.
    let placeholder = config(&format!("redis://:REPLACE-ME-redis@127.0.0.1:{port}"));
    assert!(placeholder.check_secrets(false).unwrap_err().starts_with("REDIS_URL:"));
}

#[tokio::test]
async fn rediss_urls_speak_tls() {
    test_support::init_tracing();
    let server = RedisServer::with_tls("tls-redis-password").await;
    let port = server.port();
    // The test server's CA is its own, so certificate checks are off here; a managed
    // Redis presents a certificate the system trusts and needs no fragment.
    let url = format!("rediss://:tls-redis-password@127.0.0.1:{port}/#insecure");
    let tls = config(&url);
    tls.validate().unwrap();
    let pool = storage::redis::connect(&tls).await.unwrap();
    storage::redis::ping(&pool).await.unwrap();
    // Plain text to a TLS port does not get through...
    assert!(
        storage::redis::connect(&config(&format!("redis://:tls-redis-password@127.0.0.1:{port}")))
            .await
            .is_err()
    );
    // ...and with checks on, an unknown CA is refused.
    let checked = config(&format!("rediss://:tls-redis-password@127.0.0.1:{port}"));
    assert!(storage::redis::connect(&checked).await.is_err());
    // Turning the checks off is for development only.
    assert!(tls.check_secrets(false).unwrap_err().contains("#insecure"));
    tls.check_secrets(true).unwrap();
}
