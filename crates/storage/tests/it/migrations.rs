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

impl service_kit::config::LoadSecrets for Args {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.db.load_secrets(env)
    }
}

/// The settings from `flags`, with exactly `secrets` as the secret variables.
fn parse(flags: &[&str], secrets: &[(&str, &str)]) -> Result<Args, String> {
    let args = std::iter::once("test").chain(flags.iter().copied());
    service_kit::config::try_parse_with_secrets(args, service_kit::config::SecretEnv::fixed(secrets))
}

#[tokio::test]
async fn connects_from_the_db_variables_and_from_a_url() {
    let db = TestDb::create().await;
    let options = db.options();
    let port = options.get_port().to_string();
    let args = parse(
        &[
            "--db-host",
            options.get_host(),
            "--db-port",
            &port,
            "--db-user",
            options.get_username(),
            "--db-name",
            &db.name,
            "--db-sslmode",
            "disable",
        ],
        &[("DB_PASSWORD", "postgres")],
    )
    .unwrap();
    args.db.validate().unwrap();
    let pool = storage::connect(&args.db).await.unwrap();
    storage::check_schema(&pool).await.unwrap();

    let url = db.url();
    let args = parse(&[], &[("DATABASE_URL", &url)]).unwrap();
    let pool = storage::connect(&args.db).await.unwrap();
    storage::ping(&pool).await.unwrap();
}

#[test]
fn secrets_never_reach_debug_output() {
    let args =
        parse(&[], &[("DB_PASSWORD", "hunter2-secret"), ("DATABASE_URL", "postgres://u:pw-secret@h/db")])
            .unwrap();
    let debug = format!("{:?}", args.db);
    assert!(!debug.contains("hunter2-secret") && !debug.contains("pw-secret"), "{debug}");
}

#[test]
fn a_bad_url_is_refused_without_echoing_it() {
    let args = parse(&[], &[("DATABASE_URL", "mysql://u:pw-secret@h/db")]).unwrap();
    let err = args.db.validate().unwrap_err();
    assert!(err.starts_with("DATABASE_URL"), "{err}");
    assert!(!err.contains("pw-secret"), "{err}");
}

#[test]
fn passwords_are_no_flags_but_variables_or_files() {
    for flag in ["--db-password", "--database-url"] {
        let err = parse(&[flag, "hunter2-secret"], &[]).err().unwrap();
        assert!(err.contains(&format!("unexpected argument '{flag}'")), "{err}");
        assert!(!err.contains("hunter2-secret"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db-password");
    std::fs::write(&file, "from-a-mounted-secret\n").unwrap();
    let args = parse(&["--db-password-file", file.to_str().unwrap()], &[]).unwrap();
    use secrecy::ExposeSecret as _;
    assert_eq!(args.db.password.unwrap().expose_secret(), "from-a-mounted-secret");
    let both = [("DB_PASSWORD", "x"), ("DB_PASSWORD_FILE", file.to_str().unwrap())];
    let err = parse(&["--db-password-file", file.to_str().unwrap()], &both).err().unwrap();
    assert!(err.contains("DB_PASSWORD and DB_PASSWORD_FILE"), "{err}");
}

#[test]
fn verify_full_takes_a_private_ca_and_a_client_certificate() {
    let pki = test_support::TestPki::generate();
    let (ca, cert, key) = (pki.ca(), pki.client_cert(), pki.client_key());
    let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
    let args = parse(
        &["--db-sslmode", "verify-full", "--db-sslrootcert", ca, "--db-sslcert", cert, "--db-sslkey", key],
        &[],
    )
    .unwrap();
    args.db.validate().unwrap();
    let options = args.db.connect_options().unwrap();
    assert_eq!(format!("{:?}", options.get_ssl_mode()), "VerifyFull");
    // The CA applies to a DATABASE_URL too, and a wrong file is refused at start.
    let args =
        parse(&["--db-sslrootcert", key], &[("DATABASE_URL", "postgres://u@db.example.net/x")]).unwrap();
    let err = args.db.validate().unwrap_err();
    assert!(err.starts_with("DB_SSLROOTCERT:"), "{err}");
    let err = parse(&["--db-sslcert", cert], &[]).unwrap().db.validate().unwrap_err();
    assert!(err.contains("DB_SSLCERT and DB_SSLKEY"), "{err}");
}
