//! The contract every service keeps (see `test_support::worker_lifecycle_tests`).

test_support::worker_lifecycle_tests! {
    service: presence_tracker,
    binary: "presence-tracker",
    identity: PresenceTracker,
    redis: true,
    checks: ["postgres", "nats", "redis"],
    bad: [
        ("REDIS_URL", "http://not-redis"),
        ("REDIS_URL", "redis://:REPLACE-ME-redis-password@redis:6379"),
        ("PRESENCE_MISSED_HEARTBEATS", "0"),
        ("PRESENCE_OFFLINE_TIMEOUT", "soon"),
        ("PRESENCE_OFFLINE_TIMEOUT", "500ms"),
        ("PRESENCE_RECONCILE_INTERVAL", "0s"),
        ("PRESENCE_FLUSH_INTERVAL", "1h"),
        ("PRESENCE_BATCH_SIZE", "0"),
        ("PRESENCE_KEYSPACE_EVENTS", "maybe"),
        ("PRESENCE_OFFLINE_INCIDENTS", "sometimes"),
        ("PRESENCE_WATCH_STALL_TIMEOUT", "10ms")
    ],
    documents: [
        "REDIS_URL",
        "REDIS_PREFIX",
        "AGENTS_BUCKET",
        "PRESENCE_MISSED_HEARTBEATS",
        "PRESENCE_OFFLINE_TIMEOUT",
        "PRESENCE_RECONCILE_INTERVAL",
        "PRESENCE_FLUSH_INTERVAL",
        "PRESENCE_BATCH_SIZE",
        "PRESENCE_BATCH_INTERVAL",
        "PRESENCE_KEYSPACE_EVENTS",
        "PRESENCE_OFFLINE_INCIDENTS",
        "PRESENCE_WATCH_STALL_TIMEOUT"
    ],
}
