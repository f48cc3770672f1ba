//! The operator console in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against the real gateway and its stack. Chromium and
//! chromedriver come from `scripts/dev-services.sh --test`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_sim::RpcBehaviour;
use chrono::Utc;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use wire_models::{EventKind, IncidentCreated, PROTOCOL_VERSION, PresenceChanged, PresenceState, Severity};

use crate::helpers::*;

/// How long the page may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(15);

/// A chromedriver of this test's own, on a free port, and a headless browser session.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _group: ProcessGroup,
}

/// Chromedriver runs in a process group of its own, with the browser it starts: a test
/// that fails (panics) before [`Browser::stop`] still ends both, by this id.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{id}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Browser {
    async fn start() -> Self {
        let port = test_support::free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .expect("chromedriver is not installed: run scripts/dev-services.sh --test");
        let group = ProcessGroup(driver.id());
        let url = format!("http://127.0.0.1:{port}");
        test_support::eventually(Duration::from_secs(10), "chromedriver listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        let capabilities = test_support::browser::chromium_capabilities(1280, 1000);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a chromium session through chromedriver");
        Self { client, driver, _group: group }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Waits for an element matching `css`.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no {css} within {WAIT:?} ({e}); the page: {}", self.dump().await),
        }
    }

    /// Where the page is and what it shows, for a failure message.
    async fn dump(&self) -> String {
        let script = "return location.href + ' ' + document.body.innerText;";
        self.client
            .execute(script, vec![])
            .await
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("(unreadable: {e})"))
    }

    /// The text of the first element matching `css`, or None when there is none.
    async fn text(&self, css: &str) -> Option<String> {
        let script = "const el = document.querySelector(arguments[0]); return el ? el.textContent : null;";
        match self.client.execute(script, vec![json!(css)]).await.unwrap() {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// Waits until the element matching `css` contains `expected`.
    async fn wait_text(&self, css: &str, expected: &str) {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if text.as_deref().is_some_and(|t| t.contains(expected)) {
                return;
            }
            if started.elapsed() > WAIT {
                panic!(
                    "{css} never showed {expected:?} within {WAIT:?}; it shows {text:?}; the page: {}",
                    self.dump().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = self.element(css).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Clicks the element matching `css`. A page that re-renders on a live update
    /// replaces its elements: one found just before that is stale, so it is looked up
    /// again, as a person's second click would find the new button.
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            match self.element(css).await.click().await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
        panic!("{css} went stale five times in a row; the page: {}", self.dump().await);
    }

    /// Logs in through the form as one of the helpers' users.
    async fn log_in(&self, base: &str, email: &str) {
        self.goto(&format!("{base}/")).await;
        self.type_into("#email", email).await;
        // From the keyboard: Enter in the password field submits the form.
        self.type_into("#password", &format!("{PASSWORD}\u{E007}")).await;
        self.wait_text("#who-email", email).await;
    }

    /// Each page in `pages` marked when it first showed its data (`make bench` times
    /// the console by these marks).
    async fn assert_marked(&self, pages: &[&str]) {
        let script = "return performance.getEntriesByType('mark').map(m => m.name);";
        let marks = self.client.execute(script, vec![]).await.unwrap();
        let marks: Vec<String> = serde_json::from_value(marks).unwrap();
        for page in pages {
            assert!(marks.contains(&format!("opspilot:{page}")), "no mark for {page}: {marks:?}");
        }
    }

    /// Every resource the page loaded came from the gateway: nothing left localhost.
    async fn assert_only_from(&self, base: &str) {
        let names = self
            .client
            .execute(
                "return performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation')).map(e => e.name);",
                vec![],
            )
            .await
            .unwrap();
        let names: Vec<String> = serde_json::from_value(names).unwrap();
        assert!(
            names.iter().any(|n| n.contains("/console/app.js")),
            "the console's script loaded: {names:?}"
        );
        let foreign: Vec<_> = names.iter().filter(|n| !n.starts_with(&format!("{base}/"))).collect();
        assert!(foreign.is_empty(), "requests left the gateway's origin: {foreign:?}");
    }
}

/// Publishes on the change feed as the presence tracker and the ingestor do.
async fn publish<T: wire_models::WireMessage>(api: &Api, subject: String, message: &T) {
    let client = api.stack.client().await;
    natsbus::publish(&client, subject, message).await.unwrap();
    client.flush().await.unwrap();
}

async fn presence(api: &Api, agent: &wire_models::AgentId, state: PresenceState) {
    let message = PresenceChanged {
        v: PROTOCOL_VERSION,
        agent_id: agent.clone(),
        state,
        changed_at: Utc::now(),
        last_seen_at: Some(Utc::now()),
        threshold_secs: 30,
        reason: "heartbeat".into(),
    };
    publish(api, api.stack.topology.subjects.presence_changed(agent), &message).await;
}

/// An incident of `agent` that suggests restarting nginx.
async fn incident_suggesting_a_restart(api: &Api, agent: &str, raw_error: &str) -> i64 {
    let id = api.incident(agent, "service_down", raw_error).await;
    sqlx::query(
        "UPDATE incidents SET suggested_action = $2, ai_analysis = 'nginx stopped; restart it', status = 'analyzed' WHERE id = $1",
    )
    .bind(id)
    .bind(json!({"command": "restart_service", "params": {"service": "nginx"}}))
    .execute(&api.stack.db.pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn console_is_served_offline_with_a_strict_policy() {
    let api = start(&[]).await;
    let page = api.http.get(format!("{}/", api.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "the page names no other origin");
    assert!(!html.contains("<script>"), "no inline script");

    let script = api.http.get(format!("{}/console/app.js", api.base)).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    let etag = script.headers()["etag"].clone();
    let again = api
        .http
        .get(format!("{}/console/app.js", api.base))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304, "an unchanged file is not sent again");

    let (status, body) = api.call(reqwest::Method::GET, "/console/nothing.js", None, None).await;
    assert_problem(status, &body, reqwest::StatusCode::NOT_FOUND, "not-found");
    let (status, _) = api.call(reqwest::Method::GET, "/console/../Cargo.toml", None, None).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    // The API and the probes are where they were.
    let (status, _) = api.get("/api/v1/auth/me", &api.viewer).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, _) = api.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    api.stop().await;
}

#[tokio::test]
async fn operator_sees_the_fleet_go_offline_and_back_live() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-fleet", 2).await;
    let agent = fleet.agents()[0].clone();
    let browser = Browser::start().await;

    browser.log_in(&api.base, "operator@example.com").await;
    browser.wait_text("#who-role", "operator").await;
    let row = format!("tr[data-agent-id=\"{}\"]", agent.id);
    browser.wait_text(&format!("{row} td"), &agent.hostname).await;
    browser.wait_text(&format!("{row} .status"), "online").await;
    browser.wait_text("#live", "Live").await;

    presence(&api, &agent.id, PresenceState::Offline).await;
    browser.wait_text(&format!("{row} .status"), "offline").await;
    presence(&api, &agent.id, PresenceState::Online).await;
    browser.wait_text(&format!("{row} .status"), "online").await;

    // The hostname filter asks the API and shows what it answers.
    browser.type_into("#hostname", "no-such-host").await;
    browser.click("#apply").await;
    browser.wait_text("#fleet", "No agent matches these filters").await;

    browser.assert_only_from(&api.base).await;
    browser.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn operator_finds_an_incident_and_runs_its_suggested_action() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-run", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let id = incident_suggesting_a_restart(&api, &agent, "nginx exited with status 137").await;
    api.incident(&agent, "disk_full", "/var is full").await;
    let browser = Browser::start().await;

    browser.log_in(&api.base, "operator@example.com").await;
    browser.click("a[data-nav=incidents]").await;
    browser.wait_text("#count-total", "2").await;
    browser.type_into("#q", "status 137").await;
    browser.click("#apply").await;
    browser.wait_text("#count-total", "1").await;
    browser.wait_text(&format!("tr[data-incident-id=\"{id}\"]"), "nginx exited").await;
    assert_eq!(browser.text("#incidents tbody").await.map(|t| t.contains("/var is full")), Some(false));

    // A new incident that matches the search appears without a reload.
    let fresh = api.incident(&agent, "service_down", "status 137 again").await;
    let created = IncidentCreated {
        v: PROTOCOL_VERSION,
        incident_id: fresh,
        agent_id: wire_models::AgentId::parse(&agent).unwrap(),
        kind: EventKind::parse("service_down").unwrap(),
        severity: Severity::Critical,
        is_critical: true,
        fingerprint: "f".repeat(64),
        created_at: Utc::now(),
    };
    publish(&api, api.stack.topology.subjects.incident_created(), &created).await;
    browser.wait_text(&format!("tr[data-incident-id=\"{fresh}\"]"), "status 137 again").await;

    browser.click(&format!("tr[data-incident-id=\"{id}\"] a")).await;
    browser.wait_text("#raw-error", "nginx exited with status 137").await;
    browser.wait_text("#page-title", "service_down").await;
    browser.wait_text("#analysis", "restart it").await;
    // Escape cancels the confirmation: nothing runs.
    browser.click("#run-action").await;
    browser.element("#confirm[open]").await;
    browser.element("#confirm-cancel").await.send_keys("\u{E00C}").await.unwrap();
    browser.client.wait().at_most(WAIT).for_element(Locator::Css("#confirm:not([open])")).await.unwrap();
    assert!(api.audit_outcomes(&agent).await.is_empty(), "a cancelled action ran");
    browser.click("#run-action").await;
    // The dialog shows exactly what will run.
    browser.wait_text("#confirm-command", "restart_service").await;
    browser.wait_text("#confirm-params", "\"service\": \"nginx\"").await;
    browser.wait_text("#confirm-agent", &agent).await;
    browser.click("#confirm-run").await;
    browser.wait_text("#reply-output", "restarted nginx").await;
    browser.wait_text("#reply-status", "ok").await;
    let audit = api.audit_outcomes(&agent).await;
    assert_eq!(audit, vec![("execute_suggested".to_owned(), "ok".to_owned())]);

    browser.click("#acknowledge").await;
    browser.wait_text("#incident-status", "acknowledged").await;

    browser.assert_marked(&["fleet", "incidents", "incidents-summary", "incident"]).await;
    browser.assert_only_from(&api.base).await;
    browser.stop().await;
    stop.cancel();
    api.stop().await;
}

#[tokio::test]
async fn viewer_is_not_offered_the_actions() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-view", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let id = incident_suggesting_a_restart(&api, &agent, "nginx exited for the viewer").await;
    let browser = Browser::start().await;

    browser.log_in(&api.base, "viewer@example.com").await;
    browser.wait_text("#who-role", "viewer").await;
    browser.goto(&format!("{}/#/incidents/{id}", api.base)).await;
    browser.wait_text("#raw-error", "nginx exited for the viewer").await;
    browser.wait_text("#suggested-command", "restart_service").await;
    for control in ["#run-action", "#analyze", "#acknowledge", "#resolve"] {
        assert_eq!(browser.text(control).await, None, "a viewer is offered {control}");
    }

    // Logging out forgets the token: the console asks to log in again.
    browser.click("#logout").await;
    browser.element("#email").await;
    let stored = browser.client.execute("return sessionStorage.length;", vec![]).await.unwrap();
    assert_eq!(stored, json!(0));
    browser.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_dropped_stream_says_so_and_resumes_where_it_left_off() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-drop", 2).await;
    let (first, second) = (fleet.agents()[0].clone(), fleet.agents()[1].clone());
    // The browser reaches the gateway through a proxy the test can cut.
    let proxy = test_support::TcpProxy::start(api.base.trim_start_matches("http://").to_owned()).await;
    let origin = format!("http://127.0.0.1:{}", proxy.port());
    let browser = Browser::start().await;

    browser.log_in(&origin, "operator@example.com").await;
    let status = |agent: &agent_sim::SimAgent| format!("tr[data-agent-id=\"{}\"] .status", agent.id);
    browser.wait_text(&status(&first), "online").await;
    browser.wait_text("#live", "Live").await;
    // An event the page has seen: it resumes after it.
    presence(&api, &second.id, PresenceState::Offline).await;
    browser.wait_text(&status(&second), "offline").await;

    proxy.cut();
    browser.wait_text("#live", "Connection lost, reconnecting").await;
    presence(&api, &first.id, PresenceState::Offline).await;
    proxy.restore();
    browser.wait_text("#live", "Live").await;
    // What happened while the connection was down arrives once it is back.
    browser.wait_text(&status(&first), "offline").await;

    browser.assert_only_from(&origin).await;
    browser.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn reloading_again_and_again_never_waits_for_a_connection() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-reload", 1).await;
    let row = format!("tr[data-agent-id=\"{}\"] .status", fleet.agents()[0].id);
    let browser = Browser::start().await;

    browser.log_in(&api.base, "operator@example.com").await;
    browser.wait_text("#live", "Live").await;
    // A browser allows six connections to a host. Were a reloaded page's live stream
    // left open, the seventh reload would wait for one of them to time out.
    for n in 0..9 {
        let started = Instant::now();
        browser.goto(&format!("{}/?reload={n}#/fleet", api.base)).await;
        browser.wait_text(&row, "online").await;
        browser.wait_text("#live", "Live").await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "reload {n} took {took:?}");
    }

    browser.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn operator_analyzes_again_runs_only_what_was_shown_and_resolves() {
    let api = start(&[]).await;
    let (analyzer, stop_analyzer) = start_analyzer(&api.stack, &[]).await;
    let fleet = api.online_fleet("console-analyze", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let stop_rpc = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let id = api.nginx_incident(&agent).await;
    let browser = Browser::start().await;

    browser.log_in(&api.base, "operator@example.com").await;
    browser.goto(&format!("{}/#/incidents/{id}", api.base)).await;
    browser.wait_text("#incident", "No suggested action").await;
    browser.click("#analyze").await;
    browser.wait_text("#analysis-status", "ok").await;
    browser.wait_text("#suggested-command", "restart_service").await;

    // Analyzed again elsewhere after the page showed it: what was shown does not run.
    sqlx::query("UPDATE incidents SET suggested_action = $2 WHERE id = $1")
        .bind(id)
        .bind(json!({"command": "stop_service", "params": {"service": "nginx"}}))
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    browser.click("#run-action").await;
    browser.wait_text("#confirm-command", "restart_service").await;
    browser.click("#confirm-run").await;
    browser.wait_text("#incident-message", "review the new suggestion").await;
    browser.wait_text("#suggested-command", "stop_service").await;
    assert!(api.audit_outcomes(&agent).await.is_empty(), "nothing ran");

    browser.click("#resolve").await;
    browser.wait_text("#incident-status", "resolved").await;
    assert_eq!(browser.text("#resolve").await, None, "a resolved incident offers no resolve");

    browser.stop().await;
    stop_rpc.cancel();
    stop_analyzer.cancel();
    let _ = analyzer.wait().await;
    api.stop().await;
}

/// The navigation links the page offers (not hidden), in order.
async fn offered_pages(browser: &Browser) -> Vec<String> {
    let script =
        "return [...document.querySelectorAll('#nav a')].filter(a => !a.hidden).map(a => a.dataset.nav);";
    serde_json::from_value(browser.client.execute(script, vec![]).await.unwrap()).unwrap()
}

#[tokio::test]
async fn operator_runs_a_command_from_the_agent_page_and_hears_when_it_is_offline() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-agent", 1).await;
    let agent = fleet.agents()[0].clone();
    let id = agent.id.to_string();
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let incident = api.incident(&id, "service_down", "nginx died on this host").await;
    let browser = Browser::start().await;

    browser.log_in(&api.base, "operator@example.com").await;
    assert_eq!(offered_pages(&browser).await, ["fleet", "incidents"], "an operator is offered no admin page");
    // From the fleet list to the agent.
    browser.click(&format!("tr[data-agent-id=\"{id}\"] a")).await;
    browser.wait_text("#page-title", &agent.hostname).await;
    browser.wait_text("#agent-presence", "online").await;
    browser.wait_text(&format!("#agent-incidents tr[data-incident-id=\"{incident}\"]"), "nginx died").await;

    // The form follows the allow-list: service_status asks for a service, and the
    // confirmation shows exactly what is sent.
    browser.element("#command-name").await.select_by_value("service_status").await.unwrap();
    browser.type_into("#command-service", "nginx").await;
    browser.click("#run-command").await;
    browser.wait_text("#confirm-command", "service_status").await;
    browser.wait_text("#confirm-params", "\"service\": \"nginx\"").await;
    browser.wait_text("#confirm-agent", &id).await;
    browser.click("#confirm-run").await;
    browser.wait_text("#reply-output", "nginx: active (running)").await;
    browser.wait_text("#reply-status", "ok").await;
    assert_eq!(api.audit_outcomes(&id).await, vec![("execute".to_owned(), "ok".to_owned())]);

    // An agent gone offline: the gateway sends nothing, and the page says so.
    sqlx::query("UPDATE agents SET status = 'offline', status_changed_at = now() WHERE id = $1")
        .bind(&id)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    browser.element("#command-name").await.select_by_value("ping").await.unwrap();
    browser.click("#run-command").await;
    browser.wait_text("#confirm-command", "ping").await;
    browser.click("#confirm-run").await;
    browser.wait_text("#command-message", "The agent is offline: nothing was sent").await;
    assert_eq!(browser.text("#reply-output").await, None, "no reply is shown for a command not sent");
    let outcomes = api.audit_outcomes(&id).await;
    assert_eq!(outcomes.iter().filter(|(_, o)| o == "ok").count(), 1, "{outcomes:?}");

    // The incident links back to its agent.
    browser.click(&format!("#agent-incidents tr[data-incident-id=\"{incident}\"] a")).await;
    browser.click("#incident-agent").await;
    browser.wait_text("#agent-id", &id).await;

    browser.assert_only_from(&api.base).await;
    browser.stop().await;
    stop.cancel();
    api.stop().await;
}

#[tokio::test]
async fn viewer_compares_two_inventory_snapshots_and_is_offered_no_commands() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("console-inventory", 1).await;
    let agent = fleet.agents()[0].clone();
    let id = agent.id.to_string();
    // Two snapshots, through the ingestor's storage path: openssl moves to 3.0.1.
    let snapshot = |report: &wire_models::InventoryReport| {
        storage::inventory::Snapshot::from_report(report.clone()).unwrap()
    };
    let (first, second) = (agent.inventory(false), agent.inventory(true));
    storage::inventory::ingest_snapshots(&api.stack.db.pool, &[snapshot(&first), snapshot(&second)])
        .await
        .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM agents_inventory WHERE agent_id = $1 ORDER BY id")
        .bind(&id)
        .fetch_all(&api.stack.db.pool)
        .await
        .unwrap();
    let (older, newer) = (ids[0], ids[1]);
    // Down for six minutes, then back.
    sqlx::query(
        "INSERT INTO presence_transitions (agent_id, state, changed_at, threshold_secs, reason)
         VALUES ($1, 'offline', now() - interval '10 minutes', 30, 'timeout'),
                ($1, 'online', now() - interval '4 minutes', 30, 'heartbeat')",
    )
    .bind(&id)
    .execute(&api.stack.db.pool)
    .await
    .unwrap();
    let browser = Browser::start().await;

    browser.log_in(&api.base, "viewer@example.com").await;
    assert_eq!(offered_pages(&browser).await, ["fleet", "incidents"], "a viewer is offered no admin page");
    browser.goto(&format!("{}/#/agents/{id}", api.base)).await;
    browser.wait_text("#page-title", &agent.hostname).await;
    browser.wait_text("#timeline tbody tr:last-child", "offline").await;
    browser.wait_text("#timeline tbody tr:last-child", "6 min 0 s").await;
    browser.wait_text("#timeline tbody tr:last-child", "timeout").await;
    browser.wait_text("#timeline tbody tr:first-child", "now").await;
    // The latest change shows at once: from the older snapshot to the newer.
    browser.wait_text("#diff caption", &format!("From #{older} to #{newer}: 1 change")).await;
    browser.wait_text("#diff tbody", "packages.openssl.version").await;
    browser.wait_text("#diff tbody", "changed3.0.03.0.1").await;
    // Any two, either way round.
    browser.element("#diff-from").await.select_by_value(&newer.to_string()).await.unwrap();
    browser.element("#diff-to").await.select_by_value(&older.to_string()).await.unwrap();
    browser.click("#show-diff").await;
    browser.wait_text("#diff caption", &format!("From #{newer} to #{older}: 1 change")).await;
    browser.wait_text("#inventory-data", "openssl").await;
    browser.wait_text("#agent-incidents", "No incidents on this agent").await;
    assert_eq!(browser.text("#command").await, None, "a viewer is offered the command form");

    // The admin pages are not offered, and not shown when typed in.
    browser.goto(&format!("{}/#/tokens", api.base)).await;
    browser.wait_text("#main", "Your role cannot see this page").await;
    assert_eq!(browser.text("#token-name").await, None);

    browser.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn admin_creates_an_enrollment_token_sees_it_once_and_revokes_it() {
    let api = start(&[]).await;
    let browser = Browser::start().await;

    browser.log_in(&api.base, "admin@example.com").await;
    assert_eq!(offered_pages(&browser).await, ["fleet", "incidents", "audit", "users", "tokens"]);
    browser.click("a[data-nav=tokens]").await;
    browser.wait_text("#tokens", "No enrollment tokens yet").await;
    browser.type_into("#token-name", "rack 12").await;
    browser.type_into("#token-max-uses", "5").await;
    browser.click("#create-token").await;
    browser.wait_text("#created", "shown only this once").await;
    let value = browser
        .client
        .execute("return document.querySelector('#created-token').value;", vec![])
        .await
        .unwrap();
    let token = value.as_str().unwrap().to_owned();
    assert!(token.starts_with("opt_"), "{token}");
    // It is the token the gateway keeps the hash of.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enrollment_tokens WHERE token_hash = $1 AND name = 'rack 12'",
    )
    .bind(wire_models::sha256_hex(token.as_bytes()))
    .fetch_one(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    browser.wait_text("#tokens tbody", "rack 12").await;
    browser.wait_text("#tokens tbody", "0 of 5").await;

    // Once: back on the page, the list has it and the token is nowhere.
    browser.click("a[data-nav=fleet]").await;
    browser.element("#fleet").await;
    browser.click("a[data-nav=tokens]").await;
    browser.wait_text("#tokens tbody .state", "active").await;
    assert_eq!(browser.text("#created-token").await, None);
    let page = browser.client.source().await.unwrap();
    assert!(!page.contains(&token), "the token is shown again");

    // Revoking asks first, naming the token.
    browser.click("#tokens button.revoke").await;
    browser.wait_text("#ask-title", "rack 12").await;
    browser.click("#ask-yes").await;
    browser.wait_text("#tokens tbody .state", "revoked").await;

    // Disabling a user asks first too; the audit log has every change.
    browser.click("a[data-nav=users]").await;
    browser.click("tr[data-user=\"viewer@example.com\"] button.toggle").await;
    browser.wait_text("#ask-title", "Disable viewer@example.com").await;
    browser.click("#ask-yes").await;
    browser.wait_text("tr[data-user=\"viewer@example.com\"] .state", "disabled").await;
    assert_eq!(
        browser.text("tr[data-user=\"admin@example.com\"] button").await,
        None,
        "an admin can disable themselves"
    );
    browser.click("a[data-nav=audit]").await;
    browser.wait_text("#audit tbody", "revoke_enrollment_token").await;
    browser.wait_text("#audit tbody", "create_enrollment_token").await;
    browser.wait_text("#audit tbody", "update_user").await;

    browser.assert_only_from(&api.base).await;
    browser.stop().await;
    api.stop().await;
}
