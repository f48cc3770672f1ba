//! The services under test, started as their release binaries, as in production.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use natsbus::auth::Identity;
use test_support::Stack;
use test_support::process::ServiceProcess;

/// Binaries live next to this one (target/release).
pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().map(|d| d.join(name)).ok_or_else(|| anyhow::anyhow!("no binary directory"))?;
    anyhow::ensure!(
        path.exists(),
        "{} is not built (cargo build --release --workspace --bins)",
        path.display()
    );
    Ok(path)
}

pub(crate) struct Service {
    pub(crate) process: ServiceProcess,
    /// Process start to its readiness line.
    pub(crate) startup: Duration,
}

impl Service {
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) {
        self.process.signal("TERM");
        let _ = self.process.wait(Duration::from_secs(30)).await;
        if std::env::var("BENCH_DEBUG").is_ok() {
            for line in self.process.output().iter().filter(|l| l.contains("DEBUG")) {
                eprintln!("{line}");
            }
        }
    }
}

/// Starts a service against `stack` as `identity` with `extra` environment, and waits
/// until it logs that it is ready.
pub(crate) async fn start(
    stack: &Stack,
    identity: &Identity,
    binary_name: &str,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Service> {
    let mut env = stack.env_for(identity);
    env.push((
        "RUST_LOG",
        "warn,event_ingestor=info,presence_tracker=info,api_gateway=info,ai_analyzer=info".into(),
    ));
    env.extend(extra.iter().cloned());
    let started = Instant::now();
    let mut process = ServiceProcess::spawn(&binary(binary_name)?, &env, &[]);
    process.wait_for_line(&format!("{binary_name} ready"), Duration::from_secs(60)).await;
    Ok(Service { process, startup: started.elapsed() })
}
