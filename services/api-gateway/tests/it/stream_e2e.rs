//! The live stream end to end: the real ingestor, presence tracker and analyzer run
//! in-process next to the gateway, simulated agents enrolled through the API speak NATS
//! with their own credentials, and stream clients see what the services publish: an
//! event's incident within a second, presence flips, an analysis, recurrences, an
//! action's outcome and a status change, filtered by agent.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wire_models::{AgentId, EventKind, Severity};

use crate::helpers::*;

/// The simulated agents' heartbeat interval; with `--missed-heartbeats 3` the tracker
/// declares one offline after 3 s of silence.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long to wait for a change the services make at once.
const SOON: Duration = Duration::from_secs(10);
/// How long to wait for an offline agent to be noticed (threshold plus the scan).
const OFFLINE: Duration = Duration::from_secs(15);
/// The bound from the agent's publish to the stream client.
const MAX_LATENCY: Duration = Duration::from_secs(1);

/// One event as a client received it, stamped when its bytes arrived.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    id: Option<u64>,
    event: String,
    data: Value,
}

impl Received {
    fn agent(&self) -> &str {
        self.data["agent_id"].as_str().unwrap_or_default()
    }

    fn is(&self, event: &str, agent: &AgentId) -> bool {
        self.event == event && self.agent() == agent.as_str()
    }

    fn updated(&self, incident: i64, change: &str) -> bool {
        self.event == "incident.updated"
            && self.data["incident_id"] == incident
            && self.data["change"] == change
    }
}

/// A stream client that reads in the background, so arrival times are taken when the
/// bytes arrive rather than when the test looks; everything it saw stays in `seen`.
struct Client {
    name: &'static str,
    rx: mpsc::UnboundedReceiver<Received>,
    seen: Vec<Received>,
    reader: JoinHandle<()>,
}

impl Client {
    async fn open(api: &Api, name: &'static str, query: &str) -> Self {
        let mut response = api
            .http
            .get(format!("{}/api/v1/stream?{query}", api.base))
            .bearer_auth(&api.viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(response.headers()["content-type"], "text/event-stream", "{name}");
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buffer: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                let at = Instant::now();
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buffer.drain(..end + 2).collect();
                    if let Some(event) = parse(&String::from_utf8_lossy(&block), at)
                        && tx.send(event).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Self { name, rx, seen: Vec::new(), reader }
    }

    /// The next event that `matches`, within `timeout`; the ones before it are kept in
    /// `seen` too, so a change that came out of order shows up as a timeout here.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("{}: the stream ended before {what}; it saw:\n{}", self.name, self.log()),
                Err(_) => panic!("{}: no {what} within {timeout:?}; it saw:\n{}", self.name, self.log()),
            }
        }
    }

    fn log(&self) -> String {
        self.seen.iter().map(|e| format!("  {:?} {} {}\n", e.id, e.event, e.data)).collect()
    }

    fn ids(&self) -> Vec<u64> {
        self.seen.iter().map(|e| e.id.expect("every change has an id")).collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One Server-Sent Event block; `None` for a comment (keep-alive).
fn parse(block: &str, at: Instant) -> Option<Received> {
    let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse().expect("a numeric event id"));
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if id.is_none() && data.is_empty() {
        return None;
    }
    Some(Received { at, id, event, data: serde_json::from_str(&data).expect("a JSON data line") })
}

async fn incident_of_event(api: &Api, event_id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT id FROM incidents WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(&api.stack.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_live_stream_shows_what_the_real_services_do_as_it_happens() {
    let api = start(&[]).await;
    let services = Services::start(&api).await;
    let mut agents = enroll_agents(&api, 2).await;
    let (a, b) = (agents[0].id().clone(), agents[1].id().clone());
    let mut everything = Client::open(&api, "unfiltered", "").await;
    let mut only_a = Client::open(&api, "agent_id filter", &format!("agent_id={a}")).await;

    // Both agents start heartbeating: the tracker says they are online.
    for agent in &mut agents {
        agent.start(HEARTBEAT);
    }
    let mut not_yet_online = vec![a.clone(), b.clone()];
    while !not_yet_online.is_empty() {
        // In either order: the tracker decides both in one round.
        let online = everything
            .wait_for("both agents online", SOON, |e| {
                e.event == "presence"
                    && e.data["state"] == "online"
                    && not_yet_online.iter().any(|id| e.agent() == id.as_str())
            })
            .await;
        not_yet_online.retain(|id| online.agent() != id.as_str());
        assert_eq!(online.data["threshold_secs"], 3, "{:?}", online.data);
        assert_eq!(online.data["reason"], "heartbeat");
    }

    // A critical event from A: its incident reaches the stream within a second of the
    // agent's (acknowledged) publish.
    let event = agents[0].sim().event(
        EventKind::parse("service_down").unwrap(),
        Severity::Critical,
        "nginx",
        "nginx.service: Main process exited, code=killed, status=9/KILL",
    );
    let published = Instant::now();
    assert!(!agents[0].bus.publish_event(&event).await.unwrap(), "a new event");
    let created = everything.wait_for("A's incident.created", SOON, |e| e.is("incident.created", &a)).await;
    let latency_a = created.at - published;
    let incident = incident_of_event(&api, event.event_id).await;
    assert_eq!(created.data["incident_id"], incident, "{:?}", created.data);
    assert_eq!(created.data["kind"], "service_down");
    assert_eq!(created.data["severity"], "critical");
    assert_eq!(created.data["is_critical"], true);

    // Critical, so the analyzer takes it up by itself (rules, no provider key).
    let analysed =
        everything.wait_for("the analysis of A's incident", SOON, |e| e.updated(incident, "analysis")).await;
    assert_eq!(analysed.data["agent_id"], a.as_str());
    assert_eq!(analysed.data["analysis_status"], "ok", "{:?}", analysed.data);

    // An event from B, not critical: the unfiltered client sees its incident, as fast.
    let event_b = agents[1].sim().event(
        EventKind::parse("disk_full").unwrap(),
        Severity::Error,
        "df",
        "/var: No space left on device",
    );
    let published_b = Instant::now();
    assert!(!agents[1].bus.publish_event(&event_b).await.unwrap(), "a new event");
    let created_b = everything.wait_for("B's incident.created", SOON, |e| e.is("incident.created", &b)).await;
    let latency_b = created_b.at - published_b;
    assert_eq!(created_b.data["incident_id"], incident_of_event(&api, event_b.event_id).await);
    assert_eq!(created_b.data["is_critical"], false);

    // The same failure again (a new event id, the same fingerprint): folded into the
    // open incident, and the coalesced occurrence count reaches the stream.
    let again = agents[0].sim().event(event.kind.clone(), event.severity, &event.source, &event.raw_error);
    assert!(!agents[0].bus.publish_event(&again).await.unwrap(), "a new event");
    let recurred = everything.wait_for("A's recurrence", SOON, |e| e.updated(incident, "occurrences")).await;
    assert_eq!(recurred.data["agent_id"], a.as_str());
    assert_eq!(recurred.data["occurrences"], 2, "{:?}", recurred.data);
    assert_eq!(recurred.data["status"], "analyzed");

    // The suggested action runs on the agent: its outcome, then the incident's change.
    let (status, shown) = api.get(&format!("/api/v1/incidents/{incident}"), &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["status"], "analyzed", "{shown}");
    assert_eq!(shown["occurrences"], 2, "{shown}");
    let action = shown["suggested_action"].clone();
    assert!(action["command"].is_string(), "the rules suggest an action: {shown}");
    let (status, executed) =
        api.post(&format!("/api/v1/incidents/{incident}/execute"), &api.operator, action.clone()).await;
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(executed["result"]["status"], "ok", "{executed}");
    let finished = everything.wait_for("the action's outcome", SOON, |e| e.is("action.finished", &a)).await;
    assert_eq!(finished.data["request_id"], executed["result"]["request_id"]);
    assert_eq!(finished.data["command"], action["command"]);
    assert_eq!(finished.data["outcome"], "ok");
    assert_eq!(finished.data["incident_id"], incident);
    everything.wait_for("the incident's action change", SOON, |e| e.updated(incident, "action")).await;

    // An operator acknowledges it.
    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/incidents/{incident}"),
            Some(&api.operator),
            Some(json!({"status": "acknowledged"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let acknowledged =
        everything.wait_for("the status change", SOON, |e| e.updated(incident, "status")).await;
    assert_eq!(acknowledged.data["status"], "acknowledged");
    assert_eq!(acknowledged.data["agent_id"], a.as_str());

    // A stops (its host goes quiet): offline after the threshold; back: online.
    let stopped = Instant::now();
    agents[0].stop().await;
    let offline = everything
        .wait_for("A offline", OFFLINE, |e| e.is("presence", &a) && e.data["state"] == "offline")
        .await;
    assert!(offline.data["last_seen_at"].is_string(), "{:?}", offline.data);
    let offline_after = offline.at - stopped;
    // The tracker's agent_offline incident is announced like any other.
    let opened = everything
        .wait_for("A's offline incident", SOON, |e| {
            e.is("incident.created", &a) && e.data["kind"] == "agent_offline"
        })
        .await;
    assert_eq!(opened.data["is_critical"], true, "{:?}", opened.data);
    let offline_incident = opened.data["incident_id"].as_i64().unwrap();
    let restarted = Instant::now();
    agents[0].start(HEARTBEAT);
    let online = everything
        .wait_for("A online again", SOON, |e| e.is("presence", &a) && e.data["state"] == "online")
        .await;
    let online_after = online.at - restarted;
    let resolved = everything
        .wait_for("A's offline incident resolved", SOON, |e| e.updated(offline_incident, "status"))
        .await;
    assert_eq!(resolved.data["status"], "resolved", "{:?}", resolved.data);

    // The filtered client saw exactly A's share of the feed, in the same order and with
    // the same ids; the unfiltered one saw B too.
    only_a.wait_for("A's offline incident resolved", SOON, |e| e.id == resolved.id).await;
    let last = resolved.id.unwrap();
    let ids = everything.ids();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {}", everything.log());
    let a_share: Vec<u64> =
        everything.seen.iter().filter(|e| e.agent() == a.as_str()).map(|e| e.id.unwrap()).collect();
    assert_eq!(only_a.ids(), a_share, "filtered:\n{}unfiltered:\n{}", only_a.log(), everything.log());
    assert!(only_a.seen.iter().all(|e| e.agent() == a.as_str()), "{}", only_a.log());
    assert_eq!(only_a.ids().last(), Some(&last));
    let b_kinds: Vec<&str> =
        everything.seen.iter().filter(|e| e.agent() == b.as_str()).map(|e| e.event.as_str()).collect();
    assert_eq!(b_kinds, ["presence", "incident.created"], "{}", everything.log());
    let a_kinds: Vec<&str> = only_a.seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        a_kinds,
        [
            "presence",
            "incident.created",
            "incident.updated",
            "incident.updated",
            "action.finished",
            "incident.updated",
            "incident.updated",
            "presence",
            "incident.created",
            "presence",
            "incident.updated"
        ],
        "{}",
        only_a.log()
    );
    // The filtered client is as quick as the unfiltered one.
    let created_filtered = only_a.seen.iter().find(|e| e.id == created.id).unwrap();
    let latency_a_filtered = created_filtered.at - published;

    println!(
        "live stream e2e: incident.created after the agent's publish: A {latency_a:?} (filtered client \
         {latency_a_filtered:?}), B {latency_b:?}; presence offline {offline_after:?} after the agent \
         stopped (threshold 3 s), online {online_after:?} after it restarted"
    );
    for (what, latency) in [("A", latency_a), ("A, filtered", latency_a_filtered), ("B", latency_b)] {
        assert!(
            latency < MAX_LATENCY,
            "incident.created for {what} took {latency:?} (limit {MAX_LATENCY:?})"
        );
    }

    for agent in &mut agents {
        agent.stop().await;
    }
    drop((everything, only_a));
    services.stop().await;
    api.stop().await;
}
