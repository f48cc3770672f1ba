//! The live stream: tickets, what it carries, filters, resuming, and clients that fall
//! behind.

use std::time::Duration;

use agent_sim::RpcBehaviour;
use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire_models::{
    ActionFinished, AgentId, EventKind, IncidentChange, IncidentCreated, IncidentUpdated, PROTOCOL_VERSION,
    PresenceChanged, PresenceState, Severity,
};

use crate::helpers::*;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<u64>,
    pub(crate) event: String,
    pub(crate) data: Value,
}

/// A reader of an open stream.
pub(crate) struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    pub(crate) async fn open(api: &Api, query: &str, token: &str, last_event_id: Option<u64>) -> Self {
        let mut request = api.http.get(format!("{}/api/v1/stream?{query}", api.base)).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self { response, buffer: String::new() }
    }

    /// The next event (keep-alive comments skipped); `None` when the stream ended or
    /// nothing came within `wait`.
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a comment
                }
                return Some(SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Some(e) => out.push(e),
                None => panic!("only {} of {n} events arrived: {out:?}", out.len()),
            }
        }
        out
    }
}

fn presence(agent: &AgentId, state: PresenceState) -> PresenceChanged {
    PresenceChanged {
        v: PROTOCOL_VERSION,
        agent_id: agent.clone(),
        state,
        changed_at: Utc::now(),
        last_seen_at: Some(Utc::now()),
        threshold_secs: 30,
        reason: "heartbeat".into(),
    }
}

fn created(agent: &AgentId, id: i64) -> IncidentCreated {
    IncidentCreated {
        v: PROTOCOL_VERSION,
        incident_id: id,
        agent_id: agent.clone(),
        kind: EventKind::parse("oom").unwrap(),
        severity: Severity::Critical,
        is_critical: true,
        fingerprint: "f".repeat(64),
        created_at: Utc::now(),
    }
}

fn updated(agent: &AgentId, id: i64, occurrences: i64) -> IncidentUpdated {
    IncidentUpdated {
        v: PROTOCOL_VERSION,
        incident_id: id,
        agent_id: agent.clone(),
        change: IncidentChange::Occurrences,
        status: Some("new".into()),
        occurrences: Some(occurrences),
        last_seen_at: Some(Utc::now()),
        analysis_status: None,
        updated_at: Utc::now(),
    }
}

fn finished(agent: &AgentId) -> ActionFinished {
    ActionFinished {
        v: PROTOCOL_VERSION,
        request_id: uuid::Uuid::now_v7(),
        agent_id: agent.clone(),
        command: "restart_service".into(),
        outcome: "ok".into(),
        incident_id: None,
        duration_ms: 12,
        finished_at: Utc::now(),
    }
}

/// Publishes on the feed as the backend services do.
struct Publisher {
    client: async_nats::Client,
    subjects: wire_models::Subjects,
}

impl Publisher {
    async fn new(api: &Api) -> Self {
        Self { client: api.stack.client().await, subjects: api.stack.topology.subjects.clone() }
    }

    async fn presence(&self, msg: &PresenceChanged) {
        natsbus::publish(&self.client, self.subjects.presence_changed(&msg.agent_id), msg).await.unwrap();
        self.client.flush().await.unwrap();
    }

    async fn created(&self, msg: &IncidentCreated) {
        natsbus::publish(&self.client, self.subjects.incident_created(), msg).await.unwrap();
        self.client.flush().await.unwrap();
    }

    async fn updated(&self, msg: &IncidentUpdated) {
        natsbus::publish(&self.client, self.subjects.incident_updated(), msg).await.unwrap();
    }

    async fn finished(&self, msg: &ActionFinished) {
        natsbus::publish(&self.client, self.subjects.action_finished(), msg).await.unwrap();
        self.client.flush().await.unwrap();
    }
}

#[tokio::test]
async fn the_stream_carries_each_change_filtered_and_resumes_without_loss_or_repeats() {
    let api = start(&[]).await;
    let publish = Publisher::new(&api).await;
    let (x, y) = (AgentId::random(), AgentId::random());
    let mut everything = Sse::open(&api, "", &api.viewer, None).await;
    let mut only_x_presence =
        Sse::open(&api, &format!("types=presence&agent_id={x}"), &api.viewer, None).await;

    publish.presence(&presence(&x, PresenceState::Offline)).await;
    publish.created(&created(&y, 41)).await;
    publish.updated(&updated(&x, 40, 7)).await;
    publish.finished(&finished(&y)).await;
    publish.presence(&presence(&y, PresenceState::Online)).await;
    publish.presence(&presence(&x, PresenceState::Online)).await;

    let seen = everything.take(6).await;
    let kinds: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["presence", "incident.created", "incident.updated", "action.finished", "presence", "presence"]
    );
    let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(seen[0].data["agent_id"], x.as_str());
    assert_eq!(seen[0].data["state"], "offline");
    assert_eq!(seen[1].data["incident_id"], 41);
    assert_eq!(seen[2].data["change"], "occurrences");
    assert_eq!(seen[2].data["occurrences"], 7);
    assert_eq!(seen[3].data["outcome"], "ok");

    let filtered = only_x_presence.take(2).await;
    assert_eq!(
        filtered.iter().map(|e| e.data["state"].clone()).collect::<Vec<_>>(),
        [json!("offline"), json!("online")]
    );
    assert!(filtered.iter().all(|e| e.data["agent_id"] == x.as_str()));
    assert!(only_x_presence.next(Duration::from_millis(500)).await.is_none(), "nothing else for this filter");

    // The client drops after the second event; more happens meanwhile; it comes back
    // with the id it saw last and gets exactly what it missed, then what is new.
    drop(everything);
    let after = ids[1];
    publish.created(&created(&x, 42)).await;
    let mut resumed = Sse::open(&api, "", &api.viewer, Some(after)).await;
    publish.presence(&presence(&x, PresenceState::Offline)).await;
    let again = resumed.take(6).await;
    let again_ids: Vec<u64> = again.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(&again_ids[..4], &ids[2..], "the missed events, once each");
    assert!(again_ids.windows(2).all(|w| w[0] < w[1]), "{again_ids:?}");
    assert_eq!(again[4].data["incident_id"], 42);
    assert_eq!(again[5].data["state"], "offline");
    assert!(resumed.next(Duration::from_millis(500)).await.is_none(), "no repeats");

    // The same through the query parameter (a new EventSource cannot set the header).
    let mut by_query = Sse::open(&api, &format!("last_event_id={}", ids[4]), &api.viewer, None).await;
    assert_eq!(by_query.take(1).await[0].id, Some(ids[5]));

    // An id the feed does not have (any more, or ever): reload.
    let mut stale = Sse::open(&api, "", &api.viewer, Some(1 << 40)).await;
    let reload = stale.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(reload.event, "reload");
    assert!(stale.next(Duration::from_secs(2)).await.is_none(), "the stream ends after reload");
    api.stop().await;
}

#[tokio::test]
async fn bad_stream_requests_are_refused() {
    let api = start(&[]).await;
    for query in ["types=presence,gossip", "agent_id=nothex"] {
        let response = api
            .http
            .get(format!("{}/api/v1/stream?{query}", api.base))
            .bearer_auth(&api.viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let response = api
        .http
        .get(format!("{}/api/v1/stream", api.base))
        .bearer_auth(&api.viewer)
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = api.http.get(format!("{}/api/v1/stream", api.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    api.stop().await;
}

#[tokio::test]
async fn a_ticket_opens_one_stream_once_and_nothing_else() {
    let api = start(&[]).await;
    let ticket = |token: String| {
        let api = &api;
        async move {
            let (status, body) = api.call(Method::POST, "/api/v1/stream/tickets", Some(&token), None).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["ticket"].as_str().unwrap().to_owned()
        }
    };
    let t = ticket(api.viewer.clone()).await;
    let open = |t: String| {
        let api = &api;
        async move { api.http.get(format!("{}/api/v1/stream?ticket={t}", api.base)).send().await.unwrap() }
    };
    let first = open(t.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    drop(first);
    assert_eq!(open(t.clone()).await.status(), StatusCode::UNAUTHORIZED, "used once");
    // It is not a bearer token anywhere.
    let unused = ticket(api.viewer.clone()).await;
    let (status, _) = api.get("/api/v1/auth/me", &unused).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response =
        api.http.get(format!("{}/api/v1/stream", api.base)).bearer_auth(&unused).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(open("made-up".into()).await.status(), StatusCode::UNAUTHORIZED);
    // A ticket needs a user to ask for it.
    let (status, _) = api.call(Method::POST, "/api/v1/stream/tickets", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

#[tokio::test]
async fn status_changes_and_actions_reach_the_stream() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("stream-actions", 1).await;
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let agent = fleet.agents()[0].id.clone();
    let incident = api.incident(agent.as_str(), "oom", "Out of memory").await;
    let mut sse = Sse::open(&api, &format!("agent_id={agent}"), &api.viewer, None).await;

    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/incidents/{incident}"),
            Some(&api.operator),
            Some(json!({"status": "acknowledged"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        api.post(&format!("/api/v1/agents/{agent}/execute"), &api.operator, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let events = sse.take(2).await;
    assert_eq!(events[0].event, "incident.updated");
    assert_eq!(events[0].data["incident_id"], incident);
    assert_eq!(events[0].data["change"], "status");
    assert_eq!(events[0].data["status"], "acknowledged");
    assert_eq!(events[1].event, "action.finished");
    assert_eq!(events[1].data["command"], "ping");
    assert_eq!(events[1].data["outcome"], "ok");
    assert_eq!(events[1].data["request_id"], body["request_id"]);
    stop.cancel();
    api.stop().await;
}

#[tokio::test]
async fn a_client_that_falls_behind_is_cut_off_with_lagged_while_others_continue() {
    let api = start(&["--stream-buffer", "256"]).await;
    let publish = Publisher::new(&api).await;
    let agent = AgentId::random();
    let mut keeping_up = Sse::open(&api, "", &api.viewer, None).await;

    // A client that stops reading, with a tiny receive window so the gateway soon has
    // nowhere to put its events.
    let addr: std::net::SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /api/v1/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        api.viewer
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    const N: i64 = 4000;
    let reader = tokio::spawn(async move {
        let events = keeping_up.take(N as usize).await;
        events.iter().map(|e| e.data["occurrences"].as_i64().unwrap()).collect::<Vec<_>>()
    });
    // About 10,000 events a second: a client that reads keeps up; one that does not
    // falls 256 events behind within a fraction of the run.
    for n in 1..=N {
        publish.updated(&updated(&agent, 1, n)).await;
        if n % 50 == 0 {
            publish.client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    publish.client.flush().await.unwrap();
    let counts = reader.await.unwrap();
    assert_eq!(counts, (1..=N).collect::<Vec<_>>(), "the client that keeps up gets every event, in order");

    // The slow client, reading again, finds the notice and the end of its response (the
    // last chunk of a chunked body; the connection itself may stay open).
    let mut text = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = slow.read(&mut chunk).await.unwrap();
            text.extend_from_slice(&chunk[..n]);
            if n == 0 || text.ends_with(b"\r\n0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&text);
    let tail = &text[text.len().saturating_sub(600)..];
    assert!(ended.is_ok(), "the stream of a client that fell behind ends: {tail}");
    assert!(text.contains("event: lagged"), "{tail}");
    let received = text.matches("event: incident.updated").count();
    assert!(received < N as usize, "it was cut off before the end ({received} events)");
    api.stop().await;
}
