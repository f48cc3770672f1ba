//! `api-gateway nats-init`: what a production setup writes (and does not), renewal
//! that leaves good credentials alone, and rotation that ends the old ones.

use std::path::Path;
use std::time::Duration;

use natsbus::auth::Identity;
use test_support::Stack;
use test_support::process::run_to_exit;

const BIN: &str = env!("CARGO_BIN_EXE_api-gateway");

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        walk(dir).into_iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_production_setup_has_no_development_identities_and_the_gateway_no_root_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let export = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let args =
        ["nats-init", "--dir", keys.to_str().unwrap(), "--export-dir", export.path().to_str().unwrap()];
    let (code, stderr) = run_to_exit(Path::new(BIN), &[], &args).await;
    assert_eq!(code, Some(0), "{stderr:?}");
    let written = files(&keys);
    assert!(written.contains(&"creds/event-ingestor.creds".to_owned()), "{written:?}");
    assert!(!written.iter().any(|f| f.contains("superuser") || f.contains("agent-sim")), "{written:?}");
    // Each identity's export holds its own files only; the gateway's has no root seed.
    assert_eq!(
        files(export.path()),
        vec![
            "ai-analyzer/ai-analyzer.creds",
            "api-gateway/api-gateway.creds",
            "api-gateway/gateway-keys.json",
            "event-ingestor/event-ingestor.creds",
            "nats/account.pub",
            "nats/nats-auth.conf",
            "presence-tracker/presence-tracker.creds",
        ]
    );
    let gateway_keys = std::fs::read_to_string(export.path().join("api-gateway/gateway-keys.json")).unwrap();
    let setup: natsbus::auth::AuthSetup =
        serde_json::from_str(&std::fs::read_to_string(keys.join("keys.json")).unwrap()).unwrap();
    for root in
        [&setup.operator_seed, &setup.account_seed, &setup.account_signing_seed, &setup.system_account_seed]
    {
        assert!(!gateway_keys.contains(root.as_str()), "the gateway's file carries a root seed");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        std::fs::metadata(export.path().join("api-gateway/gateway-keys.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Service credentials expire.
    let creds = std::fs::read_to_string(keys.join("creds/event-ingestor.creds")).unwrap();
    let info = natsbus::auth::CredsInfo::parse(&creds).unwrap();
    let days = (info.expires_at.unwrap() - chrono::Utc::now().timestamp()) / 86400;
    assert!((89..=90).contains(&days), "{days} days");

    // Running it again keeps good credentials as they are.
    let (code, stderr) = run_to_exit(Path::new(BIN), &[], &args).await;
    assert_eq!(code, Some(0), "{stderr:?}");
    assert_eq!(std::fs::read_to_string(keys.join("creds/event-ingestor.creds")).unwrap(), creds);

    // A development setup has the simulator's identity and a superuser.
    let (code, stderr) = run_to_exit(Path::new(BIN), &[("OPSPILOT_DEV", "true".into())], &args).await;
    assert_eq!(code, Some(0), "{stderr:?}");
    let written = files(&keys);
    assert!(
        written.contains(&"creds/superuser.creds".to_owned())
            && written.contains(&"creds/agent-sim.creds".to_owned())
    );
}

#[tokio::test]
async fn rotation_revokes_the_replaced_service_credentials() {
    let stack = Stack::start().await;
    natsbus::ensure_topology(&stack.jetstream().await, &stack.topology).await.unwrap();
    let old = std::fs::read_to_string(stack.auth.creds(&Identity::EventIngestor)).unwrap();
    let connect = |creds: String| {
        let url = stack.nats.url();
        async move {
            async_nats::ConnectOptions::with_credentials(&creds)
                .unwrap()
                .name("event-ingestor")
                .custom_inbox_prefix(Identity::EventIngestor.inbox_prefix())
                .connection_timeout(Duration::from_secs(2))
                .connect(url)
                .await
        }
    };
    let before = connect(old.clone()).await.unwrap();

    let mut env = stack.env_for(&Identity::ApiGateway);
    env.push(("OPSPILOT_DEV", "true".into()));
    let dir = stack.auth.dir().to_str().unwrap().to_owned();
    let (code, stderr) = run_to_exit(Path::new(BIN), &env, &["nats-init", "--dir", &dir, "--rotate"]).await;
    assert_eq!(code, Some(0), "{stderr:?}");

    let new = std::fs::read_to_string(stack.auth.creds(&Identity::EventIngestor)).unwrap();
    assert_ne!(new, old, "rotation writes new credentials");
    test_support::eventually(
        Duration::from_secs(10),
        "the old credentials' connection to be dropped",
        || {
            let state = before.connection_state();
            async move { (state != async_nats::connection::State::Connected).then_some(()) }
        },
    )
    .await;
    assert!(connect(old).await.is_err(), "rotated-out credentials must be refused");
    assert!(connect(new).await.is_ok());
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_credentials WHERE identity = 'service' AND revoked_at IS NOT NULL",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert!(revoked >= 4, "every replaced service key is on the revocation list ({revoked})");
}
