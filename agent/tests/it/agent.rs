use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt as _;
use natsbus::auth::Identity;
use serde_json::Value;
use test_support::Stack;
use test_support::process::ServiceProcess;
use uuid::Uuid;
use wire_models::{
    AgentId, Command, Event, InventoryReport, PROTOCOL_VERSION, RpcReply, RpcRequest, RpcStatus,
};

const TOKEN: &str = "agent-bootstrap-token-for-tests";

fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opspilot-agent"))
}

/// A host in a temporary directory: state, logs, a `systemctl` stand-in that records
/// each argv (one argument per line, a blank line after each call), a policy file.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(api: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("log")).unwrap();
        std::fs::write(root.join("log/app.log"), "an old error before the agent started\n").unwrap();
        std::fs::write(root.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(
            root.join("units"),
            "cron.service loaded active running Cron\nnginx.service loaded failed failed Web\n",
        )
        .unwrap();
        std::fs::write(root.join("vmstat"), "pgfault 1\noom_kill 0\n").unwrap();
        // A cgroup v2 tree with one unit, whose kills before the start are not news.
        std::fs::create_dir_all(root.join("cgroup/system.slice/nginx.service")).unwrap();
        for cgroup in ["cgroup/system.slice", "cgroup/system.slice/nginx.service"] {
            std::fs::write(root.join(cgroup).join("memory.events"), "oom 3\noom_kill 3\n").unwrap();
        }
        std::fs::write(root.join("machine-id"), format!("{}\n", Uuid::new_v4().simple())).unwrap();
        let systemctl = root.join("systemctl");
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\n\
                 for a in \"$@\"; do printf '%s\\n' \"$a\" >> {calls}; done\n\
                 printf '\\n' >> {calls}\n\
                 case \"$1\" in\n\
                 list-units) cat {units} ;;\n\
                 status) echo \"$5 - stand-in\"; echo '   Active: active (running)' ;;\n\
                 *) if [ \"$4\" = missing.service ]; then echo \"Unit $4 not found.\" >&2; exit 5; fi ;;\n\
                 esac\n",
                calls = root.join("calls").display(),
                units = root.join("units").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            "state_dir = \"{root}/state\"\napi = \"{api}\"\nhostname = \"agent-it\"\n\
             [labels]\nenv = \"test\"\n\
             [inventory]\ncheck_interval_secs = 1\n\
             [events]\nfilesystems = [\"{root}\"]\nfilesystem_threshold_percent = 1\nfilesystem_check_interval_secs = 1\n\
             [[events.logs]]\npath = \"{root}/log/app.log\"\npatterns = [\"(?i)error\"]\nkind = \"log_match\"\n\
             [actions]\nsystemctl = \"{root}/systemctl\"\nlog_root = \"{root}/log\"\npolicy_file = \"{root}/policy.toml\"\n\
             [host]\nmachine_id = \"{root}/machine-id\"\nproduct_uuid = \"{root}/none\"\nvmstat = \"{root}/vmstat\"\ncgroup_root = \"{root}/cgroup\"\n",
            root = root.display()
        );
        std::fs::write(root.join("agent.toml"), config).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn args<'a>(&'a self, config: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--config", config];
        args.extend_from_slice(rest);
        args
    }

    /// The argv of every `systemctl` call but the inventory's.
    fn calls(&self) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(self.path("calls")).unwrap_or_default();
        text.split("\n\n")
            .filter(|c| !c.is_empty())
            .map(|c| c.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|argv| argv.first().map(String::as_str) != Some("list-units"))
            .collect()
    }

    /// Changes one line of the configuration file.
    fn reconfigure(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.path("agent.toml")).unwrap();
        assert!(text.contains(from), "{from:?} is in the configuration");
        std::fs::write(self.path("agent.toml"), text.replace(from, to)).unwrap();
    }

    /// The active conditions the agent saved.
    fn conditions(&self) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(self.path("state/conditions.json")) else { return Vec::new() };
        let saved: Value = serde_json::from_str(&text).unwrap();
        saved["active"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    }

    fn append_log(&self, text: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path("log/app.log")).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

async fn enroll(host: &Host, token: bool) -> std::process::Output {
    let config = host.path("agent.toml").display().to_string();
    let token_file = host.path("token").display().to_string();
    let mut args = vec!["enroll"];
    if token {
        args.extend(["--token-file", token_file.as_str()]);
    }
    tokio::process::Command::new(agent_binary())
        .args(host.args(&config, &args))
        .env_clear()
        .output()
        .await
        .unwrap()
}

fn run_agent(host: &Host) -> ServiceProcess {
    let config = host.path("agent.toml").display().to_string();
    ServiceProcess::spawn(
        &agent_binary(),
        &[("OPSPILOT_AGENT_LOG", "info".to_owned())],
        &host.args(&config, &["run"]),
    )
}

async fn start_gateway(stack: &Stack) -> (ServiceProcess, String) {
    start_gateway_with(stack, &[]).await
}

async fn start_gateway_with(stack: &Stack, extra: &[(&'static str, &str)]) -> (ServiceProcess, String) {
    let js = stack.jetstream().await;
    natsbus::ensure_topology(&js, &stack.topology).await.unwrap();
    let port = test_support::free_port();
    let mut env = stack.env_for(&Identity::ApiGateway);
    env.extend([
        ("JWT_SECRET", "agent-tests-jwt-secret-0123456789abcdef".to_owned()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("BOOTSTRAP_TOKEN_FILE", stack.secret_file("bootstrap-token", TOKEN)),
        ("RATE_LIMIT_ENROLL", "0".to_owned()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let mut gateway = ServiceProcess::spawn(&test_support::otlp::binary("api-gateway"), &env, &[]);
    gateway.wait_for_line("api-gateway ready", Duration::from_secs(30)).await;
    (gateway, format!("http://127.0.0.1:{port}"))
}

/// Every message the agent published on `subject` so far.
async fn messages(stack: &Stack, stream: &str, subject: String) -> Vec<async_nats::jetstream::Message> {
    let js = stack.jetstream().await;
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Vec::new();
    }
    let mut batch =
        consumer.fetch().max_messages(usize::try_from(pending).unwrap()).messages().await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = batch.next().await {
        out.push(msg.unwrap());
    }
    out
}

async fn events(stack: &Stack, id: &AgentId) -> Vec<Event> {
    let subject = stack.topology.subjects.agent_events(id);
    messages(stack, &stack.topology.events_stream, subject)
        .await
        .iter()
        .map(|m| {
            let event: Event = wire_models::decode(&m.payload).unwrap();
            let msg_id = m.headers.as_ref().and_then(|h| h.get(wire_models::HEADER_MSG_ID)).unwrap();
            assert_eq!(msg_id.as_str(), event.event_id.to_string(), "Nats-Msg-Id is the event id");
            event
        })
        .collect()
}

async fn rpc(client: &async_nats::Client, stack: &Stack, id: &AgentId, command: Command) -> RpcReply {
    let request = RpcRequest {
        v: PROTOCOL_VERSION,
        request_id: Uuid::now_v7(),
        command,
        issued_at: chrono::Utc::now(),
        timeout_ms: 5000,
    };
    raw_rpc(client, stack, id, wire_models::encode(&request).unwrap()).await
}

async fn raw_rpc(client: &async_nats::Client, stack: &Stack, id: &AgentId, payload: Vec<u8>) -> RpcReply {
    let reply = client.request(stack.topology.subjects.rpc(id), payload.into()).await.unwrap();
    wire_models::decode(&reply.payload).unwrap()
}

fn service(name: &str) -> wire_models::ServiceName {
    wire_models::ServiceName::parse(name).unwrap()
}

fn agent_id(host: &Host) -> AgentId {
    let text = std::fs::read_to_string(host.path("state/enrollment.json")).unwrap();
    let enrollment: Value = serde_json::from_str(&text).unwrap();
    AgentId::parse(enrollment["agent_id"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_agent_enrolls_reports_this_host_turns_its_problems_into_incidents_and_answers_actions() {
    test_support::init_tracing();
    let stack = Stack::start().await;
    let (_gateway, api) = start_gateway(&stack).await;
    let mut env = stack.env_for(&Identity::EventIngestor);
    env.push(("ADMIN_ADDR", "127.0.0.1:0".to_owned()));
    let mut ingestor = ServiceProcess::spawn(&test_support::otlp::binary("event-ingestor"), &env, &[]);
    ingestor.wait_for_line("event-ingestor ready", Duration::from_secs(30)).await;
    let host = Host::new(&api);

    // Enrollment: a key made here, state files private.
    let out = enroll(&host, true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = agent_id(&host);
    for name in ["identity.seed", "enrollment.json", "nats.creds"] {
        let mode = std::fs::metadata(host.path(&format!("state/{name}"))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    // `check` validates the configuration, the state and the connection.
    let config = host.path("agent.toml").display().to_string();
    let check = |args: Vec<String>| async move {
        tokio::process::Command::new(agent_binary()).args(args).env_clear().output().await.unwrap()
    };
    let out = check(vec!["--config".into(), config.clone(), "check".into()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains(&format!("enrolled as {id}")), "{stdout}");
    assert!(stdout.contains("connected to nats"), "{stdout}");
    assert!(stdout.contains(&format!("ok   api {api} answers")), "{stdout}");
    std::fs::write(host.path("bad.toml"), "[events]\nfilesystem_threshold_percent = 200\n").unwrap();
    let bad = host.path("bad.toml").display().to_string();
    let out = check(vec!["--config".into(), bad, "check".into()]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("filesystem_threshold_percent"));

    // Online: a heartbeat in the bucket under its own key.
    let mut agent = run_agent(&host);
    agent.wait_for_line("opspilot-agent running", Duration::from_secs(20)).await;
    let kv = stack.jetstream().await.get_key_value(&stack.topology.agents_bucket).await.unwrap();
    test_support::eventually(Duration::from_secs(10), "a heartbeat", || {
        let kv = kv.clone();
        let id = id.clone();
        async move { kv.get(id.as_str()).await.ok().flatten() }
    })
    .await;

    // This machine's real inventory, with the configured labels and the units.
    let inventory = test_support::eventually(Duration::from_secs(10), "an inventory", || async {
        let subject = stack.topology.subjects.inventory(&id);
        let msgs = messages(&stack, &stack.topology.inventory_stream, subject).await;
        msgs.first().map(|m| wire_models::decode::<InventoryReport>(&m.payload).unwrap())
    })
    .await;
    let os = opspilot_agent::inventory::os_info(Path::new("/etc/os-release"));
    assert_eq!(inventory.snapshot.os, os);
    assert_eq!(inventory.snapshot.hostname, "agent-it");
    assert_eq!(inventory.snapshot.meta["env"], "test");
    let units: Vec<_> =
        inventory.snapshot.services.iter().map(|s| (s.name.as_str(), s.state.as_str())).collect();
    assert_eq!(units, [("cron", "running"), ("nginx", "failed")]);
    if Path::new("/var/lib/dpkg/status").exists() {
        assert!(inventory.snapshot.packages.iter().any(|p| p.name == "dpkg"), "dpkg lists itself");
    }

    // Events: the filesystem over its (1 %) threshold, the failed unit, an OOM kill in
    // nginx's cgroup and one outside any cgroup, a matching log line (the old one before
    // the start is not reported, nor a line that does not match).
    host.append_log("all good\nERROR: payment backend unreachable\n");
    // In the kernel's order: the victim's cgroup, then its ancestors.
    for cgroup in ["cgroup/system.slice/nginx.service", "cgroup/system.slice"] {
        std::fs::write(host.path(cgroup).join("memory.events"), "oom 4\noom_kill 4\n").unwrap();
    }
    std::fs::write(host.path("vmstat"), "pgfault 1\noom_kill 2\n").unwrap();
    let seen = test_support::eventually(Duration::from_secs(15), "five events", || async {
        let events = events(&stack, &id).await;
        (events.len() >= 5).then_some(events)
    })
    .await;
    let mut sources: Vec<_> = seen.iter().map(|e| (e.kind.as_str().to_owned(), e.source.clone())).collect();
    sources.sort();
    let mut want = vec![
        ("disk_full".to_owned(), format!("filesystem:{}", host.dir.path().display())),
        ("log_match".to_owned(), format!("log:{}", host.path("log/app.log").display())),
        ("oom".to_owned(), "kernel:oom".to_owned()),
        ("oom".to_owned(), "oom:nginx.service".to_owned()),
        ("service_down".to_owned(), "systemd:nginx".to_owned()),
    ];
    want.sort();
    assert_eq!(sources, want);
    let line = seen.iter().find(|e| e.kind.as_str() == "log_match").unwrap();
    assert_eq!(line.raw_error, "ERROR: payment backend unreachable");
    // ... and the backend turns them into incidents.
    let incidents: Vec<(String, String)> =
        test_support::eventually(Duration::from_secs(15), "incidents", || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT type, source FROM incidents WHERE agent_id = $1 ORDER BY type, source",
            )
            .bind(id.as_str())
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
            (rows.len() >= 5).then_some(rows)
        })
        .await;
    assert_eq!(incidents, want);

    // Every allow-listed command, answered; unit names reach systemctl as one argument.
    let client = stack.client_as(&Identity::ApiGateway).await;
    let reply = rpc(&client, &stack, &id, Command::Ping).await;
    assert_eq!((reply.status, reply.output.as_deref()), (RpcStatus::Ok, Some("pong")));
    let odd = "getty@tty1:x-y.service";
    for (command, verb) in [
        (Command::ServiceStatus { service: service(odd) }, "status"),
        (Command::StartService { service: service(odd) }, "start"),
        (Command::StopService { service: service(odd) }, "stop"),
        (Command::RestartService { service: service(odd) }, "restart"),
    ] {
        let reply = rpc(&client, &stack, &id, command).await;
        assert_eq!(reply.status, RpcStatus::Ok, "{verb}: {reply:?}");
        let last = host.calls().pop().unwrap();
        assert_eq!(last.first().map(String::as_str), Some(verb));
        assert_eq!(last[last.len() - 2..], ["--".to_owned(), odd.to_owned()], "{last:?}");
    }
    let reply =
        rpc(&client, &stack, &id, Command::RestartService { service: service("missing.service") }).await;
    assert_eq!(reply.error.map(|e| e.code), Some("unknown_service".to_owned()));
    let path = wire_models::LogPath::parse("/var/log/app.log").unwrap();
    let reply = rpc(&client, &stack, &id, Command::TailLog { path, lines: 1 }).await;
    assert_eq!(reply.output.as_deref(), Some("ERROR: payment backend unreachable"));
    let before = messages(&stack, &stack.topology.inventory_stream, stack.topology.subjects.inventory(&id))
        .await
        .len();
    let reply = rpc(&client, &stack, &id, Command::CollectInventory).await;
    assert_eq!(reply.status, RpcStatus::Ok);
    test_support::eventually(Duration::from_secs(10), "a requested inventory", || async {
        let now =
            messages(&stack, &stack.topology.inventory_stream, stack.topology.subjects.inventory(&id)).await;
        (now.len() > before).then_some(())
    })
    .await;
    // A change on the host is sent without being asked (the check runs every second).
    let inventories = || async {
        let msgs =
            messages(&stack, &stack.topology.inventory_stream, stack.topology.subjects.inventory(&id)).await;
        msgs.iter().map(|m| wire_models::decode::<InventoryReport>(&m.payload).unwrap()).collect::<Vec<_>>()
    };
    let before = inventories().await.len();
    std::fs::write(host.path("units"), "cron.service loaded inactive dead Cron\n").unwrap();
    let changed = test_support::eventually(Duration::from_secs(10), "a changed inventory", || async {
        let all = inventories().await;
        (all.len() > before).then(|| all.last().cloned().unwrap())
    })
    .await;
    let units: Vec<_> =
        changed.snapshot.services.iter().map(|s| (s.name.as_str(), s.state.as_str())).collect();
    assert_eq!(units, [("cron", "dead")]);

    // Outside the allow-list: refused before anything runs.
    let calls = host.calls().len();
    let hostile = format!(
        r#"{{"v":1,"request_id":"{}","command":{{"command":"restart_service","params":{{"service":"nginx; rm -rf /"}}}},"issued_at":"2026-11-26T12:00:00Z","timeout_ms":1000}}"#,
        Uuid::now_v7()
    );
    let reply = raw_rpc(&client, &stack, &id, hostile.into_bytes()).await;
    assert_eq!(reply.error.map(|e| e.code), Some("bad_request".to_owned()));
    // The local policy refuses mutating commands the backend allows.
    std::fs::write(host.path("policy.toml"), "refuse_mutating = true\n").unwrap();
    let reply = rpc(&client, &stack, &id, Command::RestartService { service: service("nginx") }).await;
    assert_eq!(reply.error.map(|e| e.code), Some("not_permitted".to_owned()));
    let reply = rpc(&client, &stack, &id, Command::ServiceStatus { service: service("nginx") }).await;
    assert_eq!(reply.status, RpcStatus::Ok);
    assert_eq!(host.calls().len(), calls + 1, "only the status ran");
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn spooled_events_survive_an_outage_and_a_restart_and_only_the_key_gets_the_identity_back() {
    test_support::init_tracing();
    let mut stack = Stack::start().await;
    let (_gateway, api) = start_gateway(&stack).await;
    let host = Host::new(&api);
    let out = enroll(&host, true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = agent_id(&host);
    let mut agent = run_agent(&host);
    agent.wait_for_line("opspilot-agent running", Duration::from_secs(20)).await;
    // The start-up events (the filesystem, the failed unit) are through.
    let seen = test_support::eventually(Duration::from_secs(15), "the start-up events", || async {
        let events = events(&stack, &id).await;
        (events.len() >= 2).then_some(events)
    })
    .await;

    // A NATS outage across an agent restart: events written meanwhile are spooled on
    // disk and published once NATS is back, each exactly once.
    stack.nats.kill().await;
    host.append_log("error one\nerror two\nerror three\n");
    test_support::eventually(Duration::from_secs(10), "the lines spooled", || async {
        let spooled = std::fs::read_dir(host.path("state/spool")).unwrap().count();
        (spooled >= 3).then_some(())
    })
    .await;
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
    let mut agent = run_agent(&host);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.nats.start_again().await;
    let after = test_support::eventually(Duration::from_secs(20), "the spooled events", || async {
        let events = events(&stack, &id).await;
        (events.len() >= seen.len() + 3).then_some(events)
    })
    .await;
    let lines: Vec<_> =
        after.iter().filter(|e| e.kind.as_str() == "log_match").map(|e| e.raw_error.as_str()).collect();
    assert_eq!(lines, ["error one", "error two", "error three"]);
    let mut ids: Vec<_> = after.iter().map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), after.len(), "no event twice");
    // Everything acknowledged leaves the spool (the restarted agent's own start-up
    // events included).
    test_support::eventually(Duration::from_secs(10), "the spool drained", || async {
        (std::fs::read_dir(host.path("state/spool")).unwrap().count() == 0).then_some(())
    })
    .await;
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));

    // Losing the enrollment but keeping the key: enrolling again proves the key, and
    // gets the same id without a token.
    std::fs::remove_file(host.path("state/enrollment.json")).unwrap();
    std::fs::remove_file(host.path("state/nats.creds")).unwrap();
    let out = enroll(&host, false).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent_id(&host), id);
    // Losing the key too: the token alone does not get the identity back.
    std::fs::remove_dir_all(host.path("state")).unwrap();
    let out = enroll(&host, true).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("identity-proof-required"), "{stderr}");
}

#[tokio::test]
async fn credentials_are_renewed_before_they_expire_and_the_agent_stays_connected() {
    test_support::init_tracing();
    let stack = Stack::start().await;
    let extra = [("AGENT_CREDENTIALS_TTL", "6s"), ("AGENT_HEARTBEAT_INTERVAL", "1")];
    let (_gateway, api) = start_gateway_with(&stack, &extra).await;
    let host = Host::new(&api);
    let out = enroll(&host, true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let enrolled_at = std::time::Instant::now();
    let id = agent_id(&host);
    let mut agent = run_agent(&host);
    agent.wait_for_line("credentials renewed", Duration::from_secs(15)).await;
    // Past the first credentials' expiry the server has dropped that connection: the
    // agent is still heard only if it reconnected with the renewed ones.
    tokio::time::sleep(
        (enrolled_at + Duration::from_secs(8)).saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    let kv = stack.jetstream().await.get_key_value(&stack.topology.agents_bucket).await.unwrap();
    let seq = |entry: Option<bytes::Bytes>| {
        wire_models::decode::<wire_models::Heartbeat>(&entry.unwrap()).unwrap().seq
    };
    let before = seq(kv.get(id.as_str()).await.unwrap());
    test_support::eventually(Duration::from_secs(10), "heartbeats after the first expiry", || {
        let (kv, id) = (kv.clone(), id.clone());
        async move { (seq(kv.get(id.as_str()).await.unwrap()) >= before + 2).then_some(()) }
    })
    .await;
    assert!(
        agent.output().iter().any(|l| l.contains("reconnected to nats")),
        "the server dropped the expired connection and the agent came back"
    );
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
}

/// A restarted agent does not report again a condition it reported that still holds;
/// one that cleared (while it ran or while it was down) is reported when it comes back.
///
/// Why the agent must do this itself: the backend's de-duplication is by `event_id`
/// (JetStream's `Nats-Msg-Id` within its window, then the ingestion ledger), which
/// only drops a retried publish of the same event, and a condition reported again after
/// a restart is a new event with a new id. The event-ingestor does fold events with the
/// same fingerprint (agent, kind, source and the normalised `raw_error`) into the
/// incident that is still open, but only counts them there (`occurrences`), and once
/// that incident is resolved the same event opens a new one. Only the agent can tell
/// "still the same condition" from "it happened again".
#[tokio::test]
async fn a_restarted_agent_does_not_report_conditions_that_still_hold_again() {
    test_support::init_tracing();
    let stack = Stack::start().await;
    let (_gateway, api) = start_gateway(&stack).await;
    let host = Host::new(&api);
    let out = enroll(&host, true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = agent_id(&host);
    let disk = format!("filesystem:{}", host.dir.path().display());
    let sources = |events: &[Event]| events.iter().map(|e| e.source.clone()).collect::<Vec<_>>();

    // The filesystem over its (1 %) threshold and the failed unit: one event each.
    let mut agent = run_agent(&host);
    let first = test_support::eventually(Duration::from_secs(15), "the two conditions", || async {
        let events = events(&stack, &id).await;
        (events.len() >= 2 && host.conditions().len() == 2).then_some(events)
    })
    .await;
    let mut want = vec![disk.clone(), "systemd:nginx".to_owned()];
    let mut got = sources(&first);
    got.sort();
    assert_eq!(got, want);
    assert_eq!(host.conditions(), want);

    // Restarted while both still hold: checked again, not reported again.
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
    let mut agent = run_agent(&host);
    agent.wait_for_line("inventory sent", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // filesystem checks every second
    assert_eq!(sources(&events(&stack, &id).await).len(), 2, "no second event after a restart");

    // The unit recovers and fails again: a new event.
    std::fs::write(host.path("units"), "nginx.service loaded active running Web\n").unwrap();
    test_support::eventually(Duration::from_secs(10), "the unit's condition cleared", || async {
        (host.conditions() == [disk.clone()]).then_some(())
    })
    .await;
    std::fs::write(host.path("units"), "nginx.service loaded failed failed Web\n").unwrap();
    let events_now = test_support::eventually(Duration::from_secs(10), "the unit failing again", || async {
        let events = events(&stack, &id).await;
        (events.len() >= 3).then_some(events)
    })
    .await;
    assert_eq!(events_now[2].source, "systemd:nginx");

    // The filesystem drops under the threshold while the agent is down: forgotten, so
    // going over again is new.
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
    host.reconfigure("filesystem_threshold_percent = 1\n", "filesystem_threshold_percent = 100\n");
    let mut agent = run_agent(&host);
    test_support::eventually(Duration::from_secs(10), "the filesystem's condition forgotten", || async {
        (host.conditions() == ["systemd:nginx"]).then_some(())
    })
    .await;
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
    host.reconfigure("filesystem_threshold_percent = 100\n", "filesystem_threshold_percent = 1\n");
    let mut agent = run_agent(&host);
    let all = test_support::eventually(Duration::from_secs(10), "the filesystem over again", || async {
        let events = events(&stack, &id).await;
        (events.len() >= 4).then_some(events)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all_now = events(&stack, &id).await;
    assert_eq!(all_now.len(), 4, "{:?}", sources(&all_now));
    assert_eq!(all[3].source, disk);
    want.sort();
    assert_eq!(host.conditions(), want);
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn check_probes_the_api_and_fails_when_it_does_not_answer() {
    test_support::init_tracing();
    let stack = Stack::start().await;
    let (mut gateway, api) = start_gateway(&stack).await;
    let host = Host::new(&api);
    let out = enroll(&host, true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = host.path("agent.toml").display().to_string();
    let check = || async {
        tokio::process::Command::new(agent_binary())
            .args(["--config", config.as_str(), "check"])
            .env_clear()
            .output()
            .await
            .unwrap()
    };
    let out = check().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("ok   api {api} answers\n")), "{stdout}");

    // Nothing listens on the API's port any more.
    gateway.signal("TERM");
    gateway.wait(Duration::from_secs(20)).await;
    let out = check().await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("ok   enrolled as") && !stdout.contains("ok   api"), "{stdout}");
    assert!(stderr.contains(&format!("the api {api} does not answer")), "{stderr}");
}

#[tokio::test]
async fn an_inventory_over_the_size_limit_is_sent_cut_and_marked() {
    test_support::init_tracing();
    let stack = Stack::start().await;
    let (_gateway, api) = start_gateway(&stack).await;
    let host = Host::new(&api);
    // 20000 packages with long names: several times what an inventory may carry.
    let mut status = String::new();
    for i in 0..20_000 {
        let name = format!("package-{i:05}-{}", "x".repeat(180));
        status.push_str(&format!("Package: {name}\nStatus: install ok installed\nVersion: 1.0-{i}\n\n"));
    }
    std::fs::write(host.path("dpkg-status"), status).unwrap();
    let mut config = std::fs::read_to_string(host.path("agent.toml")).unwrap();
    assert!(config.trim_end().ends_with(&format!("cgroup_root = \"{}\"", host.path("cgroup").display())));
    config.push_str(&format!("dpkg_status = \"{}\"\n", host.path("dpkg-status").display()));
    std::fs::write(host.path("agent.toml"), config).unwrap();
    let out = enroll(&host, true).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = agent_id(&host);

    let mut agent = run_agent(&host);
    let (size, inventory) = test_support::eventually(Duration::from_secs(20), "an inventory", || async {
        let subject = stack.topology.subjects.inventory(&id);
        let msgs = messages(&stack, &stack.topology.inventory_stream, subject).await;
        msgs.first().map(|m| (m.payload.len(), wire_models::decode::<InventoryReport>(&m.payload).unwrap()))
    })
    .await;
    assert!(size <= 512 * 1024, "{size} bytes");
    let kept = inventory.snapshot.packages.len();
    assert!(kept > 1000 && kept < 20_000, "{kept} packages kept");
    assert!(inventory.snapshot.packages[0].name.starts_with("package-00000-"));
    let marker = &inventory.snapshot.extra["truncated"];
    assert_eq!(
        (marker["packages"]["kept"].as_u64(), marker["packages"]["total"].as_u64()),
        (Some(kept as u64), Some(20_000))
    );
    assert_eq!(marker["services"]["kept"], marker["services"]["total"], "units kept whole");
    // Said once, not at every check (every second here).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let warnings = agent.output().iter().filter(|l| l.contains("over the protocol's size limit")).count();
    assert_eq!(warnings, 1);
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)).await, Some(0));
}

/// `sudo opspilot-agent enroll` into the packaged state directory (owned by the
/// service's user): the files are that user's, so the service can read them.
#[tokio::test]
async fn enrolling_as_root_gives_the_state_to_the_owner_of_its_directory() {
    use std::os::unix::fs::MetadataExt as _;
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: the ownership decision is tested in the agent's state module");
        return;
    }
    test_support::init_tracing();
    let stack = Stack::start().await;
    let (_gateway, api) = start_gateway(&stack).await;
    let host = Host::new(&api);
    std::fs::create_dir(host.path("state")).unwrap();
    std::os::unix::fs::chown(host.path("state"), Some(65534), Some(65534)).unwrap();
    let out = enroll(&host, true).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("state files owned by uid 65534 gid 65534"), "{stdout}");
    for name in ["identity.seed", "enrollment.json", "nats.creds"] {
        let meta = std::fs::metadata(host.path(&format!("state/{name}"))).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (65534, 65534, 0o600), "{name}");
    }
}
