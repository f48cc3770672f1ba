//! The contract every service keeps (see `test_support::worker_lifecycle_tests`).

test_support::worker_lifecycle_tests! {
    service: ai_analyzer,
    binary: "ai-analyzer",
    identity: AiAnalyzer,
    redis: true,
    checks: ["postgres", "nats", "redis"],
    bad: [
        ("REDIS_URL", "http://not-redis"),
        ("REDIS_URL", "redis://:REPLACE-ME-redis-password@redis:6379"),
        ("OPENROUTER_BASE_URL", "ftp://openrouter.ai/api/v1"),
        ("OPENROUTER_MODEL", "two words"),
        ("OPENROUTER_KEY", "REPLACE-ME-openrouter-key"),
        ("AI_TIMEOUT", "soon"),
        ("AI_DEADLINE", "1s"),
        ("AI_MAX_ATTEMPTS", "0"),
        ("AI_BACKOFF_MAX", "1ms"),
        ("AI_CONCURRENCY", "0"),
        ("ANALYSIS_CACHE_TTL", "forever"),
        ("AUTO_ANALYZE", "maybe"),
        ("AUTO_ANALYZE_CONSUMER", "has.dots"),
        ("RECENT_INCIDENTS", "500")
    ],
    documents: [
        "REDIS_URL",
        "REDIS_PREFIX",
        "OPENROUTER_KEY",
        "OPENROUTER_BASE_URL",
        "OPENROUTER_MODEL",
        "AI_TIMEOUT",
        "AI_DEADLINE",
        "AI_MAX_ATTEMPTS",
        "AI_BACKOFF",
        "AI_BACKOFF_MAX",
        "AI_CONCURRENCY",
        "AI_MAX_TOKENS",
        "ANALYSIS_CACHE_TTL",
        "AUTO_ANALYZE",
        "AUTO_ANALYZE_CONSUMER",
        "RECENT_INCIDENTS"
    ],
}
