//! The contract every service keeps (see `test_support::worker_lifecycle_tests`).

test_support::worker_lifecycle_tests! {
    service: event_ingestor,
    binary: "event-ingestor",
    identity: EventIngestor,
    redis: false,
    checks: ["postgres", "nats"],
    bad: [

    ],
    documents: [
        "EVENTS_STREAM",
        "INVENTORY_STREAM",
        "DLQ_STREAM"
    ],
}
