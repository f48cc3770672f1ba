//! One simulated agent: what it says (heartbeats, events, inventory) and how it
//! answers actions.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};
use uuid::Uuid;
use wire_models::{
    AgentId, Command, Event, EventKind, Heartbeat, Inventory, InventoryReport, OsInfo, PROTOCOL_VERSION,
    PackageInfo, RpcError, RpcReply, RpcRequest, RpcStatus, ServiceInfo, Severity,
};

/// Event kinds the simulator produces, with error texts carrying the kind of noise
/// (pids, sizes, timestamps) that real hosts print.
const EVENT_TEMPLATES: &[(&str, Severity, &str, &str)] = &[
    (
        "service_down",
        Severity::Critical,
        "nginx",
        "nginx.service: Main process exited, code=killed, status=9/KILL (pid {n})",
    ),
    (
        "oom",
        Severity::Critical,
        "kernel",
        "Out of memory: Killed process {n} (java) total-vm:{n}kB, anon-rss:{n}kB",
    ),
    ("disk_full", Severity::Error, "df", "/var: No space left on device ({n} bytes free at {ts})"),
    ("cert_expiry", Severity::Warning, "certbot", "certificate for api.example.com expires in {n} days"),
    ("connection_refused", Severity::Error, "app", "dial tcp 10.0.{n}.4:5432: connect: connection refused"),
    ("permission_denied", Severity::Error, "cron", "open /etc/app/{n}.conf: permission denied"),
    ("high_cpu", Severity::Warning, "node_exporter", "cpu usage {n}% over 5m on core {n}"),
];

const SERVICES: &[&str] = &["nginx", "sshd", "postgresql", "redis-server", "cron", "node_exporter"];

/// A simulated agent.
#[derive(Debug)]
pub struct SimAgent {
    pub id: AgentId,
    pub hostname: String,
    seq: AtomicU64,
    inventory_version: AtomicU32,
    silent: AtomicBool,
}

impl SimAgent {
    pub fn new(id: AgentId, hostname: String) -> Self {
        Self {
            id,
            hostname,
            seq: AtomicU64::new(0),
            inventory_version: AtomicU32::new(0),
            silent: AtomicBool::new(false),
        }
    }

    /// The `index`-th agent of a fleet named `seed`: same seed, same ids.
    pub fn numbered(seed: &str, index: usize) -> Self {
        let id = AgentId::derive_from(format!("{seed}/{index}").as_bytes());
        Self::new(id, format!("{seed}-host-{index:06}"))
    }

    /// Silences the agent (no heartbeats, events or RPC answers), as if its host died.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }

    pub fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Relaxed)
    }

    /// The stable machine fingerprint used for enrollment.
    pub fn machine_fingerprint(&self) -> String {
        format!("sim-machine-{}", self.hostname)
    }

    pub fn heartbeat(&self, interval: Duration) -> Heartbeat {
        Heartbeat {
            v: PROTOCOL_VERSION,
            agent_id: self.id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            sent_at: Utc::now(),
            interval_secs: u32::try_from(interval.as_secs().max(1)).unwrap_or(u32::MAX),
            hostname: Some(self.hostname.clone()),
            agent_version: Some(concat!("agent-sim/", env!("CARGO_PKG_VERSION")).to_owned()),
        }
    }

    /// A random event from the templates.
    pub fn random_event(&self, rng: &mut impl Rng) -> Event {
        let (kind, severity, source, template) = *EVENT_TEMPLATES.choose(rng).unwrap_or(&EVENT_TEMPLATES[0]);
        let raw_error = fill_template(template, rng);
        #[allow(clippy::expect_used)] // constant kinds, checked by `template_kinds_are_valid`
        let kind = EventKind::parse(kind).expect("template kinds are valid");
        self.event(kind, severity, source, &raw_error)
    }

    /// An event with the given content and a fresh event id.
    pub fn event(&self, kind: EventKind, severity: Severity, source: &str, raw_error: &str) -> Event {
        let mut context = Map::new();
        context.insert("hostname".into(), Value::String(self.hostname.clone()));
        Event {
            v: PROTOCOL_VERSION,
            event_id: Uuid::now_v7(),
            agent_id: self.id.clone(),
            kind,
            severity,
            source: source.to_owned(),
            raw_error: raw_error.to_owned(),
            context,
            occurred_at: Utc::now(),
        }
    }

    /// The current inventory snapshot; `change` moves it to a new version first.
    pub fn inventory(&self, change: bool) -> InventoryReport {
        let version = if change {
            self.inventory_version.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.inventory_version.load(Ordering::Relaxed)
        };
        let services = SERVICES
            .iter()
            .map(|name| ServiceInfo { name: (*name).to_owned(), state: "running".into() })
            .collect();
        let packages = vec![
            PackageInfo { name: "openssl".into(), version: format!("3.0.{version}") },
            PackageInfo { name: "nginx".into(), version: "1.22.1".into() },
        ];
        let mut meta = Map::new();
        meta.insert("env".into(), json!("sim"));
        meta.insert("rack".into(), json!(format!("r{}", self.id.as_str().as_bytes()[0] % 8)));
        InventoryReport {
            v: PROTOCOL_VERSION,
            agent_id: self.id.clone(),
            collected_at: Utc::now(),
            snapshot: Inventory {
                hostname: self.hostname.clone(),
                os: OsInfo {
                    name: "Debian GNU/Linux".into(),
                    version: "12".into(),
                    kernel: Some("6.1.0-28-amd64".into()),
                    arch: Some("x86_64".into()),
                },
                services,
                packages,
                meta,
                extra: Map::new(),
            },
        }
    }

    /// How this agent answers an action (after any simulated delay).
    pub fn answer(&self, request: &RpcRequest, fail: bool, started: std::time::Instant) -> RpcReply {
        let (status, output, error, exit_code) = if fail {
            (
                RpcStatus::Error,
                None,
                Some(RpcError {
                    code: "simulated_failure".into(),
                    message: "the simulator was told to fail".into(),
                }),
                Some(1),
            )
        } else {
            let output = match &request.command {
                Command::Ping => "pong".to_owned(),
                Command::ServiceStatus { service } => format!("{}: active (running)", service.as_str()),
                Command::StartService { service } => format!("started {}", service.as_str()),
                Command::StopService { service } => format!("stopped {}", service.as_str()),
                Command::RestartService { service } => format!("restarted {}", service.as_str()),
                Command::CollectInventory => "inventory published".to_owned(),
                Command::TailLog { path, lines } => (0..(*lines).min(5))
                    .map(|i| format!("{}: simulated line {i}", path.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            (RpcStatus::Ok, Some(output), None, Some(0))
        };
        RpcReply {
            v: PROTOCOL_VERSION,
            request_id: request.request_id,
            status,
            output,
            exit_code,
            error,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

fn fill_template(template: &str, rng: &mut impl Rng) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(pos) = rest.find('{') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("{n}") {
            out.push_str(&rng.random_range(1..100_000).to_string());
            rest = stripped;
        } else if let Some(stripped) = after.strip_prefix("{ts}") {
            out.push_str(&Utc::now().to_rfc3339());
            rest = stripped;
        } else {
            out.push('{');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_valid_wire_messages() {
        let agent = SimAgent::numbered("unit", 3);
        let mut rng = rand::rng();
        for _ in 0..50 {
            let event = agent.random_event(&mut rng);
            let bytes = wire_models::encode(&event).unwrap();
            let back: Event = wire_models::decode(&bytes).unwrap();
            assert_eq!(back, event);
            assert!(!back.raw_error.contains('{'));
        }
        let hb = agent.heartbeat(Duration::from_secs(10));
        wire_models::decode::<Heartbeat>(&wire_models::encode(&hb).unwrap()).unwrap();
        let inv = agent.inventory(false);
        wire_models::decode::<InventoryReport>(&wire_models::encode(&inv).unwrap()).unwrap();
    }

    #[test]
    fn template_kinds_are_valid() {
        for (kind, ..) in EVENT_TEMPLATES {
            EventKind::parse(kind).unwrap();
        }
    }

    #[test]
    fn inventory_changes_only_when_asked() {
        let agent = SimAgent::numbered("unit", 1);
        let a = agent.inventory(false).snapshot_hash();
        assert_eq!(a, agent.inventory(false).snapshot_hash());
        let b = agent.inventory(true).snapshot_hash();
        assert_ne!(a, b);
        assert_eq!(b, agent.inventory(false).snapshot_hash());
    }

    #[test]
    fn numbered_agents_are_stable() {
        assert_eq!(SimAgent::numbered("s", 1).id, SimAgent::numbered("s", 1).id);
        assert_ne!(SimAgent::numbered("s", 1).id, SimAgent::numbered("s", 2).id);
    }
}
