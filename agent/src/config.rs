//! The agent's configuration: one TOML file (`agent.toml`, every key optional, see
//! `debian/agent.toml` for the commented default), a few command-line / environment
//! overrides, and validation of everything before the agent acts on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::RegexSet;
use serde::Deserialize;
use wire_models::{EventKind, Severity};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/opspilot-agent/agent.toml";
/// Default state directory (identity, credentials, spool).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/opspilot-agent";

/// Why the configuration cannot be used; said so an operator can fix the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub api: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub inventory: InventoryConfig,
    pub events: EventsConfig,
    pub spool: SpoolConfig,
    pub actions: ActionsConfig,
    pub host: HostPaths,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// How often the host is looked at for changes (a changed snapshot is sent at once).
    pub check_interval_secs: u64,
    /// How often an unchanged snapshot is sent anyway.
    pub interval_secs: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self { check_interval_secs: 60, interval_secs: 3600 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Mount points whose usage is watched.
    pub filesystems: Vec<PathBuf>,
    /// Usage, in percent, above which a filesystem is reported.
    pub filesystem_threshold_percent: u8,
    pub filesystem_check_interval_secs: u64,
    /// Report units that enter the `failed` state (from the inventory's unit list).
    pub failed_units: bool,
    /// Report OOM kills (the cgroups' and the kernel's counters, checked with the
    /// filesystems).
    pub oom_kills: bool,
    pub logs: Vec<LogWatch>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            filesystems: vec![PathBuf::from("/")],
            filesystem_threshold_percent: 90,
            filesystem_check_interval_secs: 60,
            failed_units: true,
            oom_kills: true,
            logs: Vec::new(),
        }
    }
}

/// One log file, tailed from its end, whose lines matching any pattern become events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogWatch {
    pub path: PathBuf,
    pub patterns: Vec<String>,
    #[serde(default = "LogWatch::default_kind")]
    pub kind: String,
    #[serde(default = "LogWatch::default_severity")]
    pub severity: String,
    /// At most this many events a minute from this file; the rest are counted and
    /// dropped, so a log storm cannot become an event storm.
    #[serde(default = "LogWatch::default_rate")]
    pub max_per_minute: u32,
}

impl LogWatch {
    fn default_kind() -> String {
        "log_match".into()
    }
    fn default_severity() -> String {
        "error".into()
    }
    fn default_rate() -> u32 {
        30
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Most unacknowledged events kept on disk; past it the oldest are dropped.
    pub max_events: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self { max_events: 10_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsConfig {
    /// The service manager's command line tool, run without a shell.
    pub systemctl: PathBuf,
    /// Where `/var/log/` is on this host (the protocol's log paths are mapped onto it).
    pub log_root: PathBuf,
    /// A local policy that may refuse commands the backend allows.
    pub policy_file: PathBuf,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self {
            systemctl: PathBuf::from("/usr/bin/systemctl"),
            log_root: PathBuf::from("/var/log"),
            policy_file: PathBuf::from("/etc/opspilot-agent/policy.toml"),
        }
    }
}

/// Where host facts are read from; tests point them at fixtures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostPaths {
    pub os_release: PathBuf,
    pub machine_id: PathBuf,
    pub product_uuid: PathBuf,
    pub dpkg_status: PathBuf,
    /// Asked for packages on hosts without dpkg.
    pub rpm: PathBuf,
    /// The kernel's counters (`oom_kill`).
    pub vmstat: PathBuf,
    /// The cgroup v2 hierarchy, whose `memory.events` name the unit an OOM kill hit.
    pub cgroup_root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            os_release: PathBuf::from("/etc/os-release"),
            machine_id: PathBuf::from("/etc/machine-id"),
            product_uuid: PathBuf::from("/sys/class/dmi/id/product_uuid"),
            dpkg_status: PathBuf::from("/var/lib/dpkg/status"),
            rpm: PathBuf::from("/usr/bin/rpm"),
            vmstat: PathBuf::from("/proc/vmstat"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// A validated log watch.
#[derive(Debug, Clone)]
pub struct LogRule {
    pub path: PathBuf,
    pub patterns: RegexSet,
    pub kind: EventKind,
    pub severity: Severity,
    pub max_per_minute: u32,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub api: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub inventory_check: Duration,
    pub inventory_interval: Duration,
    pub filesystems: Vec<PathBuf>,
    pub filesystem_threshold_percent: u8,
    pub filesystem_check: Duration,
    pub failed_units: bool,
    pub oom_kills: bool,
    pub logs: Vec<LogRule>,
    pub spool_max_events: usize,
    pub actions: ActionsConfig,
    pub host: HostPaths,
}

/// Overrides from the command line or the environment, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub api: Option<String>,
}

impl Config {
    /// Reads `path` (a missing file at the default location means all defaults), applies
    /// `overrides` and validates the result.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_CONFIG) => {
                FileConfig::default()
            }
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        Self::from_file(file, overrides)
    }

    pub fn from_file(file: FileConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let state_dir = overrides
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        absolute("state_dir", &state_dir)?;
        let api = overrides.api.clone().or(file.api).map(|a| check_api(&a)).transpose()?;
        if let Some(hostname) = &file.hostname {
            check_hostname(hostname)?;
        }
        for (key, value) in &file.labels {
            wire_models::check_label_key(key).map_err(|e| invalid(format!("labels.{key}: {e}")))?;
            wire_models::check_label_value(value).map_err(|e| invalid(format!("labels.{key}: {e}")))?;
        }
        if file.labels.len() > wire_models::MAX_LABELS {
            return Err(invalid(format!("labels: at most {} labels", wire_models::MAX_LABELS)));
        }
        let inventory_check = seconds("inventory.check_interval_secs", file.inventory.check_interval_secs)?;
        let inventory_interval = seconds("inventory.interval_secs", file.inventory.interval_secs)?;
        let events = file.events;
        if !(1..=100).contains(&events.filesystem_threshold_percent) {
            return Err(invalid("events.filesystem_threshold_percent: must be between 1 and 100"));
        }
        for fs in &events.filesystems {
            absolute("events.filesystems", fs)?;
        }
        let filesystem_check =
            seconds("events.filesystem_check_interval_secs", events.filesystem_check_interval_secs)?;
        let logs = events.logs.iter().map(LogRule::from_watch).collect::<Result<Vec<_>, _>>()?;
        if !(1..=1_000_000).contains(&file.spool.max_events) {
            return Err(invalid("spool.max_events: must be between 1 and 1000000"));
        }
        absolute("actions.systemctl", &file.actions.systemctl)?;
        absolute("actions.log_root", &file.actions.log_root)?;
        absolute("actions.policy_file", &file.actions.policy_file)?;
        let host = &file.host;
        for (field, path) in [
            ("host.os_release", &host.os_release),
            ("host.machine_id", &host.machine_id),
            ("host.product_uuid", &host.product_uuid),
            ("host.dpkg_status", &host.dpkg_status),
            ("host.rpm", &host.rpm),
            ("host.vmstat", &host.vmstat),
            ("host.cgroup_root", &host.cgroup_root),
        ] {
            absolute(field, path)?;
        }
        Ok(Self {
            state_dir,
            api,
            hostname: file.hostname,
            labels: file.labels,
            inventory_check,
            inventory_interval,
            filesystems: events.filesystems,
            filesystem_threshold_percent: events.filesystem_threshold_percent,
            filesystem_check,
            failed_units: events.failed_units,
            oom_kills: events.oom_kills,
            logs,
            spool_max_events: file.spool.max_events,
            actions: file.actions,
            host: file.host,
        })
    }
}

impl LogRule {
    fn from_watch(watch: &LogWatch) -> Result<Self, ConfigError> {
        let at = format!("events.logs[{}]", watch.path.display());
        absolute(&at, &watch.path)?;
        if watch.patterns.is_empty() || watch.patterns.len() > 64 {
            return Err(invalid(format!("{at}.patterns: 1 to 64 patterns")));
        }
        // The size limit keeps a pathological pattern from costing unbounded memory.
        let patterns = regex::RegexSetBuilder::new(&watch.patterns)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| invalid(format!("{at}.patterns: {e}")))?;
        let kind = EventKind::parse(&watch.kind).map_err(|e| invalid(format!("{at}.kind: {e}")))?;
        let severity = Severity::parse(&watch.severity)
            .ok_or_else(|| invalid(format!("{at}.severity: {:?} is not a severity", watch.severity)))?;
        if !(1..=6000).contains(&watch.max_per_minute) {
            return Err(invalid(format!("{at}.max_per_minute: must be between 1 and 6000")));
        }
        Ok(Self { path: watch.path.clone(), patterns, kind, severity, max_per_minute: watch.max_per_minute })
    }
}

fn absolute(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(format!("{field}: {} is not absolute", path.display())))
    }
}

fn seconds(field: &str, secs: u64) -> Result<Duration, ConfigError> {
    if (1..=86_400).contains(&secs) {
        Ok(Duration::from_secs(secs))
    } else {
        Err(invalid(format!("{field}: must be between 1 and 86400")))
    }
}

/// The API's base URL: http(s), no query, no credentials in it.
pub fn check_api(api: &str) -> Result<String, ConfigError> {
    let trimmed = api.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| invalid(format!("api: {api:?} must start with https:// or http://")))?;
    if rest.is_empty()
        || rest.contains(['?', '#', '@'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!("api: {api:?} is not a plain base URL")));
    }
    Ok(trimmed.to_owned())
}

/// What the protocol accepts as a hostname (1 to 253 characters, no spaces or
/// control characters).
pub fn check_hostname(hostname: &str) -> Result<(), ConfigError> {
    if hostname.is_empty()
        || hostname.len() > 253
        || hostname.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!("hostname: {hostname:?} is not a valid hostname")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_file(toml::from_str(text).map_err(|e| invalid(e.to_string()))?, &Overrides::default())
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let text = include_str!("../debian/agent.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn an_empty_file_means_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.filesystem_threshold_percent, 90);
        assert_eq!(config.actions.systemctl, PathBuf::from("/usr/bin/systemctl"));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let file: FileConfig = toml::from_str("state_dir = \"/a\"\napi = \"http://x:1\"").unwrap();
        let overrides = Overrides { state_dir: Some("/b".into()), api: Some("https://y/".into()) };
        let config = Config::from_file(file, &overrides).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/b"));
        assert_eq!(config.api.as_deref(), Some("https://y"));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (text, key) in [
            ("surprise = 1", "surprise"),
            ("state_dir = \"relative\"", "state_dir"),
            ("api = \"ftp://x\"", "api"),
            ("api = \"http://user@x\"", "api"),
            ("hostname = \"a b\"", "hostname"),
            ("[labels]\n\"bad key!\" = \"x\"", "labels"),
            ("[events]\nfilesystem_threshold_percent = 0", "filesystem_threshold_percent"),
            ("[events]\nfilesystem_threshold_percent = 101", "filesystem_threshold_percent"),
            ("[[events.logs]]\npath = \"/var/log/x\"\npatterns = [\"(\"]", "patterns"),
            ("[[events.logs]]\npath = \"/var/log/x\"\npatterns = []", "patterns"),
            ("[[events.logs]]\npath = \"/var/log/x\"\npatterns = [\"x\"]\nkind = \"a.b\"", "kind"),
            ("[[events.logs]]\npath = \"/var/log/x\"\npatterns = [\"x\"]\nseverity = \"meh\"", "severity"),
            ("[inventory]\ninterval_secs = 0", "interval_secs"),
            ("[actions]\nsystemctl = \"systemctl\"", "systemctl"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
