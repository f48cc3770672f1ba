//! A service started as its own process, everything it prints going to a log file in
//! the run directory (the secrets check reads every one of them at the end).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// A running (or exited) service process.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// How long it took to exit after we started waiting.
    pub after: Duration,
}

impl Proc {
    /// Starts `binary` with exactly `env` (plus PATH and JSON logs), appending its
    /// stdout and stderr to `log`.
    pub fn spawn(name: &str, binary: &Path, env: &[(&str, String)], log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stderr = file.try_clone().context("duplicating the log file handle")?;
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { name: name.to_owned(), child, log: log.to_path_buf() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until the log holds a line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = tokio::fs::read_to_string(&self.log).await.unwrap_or_default();
            if text.lines().any(|line| line.contains(needle)) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("polling the process")? {
                anyhow::bail!(
                    "{} exited with {status} before logging {needle:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} logged no {needle:?} within {timeout:?}; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().with_context(|| format!("{} has already exited", self.name))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<Exit> {
        let started = Instant::now();
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} did not exit within {timeout:?}; see {}", self.name, self.log.display())
            })?
            .context("waiting for the process")?;
        Ok(Exit { code: status.code(), after: started.elapsed() })
    }

    /// The exit code if it has exited (`Some(None)`: ended by a signal), else `None`.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<Option<i32>>> {
        Ok(self.child.try_wait().context("polling the process")?.map(|status| status.code()))
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
