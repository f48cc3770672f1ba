//! Redis as a managed service runs it: with a password, and over TLS.

use secrecy::SecretString;
use test_support::{RedisServer, TestPki};

fn config(url: &str) -> storage::redis::RedisConfig {
    test_support::redis_config(url, "opspilot:")
}

/// `url` with REDIS_PASSWORD `password` and the client side of `pki`.
fn tls_config(url: &str, password: &str, pki: &TestPki) -> storage::redis::RedisConfig {
    let mut config = config(url);
    config.password = Some(SecretString::from(password.to_owned()));
    config.tls_ca = Some(pki.ca());
    config.tls_cert = Some(pki.client_cert());
    config.tls_key = Some(pki.client_key());
    config
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
    // ...and with checks on, an unknown CA is refused...
    let checked = config(&format!("rediss://:tls-redis-password@127.0.0.1:{port}"));
    assert!(storage::redis::connect(&checked).await.is_err());
    // ...unless REDIS_TLS_CA names it.
    let mut private_ca = checked.clone();
    private_ca.tls_ca = Some(server.own_pki().unwrap().ca());
    private_ca.validate().unwrap();
    storage::redis::ping(&storage::redis::connect(&private_ca).await.unwrap()).await.unwrap();
    // Turning the checks off is for development only.
    assert!(tls.check_secrets(false).unwrap_err().contains("#insecure"));
    tls.check_secrets(true).unwrap();
}

#[tokio::test]
async fn a_managed_redis_with_tls_a_client_certificate_and_a_password() {
    test_support::init_tracing();
    let pki = TestPki::generate();
    let server = RedisServer::with_tls_from("managed-redis-password", &pki).await;
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let good = tls_config(&url, "managed-redis-password", &pki);
    good.validate().unwrap();
    good.check_secrets(false).unwrap();
    let pool = storage::redis::connect(&good).await.unwrap();
    storage::redis::ping(&pool).await.unwrap();
    // The pub/sub connection of the tracker's keyspace events goes the same way.
    let mut pubsub = good.client().unwrap().get_async_pubsub().await.unwrap();
    pubsub.subscribe("__keyevent@0__:expired").await.unwrap();

    // Without the client certificate, with another CA, or with a wrong password: refused.
    let mut anonymous = good.clone();
    (anonymous.tls_cert, anonymous.tls_key) = (None, None);
    assert!(storage::redis::connect(&anonymous).await.is_err());
    let other = TestPki::generate();
    let mut wrong_ca = good.clone();
    wrong_ca.tls_ca = Some(other.ca());
    let err = storage::redis::connect(&wrong_ca).await.err().unwrap().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let wrong_password = tls_config(&url, "not-the-password", &pki);
    assert!(storage::redis::connect(&wrong_password).await.is_err());
}

#[test]
fn tls_settings_and_passwords_are_checked_before_connecting() {
    let pki = TestPki::generate();
    // TLS files with a plain-text URL would be silently ignored: refused instead.
    let plain = tls_config("redis://127.0.0.1:6379", "pw-for-the-test", &pki);
    assert!(plain.validate().unwrap_err().contains("rediss://"));
    // A key given as the CA, or half a client certificate.
    let mut bad_ca = tls_config("rediss://127.0.0.1:6379", "pw-for-the-test", &pki);
    bad_ca.tls_ca = Some(pki.client_key());
    assert!(bad_ca.validate().unwrap_err().starts_with("REDIS_TLS_CA:"));
    let mut half = tls_config("rediss://127.0.0.1:6379", "pw-for-the-test", &pki);
    half.tls_key = None;
    assert!(half.validate().unwrap_err().contains("REDIS_TLS_CERT and REDIS_TLS_KEY"));
    // A password in two places, and a placeholder password.
    let twice = tls_config("rediss://:pw-in-the-url@127.0.0.1:6379", "pw-for-the-test", &pki);
    let err = twice.validate().unwrap_err();
    assert!(err.contains("REDIS_URL and REDIS_PASSWORD") && !err.contains("pw-"), "{err}");
    let placeholder = tls_config("rediss://127.0.0.1:6379", "REPLACE-ME-redis", &pki);
    assert!(placeholder.check_secrets(false).unwrap_err().starts_with("REDIS_PASSWORD:"));
}

/// What Redis says about one client connection (`CLIENT LIST ID`), as field=value pairs.
async fn client_fields(observer: &mut ::redis::aio::MultiplexedConnection, id: i64) -> String {
    ::redis::cmd("CLIENT").arg("LIST").arg("ID").arg(id).query_async(observer).await.unwrap()
}

#[tokio::test]
async fn a_busy_connection_is_reused_without_a_ping_and_a_broken_one_is_replaced() {
    test_support::init_tracing();
    let server = RedisServer::with_password("pool-redis-password").await;
    let url = format!("redis://:pool-redis-password@127.0.0.1:{}", server.port());
    let mut args = config(&url);
    args.pool_size = 1;
    let pool = storage::redis::connect(&args).await.unwrap();
    let mut observer =
        ::redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();

    let mut conn = pool.get().await.unwrap();
    let id: i64 = ::redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await.unwrap();
    drop(conn);
    // Taken again at once: the same connection, and Redis saw no PING for it (the last
    // command it ran is still ours).
    let mut conn = pool.get().await.unwrap();
    let fields = client_fields(&mut observer, id).await;
    assert!(fields.contains("cmd=client|id"), "{fields}");
    let again: i64 = ::redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await.unwrap();
    assert_eq!(again, id);
    drop(conn);

    // Redis drops the connection: the next command on it fails once, and the pool hands
    // out a new connection after that instead of the dead one.
    let () = ::redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut observer).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let failed: Result<String, _> = ::redis::cmd("PING").query_async(&mut conn).await;
    assert!(failed.is_err(), "{failed:?}");
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let fresh: i64 = ::redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await.unwrap();
    assert_ne!(fresh, id);
    // An error reply is not a broken connection: it stays in use.
    let () = ::redis::cmd("SET").arg("text").arg("abc").query_async(&mut conn).await.unwrap();
    let wrong: Result<i64, _> = ::redis::cmd("INCR").arg("text").query_async(&mut conn).await;
    assert!(wrong.is_err());
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let same: i64 = ::redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await.unwrap();
    assert_eq!(same, fresh);
}
