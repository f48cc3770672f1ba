use clap::Parser;
use test_support::TestDb;

#[tokio::test]
async fn migrations_apply_twice_concurrently_without_error() {
    test_support::init_tracing();
    let db = TestDb::create_empty().await;
    let (a, b) = (db.new_pool().await, db.new_pool().await);
    let (ra, rb) = tokio::join!(storage::migrate(&a), storage::migrate(&b));
    ra.unwrap();
    rb.unwrap();
    // And once more, with nothing left to do.
    storage::migrate(&db.pool).await.unwrap();
    storage::check_schema(&db.pool).await.unwrap();

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for table in [
        "agents",
        "incidents",
        "agents_inventory",
        "users",
        "enrollment_tokens",
        "audit_log",
        "presence_transitions",
        "ingested_events",
    ] {
        assert!(tables.iter().any(|t| t == table), "missing table {table}: {tables:?}");
    }
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_a_clear_message() {
    let db = TestDb::create_empty().await;
    let err = storage::check_schema(&db.pool).await.unwrap_err().to_string();
    assert!(err.contains("api-gateway migrate"), "{err}");
}

#[tokio::test]
async fn the_seed_columns_are_kept() {
    let db = TestDb::create().await;
    for (table, columns) in [
        ("agents", &["id", "hostname", "status", "last_seen_at", "meta", "created_at"][..]),
        (
            "incidents",
            &[
                "id",
                "agent_id",
                "type",
                "source",
                "raw_error",
                "context",
                "is_critical",
                "status",
                "ai_analysis",
                "suggested_action",
                "created_at",
            ][..],
        ),
        ("agents_inventory", &["id", "agent_id", "hash", "data", "created_at"][..]),
    ] {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1",
        )
        .bind(table)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        for column in columns {
            assert!(found.iter().any(|c| c == column), "{table}.{column} missing");
        }
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    db: storage::DbConfig,
}

#[tokio::test]
async fn connects_from_the_db_variables_and_from_a_url() {
    let db = TestDb::create().await;
    let options = db.options();
    let port = options.get_port().to_string();
    let args = Args::try_parse_from([
        "test",
        "--db-host",
        options.get_host(),
        "--db-port",
        &port,
        "--db-user",
        options.get_username(),
        "--db-password",
        "postgres",
        "--db-name",
        &db.name,
        "--db-sslmode",
        "disable",
    ])
    .unwrap();
    args.db.validate().unwrap();
    let pool = storage::connect(&args.db).await.unwrap();
    storage::check_schema(&pool).await.unwrap();

    let url = db.url();
    let args = Args::try_parse_from(["test", "--database-url", &url]).unwrap();
    let pool = storage::connect(&args.db).await.unwrap();
    storage::ping(&pool).await.unwrap();
}

#[test]
fn secrets_never_reach_debug_output() {
    let args = Args::try_parse_from([
        "test",
        "--db-password",
        "hunter2-secret",
        "--database-url",
        "postgres://u:pw-secret@h/db",
    ])
    .unwrap();
    let debug = format!("{:?}", args.db);
    assert!(!debug.contains("hunter2-secret") && !debug.contains("pw-secret"), "{debug}");
}

#[test]
fn a_bad_url_is_refused_without_echoing_it() {
    let args = Args::try_parse_from(["test", "--database-url", "mysql://u:pw-secret@h/db"]).unwrap();
    let err = args.db.validate().unwrap_err();
    assert!(err.starts_with("DATABASE_URL"), "{err}");
    assert!(!err.contains("pw-secret"), "{err}");
}
