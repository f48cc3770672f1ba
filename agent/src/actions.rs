//! Allow-listed actions (docs/PROTOCOL.md, 5.4 and 5.5). The request is decoded and
//! validated by `wire-models` before anything runs; service names reach `systemctl`
//! as one argument after `--`, never through a shell; log tails are opened only
//! inside the log directory, never through a symbolic link out of it; output is
//! capped; and a local policy file may refuse what the backend allows.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_client::rpc;
use serde::Deserialize;
use wire_models::{Command, CommandName, LogPath, RpcReply, RpcRequest, ServiceName};

use crate::config::ActionsConfig;
use crate::exec;

/// The local policy (`policy.toml`), read at every request so a change needs no
/// restart. A missing file allows everything on the allow-list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Refuse commands that change the host (start, stop, restart).
    pub refuse_mutating: bool,
    /// Further commands to refuse, by name.
    pub refuse: Vec<CommandName>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(format!("{}: {err}", path.display())),
        }
    }

    pub fn allows(&self, command: CommandName) -> bool {
        let refused_as_mutating = self.refuse_mutating && command.is_mutating();
        !refused_as_mutating && !self.refuse.contains(&command)
    }
}

/// What an action needs besides the request.
pub struct Actions {
    pub config: ActionsConfig,
    /// Asks the agent for a fresh inventory (`collect_inventory`).
    pub inventory: tokio::sync::mpsc::Sender<()>,
}

/// Largest output read from a program or a log: what a reply can carry.
const OUTPUT_CAP: usize = rpc::MAX_OUTPUT;

impl Actions {
    /// The reply to one RPC message (already known to have a reply subject).
    pub async fn handle(&self, payload: &[u8]) -> RpcReply {
        let started = Instant::now();
        let request = match wire_models::decode::<RpcRequest>(payload) {
            Ok(request) => request,
            Err(err) => return rpc::bad_request(payload, &err.to_string()),
        };
        let id = request.request_id;
        let name = request.command.name();
        // Refused before anything runs; a policy that cannot be read refuses too, since
        // it may have been meant to.
        match Policy::load(&self.config.policy_file) {
            Ok(policy) if policy.allows(name) => {}
            Ok(_) => {
                tracing::warn!(request_id = %id, command = %name, "command refused by the local policy");
                return rpc::error(
                    id,
                    "not_permitted",
                    &format!("{name} is refused by this host's policy"),
                    None,
                    started,
                );
            }
            Err(err) => {
                tracing::error!(error = %err, "local policy unreadable; refusing");
                return rpc::error(
                    id,
                    "not_permitted",
                    "this host's policy file cannot be read",
                    None,
                    started,
                );
            }
        }
        // Answer within the caller's deadline (measured from receipt, clocks differ),
        // keeping a tenth of it (at most 100 ms) to send the reply.
        let budget = Duration::from_millis(u64::from(request.timeout_ms));
        let timeout = budget - (budget / 10).min(Duration::from_millis(100));
        tracing::info!(request_id = %id, command = %name, "action");
        match &request.command {
            Command::Ping => rpc::ok(id, "pong", Some(0), started),
            Command::CollectInventory => match self.inventory.try_send(()) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                    rpc::ok(id, "inventory collection requested", Some(0), started)
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => {
                    rpc::error(id, "unavailable", "the agent is stopping", None, started)
                }
            },
            Command::ServiceStatus { service } => {
                self.systemctl(id, "status", service, timeout, started).await
            }
            Command::StartService { service } => self.systemctl(id, "start", service, timeout, started).await,
            Command::StopService { service } => self.systemctl(id, "stop", service, timeout, started).await,
            Command::RestartService { service } => {
                self.systemctl(id, "restart", service, timeout, started).await
            }
            Command::TailLog { path, lines } => {
                let (root, path, lines) = (self.config.log_root.clone(), path.clone(), *lines);
                match tokio::task::spawn_blocking(move || tail(&root, &path, lines)).await {
                    Ok(Ok(text)) => rpc::ok(id, &text, None, started),
                    Ok(Err((code, message))) => rpc::error(id, code, &message, None, started),
                    Err(_) => rpc::error(id, "internal", "reading the log failed", None, started),
                }
            }
        }
    }

    async fn systemctl(
        &self,
        id: uuid::Uuid,
        verb: &str,
        service: &ServiceName,
        timeout: Duration,
        started: Instant,
    ) -> RpcReply {
        // `--` ends the options: whatever the name, it is a unit, never a flag.
        let args: Vec<&str> = match verb {
            "status" => vec!["status", "--no-pager", "--lines=20", "--", service.as_str()],
            _ => vec![verb, "--no-ask-password", "--", service.as_str()],
        };
        match exec::run(&self.config.systemctl, &args, timeout, OUTPUT_CAP).await {
            Ok(out) => {
                let mut text = out.stdout;
                if !out.stderr.is_empty() {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&out.stderr);
                }
                let text = text.trim_end();
                match (verb, out.exit_code) {
                    (_, Some(0)) => rpc::ok(id, if text.is_empty() { verb } else { text }, Some(0), started),
                    // systemctl status: 1-3 are states of an existing unit (LSB codes).
                    ("status", Some(code @ 1..=3)) => rpc::ok(id, text, Some(code), started),
                    ("status", Some(4)) | (_, Some(5)) => {
                        rpc::error(id, "unknown_service", first_line(text), out.exit_code, started)
                    }
                    (_, code) => rpc::error(id, "command_failed", first_line(text), code, started),
                }
            }
            Err(exec::ExecError::Timeout { .. }) => {
                rpc::error(id, "timeout", &format!("systemctl {verb} did not finish in time"), None, started)
            }
            Err(err) => rpc::error(id, "unavailable", &err.to_string(), None, started),
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("failed")
}

/// The last `lines` lines of the log `path` (a `/var/log/...` path, mapped onto
/// `root`), at most [`OUTPUT_CAP`] bytes of them.
pub fn tail(root: &Path, path: &LogPath, lines: u32) -> Result<String, (&'static str, String)> {
    let relative = path.as_str().strip_prefix(LogPath::ROOT).unwrap_or_default();
    let not_found = |e: std::io::Error| ("not_found", format!("{}: {e}", path.as_str()));
    let root = root.canonicalize().map_err(not_found)?;
    // Resolving every link, then checking the result is still inside the root, is what
    // refuses `/var/log/x -> /etc/shadow`; O_NOFOLLOW then refuses a link swapped in
    // at the last component in between.
    let real: PathBuf = root.join(relative).canonicalize().map_err(not_found)?;
    if !real.starts_with(&root) {
        return Err(("not_permitted", format!("{} leads out of {}", path.as_str(), LogPath::ROOT)));
    }
    let nofollow = i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(&real)
        .map_err(|e| ("not_permitted", format!("{}: {e}", path.as_str())))?;
    let meta = file.metadata().map_err(not_found)?;
    if !meta.is_file() {
        return Err(("not_permitted", format!("{} is not a regular file", path.as_str())));
    }
    // The wanted lines are in the last bytes; read enough of them for long lines.
    let window = (OUTPUT_CAP as u64) * 4;
    let start = meta.len().saturating_sub(window);
    file.seek(SeekFrom::Start(start)).map_err(not_found)?;
    let mut buf = Vec::new();
    file.take(window).read_to_end(&mut buf).map_err(not_found)?;
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // cut mid-line by the window
    }
    let from = all.len().saturating_sub(usize::try_from(lines).unwrap_or(usize::MAX));
    let mut chosen = &all[from..];
    // Drop the oldest lines until the rest fits: the newest are what the caller wants.
    while chosen.iter().map(|l| l.len() + 1).sum::<usize>() > OUTPUT_CAP && chosen.len() > 1 {
        chosen = &chosen[1..];
    }
    Ok(rpc::truncate(&chosen.join("\n"), OUTPUT_CAP).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_path(s: &str) -> LogPath {
        LogPath::parse(s).unwrap()
    }

    #[test]
    fn a_tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("app.log"), text).unwrap();
        let got = tail(dir.path(), &log_path("/var/log/app.log"), 3).unwrap();
        assert_eq!(got, "line 47\nline 48\nline 49");
    }

    #[test]
    fn links_out_of_the_log_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("log"), dir.path().join("secret"));
        std::fs::create_dir(&root).unwrap();
        std::fs::write(&outside, "password").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil.log")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        let (code, _) = tail(&root, &log_path("/var/log/evil.log"), 10).unwrap_err();
        assert_eq!(code, "not_permitted");
        let (code, _) = tail(&root, &log_path("/var/log/up/secret"), 10).unwrap_err();
        assert_eq!(code, "not_permitted");
        // A link that stays inside is fine.
        std::fs::write(root.join("real.log"), "ok\n").unwrap();
        std::os::unix::fs::symlink(root.join("real.log"), root.join("alias.log")).unwrap();
        assert_eq!(tail(&root, &log_path("/var/log/alias.log"), 10).unwrap(), "ok");
        let (code, _) = tail(&root, &log_path("/var/log/missing.log"), 10).unwrap_err();
        assert_eq!(code, "not_found");
    }

    #[test]
    fn huge_logs_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let line = "x".repeat(1000);
        let text: String = (0..500).map(|_| format!("{line}\n")).collect();
        std::fs::write(dir.path().join("big.log"), text).unwrap();
        let got = tail(dir.path(), &log_path("/var/log/big.log"), 1000).unwrap();
        assert!(got.len() <= OUTPUT_CAP && got.len() > OUTPUT_CAP - 1001, "{}", got.len());
    }

    fn actions_with(systemctl: &str) -> (tempfile::TempDir, Actions) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("systemctl");
        std::fs::write(&script, format!("#!/bin/sh\n{systemctl}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = ActionsConfig {
            systemctl: script,
            log_root: dir.path().to_owned(),
            policy_file: dir.path().join("policy.toml"),
        };
        let (inventory, _) = tokio::sync::mpsc::channel(1);
        (dir, Actions { config, inventory })
    }

    fn request(command: Command, timeout_ms: u32) -> Vec<u8> {
        let request = RpcRequest {
            v: wire_models::PROTOCOL_VERSION,
            request_id: uuid::Uuid::now_v7(),
            command,
            issued_at: chrono::Utc::now(),
            timeout_ms,
        };
        wire_models::encode(&request).unwrap()
    }

    #[tokio::test]
    async fn a_hung_service_manager_is_abandoned_within_the_deadline() {
        let (_dir, actions) = actions_with("sleep 10");
        let service = ServiceName::parse("nginx").unwrap();
        let started = Instant::now();
        let reply = actions.handle(&request(Command::RestartService { service }, 1000)).await;
        assert_eq!(reply.error.map(|e| e.code), Some("timeout".to_owned()));
        assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn failures_say_what_happened() {
        let (_dir, actions) = actions_with("echo 'Job for x.service failed.' >&2; exit 1");
        let service = ServiceName::parse("x.service").unwrap();
        let reply = actions.handle(&request(Command::StartService { service }, 5000)).await;
        assert_eq!(reply.exit_code, Some(1));
        let error = reply.error.unwrap();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("command_failed", "Job for x.service failed.")
        );
        let reply = actions.handle(b"{\"v\":1,\"request_id\":\"nope\"}").await;
        assert_eq!(reply.error.map(|e| e.code), Some("bad_request".to_owned()));
    }

    #[test]
    fn the_policy_can_refuse_mutating_commands() {
        let policy: Policy = toml::from_str("refuse_mutating = true").unwrap();
        assert!(!policy.allows(CommandName::RestartService));
        assert!(policy.allows(CommandName::ServiceStatus));
        let policy: Policy = toml::from_str("refuse = [\"tail_log\"]").unwrap();
        assert!(!policy.allows(CommandName::TailLog));
        assert!(policy.allows(CommandName::RestartService));
        assert!(toml::from_str::<Policy>("refuse = [\"shell\"]").is_err());
        assert!(
            Policy::load(Path::new("/nonexistent/policy.toml")).unwrap().allows(CommandName::StopService)
        );
    }
}
