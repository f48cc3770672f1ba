//! The contract every service keeps (see `test_support::worker_lifecycle_tests`).

test_support::worker_lifecycle_tests! {
    service: event_ingestor,
    binary: "event-ingestor",
    identity: EventIngestor,
    redis: false,
    checks: ["postgres", "nats"],
    bad: [
        // Shorter than the stream keeps a copy (EVENTS_MAX_AGE, 7d by default).
        ("LEDGER_WINDOW", "3d"),
        ("LEDGER_WINDOW", "forever"),
        ("MAINTENANCE_BATCH", "0"),
        ("MAINTENANCE_INTERVAL", "soon"),
        ("RETAIN_AUDIT_LOG", "10m"),
        ("RETAIN_RESOLVED_INCIDENTS", "-1d"),
    ],
    documents: [
        "EVENTS_STREAM",
        "INVENTORY_STREAM",
        "DLQ_STREAM"
    ],
}
