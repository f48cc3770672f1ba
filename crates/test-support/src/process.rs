//! Running a service binary as its own process: wait for readiness in its logs, stop it
//! with a signal, check its exit code and what it printed.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A service started as a child process with a clean environment.
pub struct ServiceProcess {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `binary` with exactly `env` (plus PATH) and `args`.
    pub fn spawn(binary: &Path, env: &[(&str, String)], args: &[&str]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // Held only to push one line; never across an await.
                    output.lock().unwrap().push(line);
                }
            });
        }
        Self { child, output }
    }

    /// The process id (None once it has exited and been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a line containing `needle` was printed.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "process exited with {status} before printing {needle:?}:\n{}",
                    self.output().join("\n")
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line containing {needle:?} within {timeout:?}:\n{}",
                self.output().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ =
                std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        }
    }

    /// Waits for the process to exit and returns its exit code (None if killed).
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("process did not exit within {timeout:?}:\n{}", self.output().join("\n"))
            })
            .expect("waiting for the process");
        // Let the readers drain what is left in the pipes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        status.code()
    }
}

/// Runs `binary` to completion with exactly `env` and returns (exit code, stderr lines).
pub async fn run_to_exit(binary: &Path, env: &[(&str, String)], args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(binary);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("process did not exit within 30s")
        .expect("running the process");
    let stderr = String::from_utf8_lossy(&out.stderr).lines().map(str::to_owned).collect();
    (out.status.code(), stderr)
}
