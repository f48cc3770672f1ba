use std::time::Duration;

use clap::Parser;
use test_support::NatsServer;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    nats: natsbus::NatsConfig,
}

pub(crate) fn config(args: &[&str]) -> natsbus::NatsConfig {
    let mut argv = vec!["test"];
    argv.extend_from_slice(args);
    Args::try_parse_from(argv).unwrap().nats
}

#[tokio::test]
async fn connects_through_any_of_the_urls() {
    test_support::init_tracing();
    let server = NatsServer::start().await;
    // A dead server first: the client must move on to the live one.
    let urls = format!("nats://127.0.0.1:1,{}", server.url());
    let two = config(&["--nats-urls", &urls]);
    assert_eq!(two.server_urls().len(), 2);
    let client =
        tokio::time::timeout(Duration::from_secs(20), natsbus::connect(&two, "test")).await.unwrap().unwrap();
    natsbus::check_server_version(&client.server_info().version).unwrap();
}

#[tokio::test]
async fn nats_urls_falls_back_to_nats_url() {
    let single = config(&["--nats-url", "nats://10.0.0.1:4222"]);
    assert_eq!(single.server_urls(), vec!["nats://10.0.0.1:4222".to_owned()]);
    let both = config(&["--nats-urls", " nats://a:1 , nats://b:2 ,", "--nats-url", "nats://c:3"]);
    assert_eq!(both.server_urls(), vec!["nats://a:1".to_owned(), "nats://b:2".to_owned()]);
}

#[tokio::test]
async fn bad_urls_are_refused_before_connecting() {
    let bad = config(&["--nats-urls", "nats://ok:4222,::not a url::"]);
    let err = bad.validate().unwrap_err();
    assert!(err.starts_with("NATS_URLS:"), "{err}");
}

#[tokio::test]
async fn waits_for_a_server_that_starts_late_and_survives_a_restart() {
    test_support::init_tracing();
    let mut server = NatsServer::start().await;
    server.kill().await;
    let late = config(&["--nats-urls", &server.url()]);
    let connecting = tokio::spawn(async move { natsbus::connect(&late, "test").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!connecting.is_finished(), "connect must wait for the server");
    server.restart().await;
    let client = tokio::time::timeout(Duration::from_secs(20), connecting).await.unwrap().unwrap().unwrap();

    // The client reconnects by itself after the server restarts.
    server.restart().await;
    let mut sub = client.subscribe("ping").await.unwrap();
    test_support::eventually(Duration::from_secs(20), "a message after reconnecting", || {
        let client = client.clone();
        async move {
            client.publish("ping", "x".into()).await.ok()?;
            client.flush().await.ok()
        }
    })
    .await;
    let msg =
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut sub)).await.unwrap();
    assert!(msg.is_some());
}

/// A server that speaks only TLS and wants a client certificate from `pki`'s CA.
async fn tls_server(pki: &test_support::TestPki) -> NatsServer {
    let block = pki.nats_server_block();
    NatsServer::start_with_config(move |port, store| {
        format!("host: 127.0.0.1\nport: {port}\n{}\n{block}", test_support::jetstream_config(store))
    })
    .await
}

fn path(p: std::path::PathBuf) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn connects_over_mutual_tls_with_a_private_ca() {
    test_support::init_tracing();
    let pki = test_support::TestPki::generate();
    let server = tls_server(&pki).await;
    let tls_url = server.url().replacen("nats://", "tls://", 1);
    let (ca, cert, key) = (path(pki.ca()), path(pki.client_cert()), path(pki.client_key()));
    let good = config(&[
        "--nats-urls",
        &tls_url,
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
    good.validate().unwrap();
    let client = tokio::time::timeout(Duration::from_secs(20), natsbus::connect(&good, "test"))
        .await
        .unwrap()
        .unwrap();
    client.flush().await.unwrap();
    // A nats:// URL is upgraded too: the CA implies TLS.
    let upgraded = config(&[
        "--nats-urls",
        &server.url(),
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
    assert!(upgraded.tls_required());
    tokio::time::timeout(Duration::from_secs(20), natsbus::connect(&upgraded, "test"))
        .await
        .unwrap()
        .unwrap();

    // Without the client certificate, or trusting another CA, it never gets in (and
    // keeps saying why, see connect_with).
    let anonymous = config(&["--nats-urls", &tls_url, "--nats-tls-ca", &ca]);
    let refused = tokio::time::timeout(Duration::from_secs(1), natsbus::connect(&anonymous, "test")).await;
    assert!(refused.is_err(), "connected without a client certificate");
    let other = test_support::TestPki::generate();
    let other_ca = path(other.ca());
    let wrong_ca = config(&[
        "--nats-urls",
        &tls_url,
        "--nats-tls-ca",
        &other_ca,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
    let refused = tokio::time::timeout(Duration::from_secs(1), natsbus::connect(&wrong_ca, "test")).await;
    assert!(refused.is_err(), "connected to a server whose CA is not trusted");
}

#[tokio::test]
async fn tls_required_refuses_a_server_without_tls() {
    test_support::init_tracing();
    let server = NatsServer::start().await;
    let plain = config(&["--nats-urls", &server.url(), "--nats-tls-required"]);
    let refused = tokio::time::timeout(Duration::from_secs(1), natsbus::connect(&plain, "test")).await;
    assert!(refused.is_err(), "sent credentials to a server without TLS");
}

#[test]
fn tls_files_are_checked_before_connecting() {
    let pki = test_support::TestPki::generate();
    let (cert, key) = (path(pki.client_cert()), path(pki.client_key()));
    let err = config(&["--nats-tls-ca", &key]).validate().unwrap_err();
    assert!(err.starts_with("NATS_TLS_CA:"), "{err}");
    let err = config(&["--nats-tls-cert", &cert]).validate().unwrap_err();
    assert!(err.contains("NATS_TLS_CERT and NATS_TLS_KEY"), "{err}");
    let err = config(&["--nats-tls-cert", &cert, "--nats-tls-key", &cert]).validate().unwrap_err();
    assert!(err.starts_with("NATS_TLS_KEY:"), "{err}");
    // The token is a secret: a file or a variable, never a flag.
    let err = Args::try_parse_from(["test", "--nats-token", "s3cret"]).err().unwrap().to_string();
    assert!(err.contains("unexpected argument '--nats-token'"), "{err}");
}
