use std::time::Duration;

use futures::StreamExt;
use natsbus::feed::{ActionAnnouncer, FeedPublisher};
use test_support::{NatsServer, isolated_topology};
use wire_models::{ActionFinished, AgentId, PROTOCOL_VERSION};

fn finished(n: u64) -> ActionFinished {
    ActionFinished {
        v: PROTOCOL_VERSION,
        request_id: uuid::Uuid::from_u64_pair(0, n),
        agent_id: AgentId::parse("a1b2c3d4e5f6").unwrap(),
        command: "ping".into(),
        outcome: "ok".into(),
        incident_id: None,
        duration_ms: 1,
        finished_at: chrono::Utc::now(),
    }
}

async fn next_id(sub: &mut async_nats::Subscriber, within: Duration) -> Option<uuid::Uuid> {
    let msg = tokio::time::timeout(within, sub.next()).await.ok()??;
    Some(wire_models::decode::<ActionFinished>(&msg.payload).unwrap().request_id)
}

#[tokio::test]
async fn announcements_wait_for_their_batch_and_all_go_out_in_order() {
    let server = NatsServer::start().await;
    let subjects = isolated_topology().subjects;
    let reader = async_nats::connect(server.url()).await.unwrap();
    let mut sub = reader.subscribe(subjects.action_finished()).await.unwrap();
    reader.flush().await.unwrap();
    let feed = FeedPublisher::new(async_nats::connect(server.url()).await.unwrap(), subjects);

    // A long linger: nothing goes out until the batch ends or is asked for.
    let patient = ActionAnnouncer::start(feed.clone(), Duration::from_secs(60));
    for n in 1..=3 {
        patient.announce(finished(n));
    }
    assert_eq!(
        next_id(&mut sub, Duration::from_millis(300)).await,
        None,
        "published before the linger ended"
    );
    tokio::time::timeout(Duration::from_secs(5), patient.settled())
        .await
        .expect("settled waits for the linger");
    for n in 1..=3 {
        assert_eq!(next_id(&mut sub, Duration::from_secs(5)).await, Some(uuid::Uuid::from_u64_pair(0, n)));
    }

    // What is still held when the last handle goes is published, not lost.
    patient.announce(finished(4));
    drop(patient);
    assert_eq!(next_id(&mut sub, Duration::from_secs(5)).await, Some(uuid::Uuid::from_u64_pair(0, 4)));

    // A short linger ends on its own.
    let prompt = ActionAnnouncer::start(feed, Duration::from_millis(20));
    prompt.announce(finished(5));
    prompt.announce(finished(6));
    assert_eq!(next_id(&mut sub, Duration::from_secs(5)).await, Some(uuid::Uuid::from_u64_pair(0, 5)));
    assert_eq!(next_id(&mut sub, Duration::from_secs(5)).await, Some(uuid::Uuid::from_u64_pair(0, 6)));
}
