//! The NATS keys on record: one owner per key, expiry that only grows, revocations
//! that outlive their agent.

use chrono::{Duration, Utc};
use storage::StorageError;
use test_support::TestDb;
use wire_models::AgentId;

#[tokio::test]
async fn a_key_has_one_owner_and_its_expiry_only_grows() {
    let db = TestDb::create().await;
    let (a, b) = (AgentId::random(), AgentId::random());
    storage::agents::register(&db.pool, &a, "a").await.unwrap();
    storage::agents::register(&db.pool, &b, "b").await.unwrap();
    let now = Utc::now();
    storage::credentials::record(&db.pool, &a, "UKEY-A", now + Duration::days(30)).await.unwrap();
    // Issued again for a shorter time: the recorded expiry stays the later one.
    storage::credentials::record(&db.pool, &a, "UKEY-A", now + Duration::days(1)).await.unwrap();
    let expiry = |key: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<Utc>>(
                "SELECT expires_at FROM agent_credentials WHERE user_public_key = $1",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(expiry("UKEY-A").await > now + Duration::days(29));
    storage::credentials::record(&db.pool, &a, "UKEY-A", now + Duration::days(60)).await.unwrap();
    assert!(expiry("UKEY-A").await > now + Duration::days(59));
    // Another agent cannot take it.
    let taken = storage::credentials::record(&db.pool, &b, "UKEY-A", now + Duration::days(30)).await;
    assert!(matches!(taken, Err(StorageError::Conflict(_))), "{taken:?}");
    // A revoked key is nobody's to re-issue, not even its agent's.
    storage::credentials::revoke_agent(&db.pool, &a).await.unwrap();
    let again = storage::credentials::record(&db.pool, &a, "UKEY-A", now + Duration::days(30)).await;
    assert!(matches!(again, Err(StorageError::Conflict(_))), "{again:?}");
    assert!(storage::credentials::revocations(&db.pool).await.unwrap().contains_key("UKEY-A"));
}

#[tokio::test]
async fn revocations_outlive_a_purged_agent() {
    let db = TestDb::create().await;
    let a = AgentId::random();
    storage::agents::register(&db.pool, &a, "a").await.unwrap();
    storage::credentials::record(&db.pool, &a, "UKEY-PURGED", Utc::now() + Duration::days(30)).await.unwrap();
    storage::agents::revoke(&db.pool, &a).await.unwrap();
    storage::credentials::revoke_agent(&db.pool, &a).await.unwrap();
    assert!(storage::agents::delete_revoked(&db.pool, &a, true).await.unwrap());
    assert!(storage::agents::get(&db.pool, &a).await.unwrap().is_none());
    // The key's row stays, without an agent, and stays on the list.
    assert!(storage::credentials::revocations(&db.pool).await.unwrap().contains_key("UKEY-PURGED"));
    // Service keys revoked by a rotation join the same list.
    storage::credentials::revoke_keys(
        &db.pool,
        "service",
        &["USERVICE".to_owned()],
        Utc::now() + Duration::days(90),
    )
    .await
    .unwrap();
    assert!(storage::credentials::revocations(&db.pool).await.unwrap().contains_key("USERVICE"));
}

/// The dead-letter budget's count is shared: replicas charging at once each get a
/// distinct total, and the totals add up.
#[tokio::test]
async fn the_dead_letter_count_is_shared_by_every_replica() {
    let db = TestDb::create().await;
    let mut charges = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let pool = db.pool.clone();
        charges
            .spawn(async move { storage::dead_letters::charge(&pool, "a1b2c3d4e5f6", 100).await.unwrap() });
    }
    let mut seen: Vec<u64> = Vec::new();
    while let Some(usage) = charges.join_next().await {
        let usage = usage.unwrap();
        assert_eq!(usage.bytes, usage.letters * 100);
        seen.push(usage.letters);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
    // Another agent starts from nothing.
    let other = storage::dead_letters::charge(&db.pool, "bbbbbbbbbbbb", 7).await.unwrap();
    assert_eq!((other.letters, other.bytes), (1, 7));
}
