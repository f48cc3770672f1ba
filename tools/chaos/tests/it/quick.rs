//! The short version of `make chaos` inside `make test`: the SIGKILL scenario with the
//! real binaries (target/debug, built by the workspace test run), its exact accounting,
//! and the secrets check over every log line it produced.

use std::time::Duration;

use opspilot_chaos::accounting;
use opspilot_chaos::binaries::Binaries;
use opspilot_chaos::scenarios::{self, Ctx, Scenario, Sizes};
use opspilot_chaos::secrets::Secrets;

#[tokio::test]
async fn killed_ingestors_lose_nothing_and_no_secret_reaches_a_log() {
    test_support::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::default();
    let ctx = Ctx {
        run_dir: dir.path().to_path_buf(),
        bins: Binaries::locate(None).unwrap(),
        secrets: secrets.clone(),
        sizes: Sizes {
            kill_events: 4_000,
            kill_rate: 1_000.0,
            events: 0,
            rate: 0.0,
            fleet: 30,
            kill_every: Duration::from_millis(1200),
            outage: Duration::from_secs(2),
            nats_outage: Duration::from_secs(1),
        },
    };
    let result = scenarios::run(Scenario::Kill, &ctx).await;
    let table = accounting::table(std::slice::from_ref(&result));
    assert!(result.pass(), "{table}");
    assert_eq!(result.published, 4_000, "{table}");
    assert!(result.dead_lettered > 0, "the poison events must reach the dead-letter stream: {table}");

    let scan = secrets.scan(dir.path()).unwrap();
    assert!(scan.secrets >= 15, "too few secrets registered: {:?}", secrets.labels());
    assert!(scan.files >= 6 && scan.lines > 100, "too little was logged to prove anything: {scan:?}");
    assert!(scan.leaks.is_empty(), "secrets in the logs: {:?}", scan.leaks);
}
