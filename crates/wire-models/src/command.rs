//! The command allow-list: the only actions the backend ever sends to an agent.
//!
//! A command travels as a name plus a JSON object of parameters
//! (`{"command":"restart_service","params":{"service":"nginx"}}`). [`Command::from_parts`]
//! is the single gate: an unknown name, an unknown parameter or a parameter that is not
//! in its safe shape is refused before anything reaches a subject.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Names of the allow-listed commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandName {
    Ping,
    ServiceStatus,
    StartService,
    StopService,
    RestartService,
    CollectInventory,
    TailLog,
}

impl CommandName {
    pub const ALL: [CommandName; 7] = [
        CommandName::Ping,
        CommandName::ServiceStatus,
        CommandName::StartService,
        CommandName::StopService,
        CommandName::RestartService,
        CommandName::CollectInventory,
        CommandName::TailLog,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::Ping => "ping",
            CommandName::ServiceStatus => "service_status",
            CommandName::StartService => "start_service",
            CommandName::StopService => "stop_service",
            CommandName::RestartService => "restart_service",
            CommandName::CollectInventory => "collect_inventory",
            CommandName::TailLog => "tail_log",
        }
    }

    /// Whether the command changes the host (as opposed to only reading from it).
    pub fn is_mutating(self) -> bool {
        matches!(self, CommandName::StartService | CommandName::StopService | CommandName::RestartService)
    }
}

impl fmt::Display for CommandName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandName {
    type Err = CommandError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandName::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| CommandError::Unknown(truncate_for_error(s)))
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command {0:?} is not on the allow-list")]
    Unknown(String),
    #[error("params must be a JSON object")]
    ParamsNotObject,
    #[error("params.{0}: unknown parameter for this command")]
    UnknownParam(String),
    #[error("params.{0}: required")]
    MissingParam(&'static str),
    #[error("params.{param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
}

/// A validated, allow-listed command with typed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping,
    ServiceStatus { service: ServiceName },
    StartService { service: ServiceName },
    StopService { service: ServiceName },
    RestartService { service: ServiceName },
    CollectInventory,
    TailLog { path: LogPath, lines: u32 },
}

impl Command {
    /// Largest `lines` a `tail_log` may ask for.
    pub const MAX_TAIL_LINES: u32 = 1000;
    /// `lines` of a `tail_log` that does not say.
    pub const DEFAULT_TAIL_LINES: u32 = 100;

    /// Validates a command name and its parameters. `params` may be `null` or absent
    /// (as `Value::Null`) for commands that take none.
    pub fn from_parts(name: &str, params: &Value) -> Result<Self, CommandError> {
        let name: CommandName = name.parse()?;
        let empty = Map::new();
        let params = match params {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => return Err(CommandError::ParamsNotObject),
        };
        let allowed: &[&str] = match name {
            CommandName::Ping | CommandName::CollectInventory => &[],
            CommandName::ServiceStatus
            | CommandName::StartService
            | CommandName::StopService
            | CommandName::RestartService => &["service"],
            CommandName::TailLog => &["path", "lines"],
        };
        if let Some(unknown) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(CommandError::UnknownParam(truncate_for_error(unknown)));
        }
        let service = || -> Result<ServiceName, CommandError> {
            let raw = required_str(params, "service")?;
            ServiceName::parse(raw).map_err(|reason| CommandError::InvalidParam { param: "service", reason })
        };
        Ok(match name {
            CommandName::Ping => Command::Ping,
            CommandName::CollectInventory => Command::CollectInventory,
            CommandName::ServiceStatus => Command::ServiceStatus { service: service()? },
            CommandName::StartService => Command::StartService { service: service()? },
            CommandName::StopService => Command::StopService { service: service()? },
            CommandName::RestartService => Command::RestartService { service: service()? },
            CommandName::TailLog => {
                let path = LogPath::parse(required_str(params, "path")?)
                    .map_err(|reason| CommandError::InvalidParam { param: "path", reason })?;
                let lines = match params.get("lines") {
                    None | Some(Value::Null) => Self::DEFAULT_TAIL_LINES,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=u64::from(Self::MAX_TAIL_LINES)).contains(n))
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| CommandError::InvalidParam {
                            param: "lines",
                            reason: format!("must be an integer between 1 and {}", Self::MAX_TAIL_LINES),
                        })?,
                };
                Command::TailLog { path, lines }
            }
        })
    }

    pub fn name(&self) -> CommandName {
        match self {
            Command::Ping => CommandName::Ping,
            Command::ServiceStatus { .. } => CommandName::ServiceStatus,
            Command::StartService { .. } => CommandName::StartService,
            Command::StopService { .. } => CommandName::StopService,
            Command::RestartService { .. } => CommandName::RestartService,
            Command::CollectInventory => CommandName::CollectInventory,
            Command::TailLog { .. } => CommandName::TailLog,
        }
    }

    /// The parameters as the JSON object that goes on the wire.
    pub fn params(&self) -> Value {
        let mut map = Map::new();
        match self {
            Command::Ping | Command::CollectInventory => {}
            Command::ServiceStatus { service }
            | Command::StartService { service }
            | Command::StopService { service }
            | Command::RestartService { service } => {
                map.insert("service".into(), Value::String(service.as_str().to_owned()));
            }
            Command::TailLog { path, lines } => {
                map.insert("path".into(), Value::String(path.as_str().to_owned()));
                map.insert("lines".into(), Value::from(*lines));
            }
        }
        Value::Object(map)
    }
}

fn required_str<'a>(params: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, CommandError> {
    match params.get(key) {
        None | Some(Value::Null) => Err(CommandError::MissingParam(key)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(CommandError::InvalidParam { param: key, reason: "must be a string".into() }),
    }
}

/// Keeps error messages bounded when the offending input is huge.
pub(crate) fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// The wire shape of a command: `{"command": "...", "params": {...}}`.
#[derive(Serialize, Deserialize)]
struct CommandWire {
    command: String,
    #[serde(default)]
    params: Value,
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CommandWire { command: self.name().as_str().to_owned(), params: self.params() }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = CommandWire::deserialize(deserializer)?;
        Command::from_parts(&wire.command, &wire.params).map_err(serde::de::Error::custom)
    }
}

/// A service (unit) name that is safe to hand to a service manager: 1-128 characters
/// of `[A-Za-z0-9_.@:-]`, starting with a letter or digit, never `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters", Self::MAX_LEN));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err("must start with a letter or digit".into());
        }
        if let Some(c) =
            s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-')))
        {
            return Err(format!("character {c:?} is not allowed in a service name"));
        }
        if s.contains("..") {
            return Err("must not contain '..'".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ServiceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A log file path an agent may read: absolute, under `/var/log/`, made of plain
/// components (`[A-Za-z0-9_.-]`, never `.` or `..`), at most 256 bytes. It is a path,
/// never a shell string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct LogPath(String);

impl LogPath {
    pub const ROOT: &'static str = "/var/log/";
    pub const MAX_LEN: usize = 256;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} bytes", Self::MAX_LEN));
        }
        let Some(rest) = s.strip_prefix(Self::ROOT) else {
            return Err(format!("must be an absolute path under {}", Self::ROOT));
        };
        if rest.is_empty() {
            return Err("must name a file".into());
        }
        for component in rest.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err("must not contain empty, '.' or '..' components".into());
            }
            if let Some(c) =
                component.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            {
                return Err(format!("character {c:?} is not allowed in a log path"));
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LogPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        LogPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restart_service_round_trips() {
        let cmd = Command::from_parts("restart_service", &json!({"service": "nginx"})).unwrap();
        assert_eq!(cmd, Command::RestartService { service: ServiceName::parse("nginx").unwrap() });
        let wire = serde_json::to_value(&cmd).unwrap();
        assert_eq!(wire, json!({"command": "restart_service", "params": {"service": "nginx"}}));
        let back: Command = serde_json::from_value(wire).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn every_command_round_trips() {
        let cases = [
            ("ping", json!({})),
            ("collect_inventory", json!(null)),
            ("service_status", json!({"service": "sshd.service"})),
            ("start_service", json!({"service": "getty@tty1"})),
            ("stop_service", json!({"service": "postgresql-15"})),
            ("restart_service", json!({"service": "nginx"})),
            ("tail_log", json!({"path": "/var/log/nginx/error.log", "lines": 20})),
        ];
        for (name, params) in cases {
            let cmd = Command::from_parts(name, &params).unwrap();
            assert_eq!(cmd.name().as_str(), name);
            let back: Command = serde_json::from_value(serde_json::to_value(&cmd).unwrap()).unwrap();
            assert_eq!(back, cmd);
        }
    }

    #[test]
    fn refuses_what_is_not_allow_listed() {
        assert!(matches!(Command::from_parts("rm_rf", &json!({})), Err(CommandError::Unknown(_))));
        assert!(matches!(
            Command::from_parts("restart_service", &json!({"service": "nginx", "extra": 1})),
            Err(CommandError::UnknownParam(p)) if p == "extra"
        ));
        assert_eq!(
            Command::from_parts("restart_service", &json!({})),
            Err(CommandError::MissingParam("service"))
        );
        assert_eq!(Command::from_parts("restart_service", &json!([])), Err(CommandError::ParamsNotObject));
    }

    #[test]
    fn service_names_are_safe_identifiers() {
        for bad in [
            "",
            "nginx; rm -rf /",
            "$(reboot)",
            "a b",
            "-nginx",
            "../etc",
            "a..b",
            "ngïnx",
            "x`id`",
            "a|b",
            "a\nb",
        ] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(ServiceName::parse(&"a".repeat(129)).is_err());
        for good in ["nginx", "sshd.service", "getty@tty1", "postgresql-15", "systemd-journald", "a:b_c"] {
            ServiceName::parse(good).unwrap();
        }
    }

    #[test]
    fn log_paths_stay_under_var_log() {
        for bad in [
            "/etc/shadow",
            "var/log/syslog",
            "/var/log/",
            "/var/log/../../etc/shadow",
            "/var/log/./x",
            "/var/log//x",
            "/var/log/x;reboot",
            "/var/log/$(id)",
            "/var/log/a b",
            "/var/logx/y",
        ] {
            assert!(LogPath::parse(bad).is_err(), "{bad:?} must be refused");
        }
        LogPath::parse("/var/log/syslog").unwrap();
        LogPath::parse("/var/log/nginx/error.log.1").unwrap();
    }

    #[test]
    fn tail_log_lines_are_bounded() {
        let ok = Command::from_parts("tail_log", &json!({"path": "/var/log/syslog"})).unwrap();
        assert_eq!(ok.params()["lines"], json!(Command::DEFAULT_TAIL_LINES));
        for bad in [json!(0), json!(1001), json!(-1), json!("10"), json!(1.5)] {
            assert!(
                Command::from_parts("tail_log", &json!({"path": "/var/log/syslog", "lines": bad})).is_err()
            );
        }
    }
}
