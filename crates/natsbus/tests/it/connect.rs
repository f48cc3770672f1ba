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
