use std::time::Duration;

use test_support::TestDb;

/// The pool skips the ping on connections in steady use, so it must still catch one that
/// died while idle (a server restart, a proxy timeout) before handing it out.
#[tokio::test]
async fn a_connection_that_died_while_idle_is_replaced_not_handed_out() {
    let db = TestDb::create_empty().await;
    let pool = storage::connect_with(db.options(), 1, Duration::from_secs(10)).await.unwrap();
    let first: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();

    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&db.pool).await.unwrap();
    assert!(killed);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let second: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the dead idle connection must be replaced, not fail the query");
    assert_ne!(first, second);
}
