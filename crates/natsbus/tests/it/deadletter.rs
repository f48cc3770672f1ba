use async_nats::jetstream;
use futures::StreamExt;
use test_support::{NatsServer, isolated_topology};
use wire_models::{DlqOrigin, HEADER_DLQ_DETAIL, HEADER_DLQ_REASON, HEADER_DLQ_SEQUENCE, HEADER_DLQ_SUBJECT};

#[tokio::test]
async fn dead_letters_keep_subject_payload_and_reason_and_are_idempotent() {
    let server = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let topology = isolated_topology();
    natsbus::ensure_topology(&js, &topology).await.unwrap();

    let subject = format!("{}.nothex.events.oom", topology.subjects.root());
    for _ in 0..2 {
        natsbus::dead_letter(
            &js,
            &topology.subjects,
            natsbus::DeadLetter {
                origin: DlqOrigin::Events,
                subject: &subject,
                payload: "{broken".into(),
                stream_sequence: Some(42),
                reason: "invalid_agent_id",
                detail: "agent id must be\r\nexactly 12 characters",
            },
        )
        .await
        .unwrap();
    }

    let mut stream = js.get_stream(&topology.dlq_stream).await.unwrap();
    // The same stream sequence dead-lettered twice (a redelivery) is stored once.
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let consumer = stream.create_consumer(jetstream::consumer::pull::Config::default()).await.unwrap();
    let mut batch = consumer.fetch().max_messages(10).messages().await.unwrap();
    let msg = batch.next().await.unwrap().unwrap();
    assert_eq!(msg.subject.as_str(), topology.subjects.dead_letter(DlqOrigin::Events));
    assert_eq!(&msg.payload[..], b"{broken");
    let headers = msg.headers.as_ref().unwrap();
    assert_eq!(headers.get(HEADER_DLQ_REASON).unwrap().as_str(), "invalid_agent_id");
    assert_eq!(headers.get(HEADER_DLQ_SUBJECT).unwrap().as_str(), subject);
    assert_eq!(headers.get(HEADER_DLQ_SEQUENCE).unwrap().as_str(), "42");
    assert_eq!(headers.get(HEADER_DLQ_DETAIL).unwrap().as_str(), "agent id must be  exactly 12 characters");
}

#[tokio::test]
async fn an_agents_budget_cuts_then_omits_then_withholds_its_letters() {
    use wire_models::{HEADER_DLQ_ORIGINAL_SIZE, HEADER_DLQ_PAYLOAD};
    let server = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let topology = isolated_topology();
    natsbus::ensure_topology(&js, &topology).await.unwrap();
    // 1 KiB copied at most per letter, 1.5 KiB per agent, three letters per agent; the
    // shared count is a pair of counters here (Postgres in the services).
    let budget = natsbus::DeadLetterBudget::new(1536, 3, 1024);
    let (letters, bytes) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
    let charged = std::sync::atomic::AtomicU64::new(0);
    let subject = format!("{}.a1b2c3d4e5f6.events.oom", topology.subjects.root());
    let mut parked = Vec::new();
    for sequence in 1..=5u64 {
        let letter = natsbus::DeadLetter {
            origin: DlqOrigin::Events,
            subject: &subject,
            payload: vec![b'x'; 4096].into(),
            stream_sequence: Some(sequence),
            reason: "too_large",
            detail: "4096 bytes",
        };
        let charge = |size: u64| {
            use std::sync::atomic::Ordering::SeqCst;
            charged.fetch_add(1, SeqCst);
            let usage = natsbus::Usage {
                letters: letters.fetch_add(1, SeqCst) + 1,
                bytes: bytes.fetch_add(size, SeqCst) + size,
            };
            async move { Ok::<_, std::convert::Infallible>(usage) }
        };
        parked.push(
            natsbus::dead_letter_within(&js, &topology.subjects, &budget, "a1b2c3d4e5f6", letter, charge)
                .await
                .unwrap(),
        );
    }
    assert_eq!(parked, vec![true, true, true, false, false]);
    // Once over, the agent is remembered for the hour: no more round trips to the count.
    assert_eq!(charged.load(std::sync::atomic::Ordering::SeqCst), 4);
    let stream = js.get_stream(&topology.dlq_stream).await.unwrap();
    let consumer = stream.create_consumer(jetstream::consumer::pull::Config::default()).await.unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(std::time::Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.unwrap();
        let headers = msg.headers.clone().unwrap();
        let marker = headers.get(HEADER_DLQ_PAYLOAD).map(|v| v.as_str().to_owned());
        let size = headers.get(HEADER_DLQ_ORIGINAL_SIZE).map(|v| v.as_str().to_owned());
        seen.push((msg.payload.len(), marker, size));
    }
    let cut = (1024, Some("truncated".to_owned()), Some("4096".to_owned()));
    let omitted = (0, Some("omitted".to_owned()), Some("4096".to_owned()));
    assert_eq!(seen, vec![cut, omitted.clone(), omitted]);
}
