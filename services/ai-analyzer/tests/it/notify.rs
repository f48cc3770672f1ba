//! Notifications against a local HTTP receiver: exactly one signed post per
//! notification across two replicas, retries that outlast a receiver down for a minute,
//! a flood folded into a digest, Slack's message shape, routing and refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ai_analyzer::notify::format;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde_json::Value;
use storage::notifications::{self as store, NotifyEvent, TargetKind};
use test_support::Stack;
use tokio::net::TcpListener;
use wire_models::{
    ActionFinished, AgentId, EventKind, IncidentCreated, PROTOCOL_VERSION, PresenceChanged, PresenceState,
    Severity,
};

use crate::helpers::*;

/// One post the receiver took.
#[derive(Debug, Clone)]
struct Post {
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Post {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local HTTP receiver answering every post with `status`.
struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(status: StatusCode) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), status)
    }

    fn start_on(listener: TcpListener, status: StatusCode) -> Self {
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&posts);
        let app = axum::Router::new().route(
            "/hook/{token}",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(Post { headers, body: body.to_vec() });
                    status
                }
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, posts, server }
    }

    fn url(&self) -> String {
        format!("http://{}/hook/T0KEN-secret-path", self.addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize, within: Duration) -> Vec<Post> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let posts = self.posts();
            if posts.len() >= count || tokio::time::Instant::now() >= deadline {
                return posts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const SECRET: &str = "test-signing-secret-0123456789";

async fn webhook(stack: &Stack, name: &str, url: &str, events: &[NotifyEvent], rate: u32) -> store::Target {
    store::create_target(
        &stack.db.pool,
        &store::NewTarget {
            name,
            kind: TargetKind::Webhook,
            url,
            secret: Some(SECRET),
            events,
            min_severity: Severity::Critical,
            kinds: &[],
            rate_per_minute: rate,
            enabled: true,
        },
    )
    .await
    .unwrap()
}

/// Analyzer arguments with fast notification polling and retries.
fn notify_config(stack: &Stack, extra: &[&str]) -> ai_analyzer::Config {
    let mut args = vec!["--notify-poll", "100ms", "--notify-backoff", "500ms", "--notify-backoff-max", "4s"];
    args.extend_from_slice(extra);
    config(stack, None, &args)
}

/// Publishes on the change feed as the backend's services do.
struct Feed {
    client: async_nats::Client,
    subjects: wire_models::Subjects,
}

impl Feed {
    async fn new(stack: &Stack) -> Self {
        Self { client: stack.client().await, subjects: stack.topology.subjects.clone() }
    }

    async fn incident(&self, agent: &AgentId, id: i64, severity: Severity, kind: &str) {
        let msg = IncidentCreated {
            v: PROTOCOL_VERSION,
            incident_id: id,
            agent_id: agent.clone(),
            kind: EventKind::parse(kind).unwrap(),
            severity,
            is_critical: severity == Severity::Critical,
            fingerprint: "f".repeat(64),
            created_at: Utc::now(),
        };
        natsbus::publish(&self.client, self.subjects.incident_created(), &msg).await.unwrap();
    }

    async fn presence(&self, agent: &AgentId, state: PresenceState) {
        let msg = PresenceChanged {
            v: PROTOCOL_VERSION,
            agent_id: agent.clone(),
            state,
            changed_at: Utc::now(),
            last_seen_at: Some(Utc::now()),
            threshold_secs: 30,
            reason: "timeout".into(),
        };
        natsbus::publish(&self.client, self.subjects.presence_changed(agent), &msg).await.unwrap();
    }

    async fn action(&self, agent: &AgentId, outcome: &str) -> uuid::Uuid {
        let msg = ActionFinished {
            v: PROTOCOL_VERSION,
            request_id: uuid::Uuid::now_v7(),
            agent_id: agent.clone(),
            command: "restart_service".into(),
            outcome: outcome.into(),
            incident_id: None,
            duration_ms: 12,
            finished_at: Utc::now(),
        };
        natsbus::publish(&self.client, self.subjects.action_finished(), &msg).await.unwrap();
        msg.request_id
    }

    async fn flush(&self) {
        self.client.flush().await.unwrap();
    }
}

/// Checks a webhook post's signature and freshness, returns its body.
fn verified(post: &Post) -> Value {
    let header = |name: &str| post.headers.get(name).unwrap().to_str().unwrap().to_owned();
    let timestamp: i64 = header(format::HEADER_TIMESTAMP).parse().unwrap();
    assert!((Utc::now().timestamp() - timestamp).abs() < 300, "stale timestamp {timestamp}");
    let signature = header(format::HEADER_SIGNATURE);
    assert!(
        format::verify(SECRET.as_bytes(), timestamp, &post.body, &signature),
        "bad signature {signature}"
    );
    assert!(!format::verify(b"another-secret-entirely", timestamp, &post.body, &signature));
    let body = post.json();
    assert_eq!(header(format::HEADER_DELIVERY), body["id"].to_string());
    assert_eq!(header(format::HEADER_EVENT), body["event"].as_str().unwrap());
    body
}

async fn deliveries(stack: &Stack, target: uuid::Uuid) -> Vec<store::Delivery> {
    store::recent(
        &stack.db.pool,
        &store::DeliveryFilter { target_id: Some(target), limit: 10_000, ..Default::default() },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn two_replicas_send_exactly_one_signed_post_per_notification() {
    let stack = Stack::start().await;
    let receiver = Receiver::start(StatusCode::OK).await;
    let target = webhook(&stack, "ops-hook", &receiver.url(), &NotifyEvent::ALL, 600).await;
    let agent_a = agent(&stack, "web-01").await;
    let agent_b = agent(&stack, "db-01").await;
    let (one, stop_one) = start(notify_config(&stack, &[])).await;
    let (two, stop_two) = start(notify_config(&stack, &[])).await;

    let feed = Feed::new(&stack).await;
    let mut expected = BTreeSet::new();
    for id in 1..=20 {
        let agent = if id % 2 == 0 { &agent_a } else { &agent_b };
        feed.incident(agent, id, Severity::Critical, "disk_full").await;
        expected.insert(("incident".to_owned(), format!("incident #{id}")));
    }
    // Below the target's severity, online, and a successful action: nothing.
    for id in 21..=25 {
        feed.incident(&agent_a, id, Severity::Error, "disk_full").await;
    }
    feed.presence(&agent_a, PresenceState::Online).await;
    feed.action(&agent_b, "ok").await;
    for agent in [&agent_a, &agent_b] {
        feed.presence(agent, PresenceState::Offline).await;
    }
    expected.insert(("offline".to_owned(), "web-01 went offline".to_owned()));
    expected.insert(("offline".to_owned(), "db-01 went offline".to_owned()));
    for outcome in ["timeout", "offline"] {
        feed.action(&agent_a, outcome).await;
        expected.insert(("action_failed".to_owned(), format!("restart_service on web-01 ended: {outcome}")));
    }
    feed.flush().await;

    let posts = receiver.wait_for(expected.len(), Duration::from_secs(20)).await;
    assert_eq!(posts.len(), expected.len(), "posts: {:?}", posts.iter().map(Post::json).collect::<Vec<_>>());
    // Nothing more arrives: neither replica sends a second copy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts = receiver.posts();
    assert_eq!(posts.len(), expected.len());
    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for post in &posts {
        let body = verified(post);
        assert!(ids.insert(body["id"].as_i64().unwrap()), "delivery {} posted twice", body["id"]);
        let summary = body["summary"].as_str().unwrap();
        let key = expected
            .iter()
            .find(|(event, text)| {
                body["event"] == event.as_str()
                    && (summary.ends_with(text.as_str()) || summary.starts_with(text.as_str()))
            })
            .unwrap_or_else(|| panic!("unexpected post {body}"))
            .clone();
        assert!(seen.insert(key), "notified twice: {body}");
        if body["event"] == "incident" {
            assert_eq!(body["data"]["kind"], "disk_full");
            assert_eq!(body["data"]["severity"], "critical");
            assert!(["web-01", "db-01"].contains(&body["data"]["hostname"].as_str().unwrap()));
        }
    }
    assert_eq!(seen, expected);
    let rows = deliveries(&stack, target.id).await;
    assert_eq!(rows.len(), expected.len());
    assert!(
        rows.iter().all(|d| d.status == "delivered" && d.attempts == 1 && d.response_status == Some(200))
    );

    stop(one, stop_one).await;
    stop(two, stop_two).await;
}

#[tokio::test]
async fn retries_outlast_a_receiver_that_is_down_for_a_minute() {
    let stack = Stack::start().await;
    // The receiver's port, taken back while it is "down" so nothing answers there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/hook/T0KEN");
    let target = webhook(&stack, "flaky", &url, &[NotifyEvent::Incident], 60).await;
    let agent = agent(&stack, "web-01").await;
    let (analyzer, shutdown) = start(notify_config(&stack, &[])).await;
    let feed = Feed::new(&stack).await;
    feed.incident(&agent, 7, Severity::Critical, "oom").await;
    feed.flush().await;

    tokio::time::sleep(Duration::from_secs(60)).await;
    let rows = deliveries(&stack, target.id).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.status, "pending", "{row:?}");
    assert!(row.attempts >= 5, "retried only {} times in a minute", row.attempts);
    assert!(row.last_error.as_deref().is_some_and(|e| !e.contains("T0KEN")), "{:?}", row.last_error);

    let receiver = Receiver::start_on(TcpListener::bind(addr).await.unwrap(), StatusCode::OK);
    // The backoff is capped at 4 s here.
    let posts = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(posts.len(), 1);
    let body = verified(&posts[0]);
    assert_eq!(body["event"], "incident");
    assert_eq!(body["data"]["incident_id"], 7);
    assert!(body["attempt"].as_i64().unwrap() > 5);
    let row = &deliveries(&stack, target.id).await[0];
    assert_eq!(row.status, "delivered");
    assert_eq!(row.last_error, None);
    stop(analyzer, shutdown).await;
}

#[tokio::test]
async fn a_flood_of_critical_incidents_becomes_a_digest() {
    let stack = Stack::start().await;
    let receiver = Receiver::start(StatusCode::OK).await;
    let target = webhook(&stack, "pager", &receiver.url(), &NotifyEvent::ALL, 5).await;
    let agent = agent(&stack, "web-01").await;
    let (analyzer, shutdown) = start(notify_config(&stack, &[])).await;
    let feed = Feed::new(&stack).await;
    for id in 1..=500 {
        feed.incident(&agent, id, Severity::Critical, "oom").await;
    }
    feed.flush().await;

    let posts = receiver.wait_for(6, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posts_after = receiver.posts();
    assert_eq!(posts_after.len(), posts.len(), "more posts kept coming");
    let bodies: Vec<Value> = posts.iter().map(verified).collect();
    let singles: Vec<&Value> = bodies.iter().filter(|b| b["event"] == "incident").collect();
    let digests: Vec<&Value> = bodies.iter().filter(|b| b["event"] == "digest").collect();
    assert_eq!(singles.len(), 5, "{bodies:?}");
    assert_eq!(digests.len(), 1, "{bodies:?}");
    let digest = digests[0];
    assert_eq!(digest["data"]["count"], 495);
    assert_eq!(digest["data"]["by_event"]["incident"], 495);
    assert_eq!(digest["summary"], "495 more notifications in the last minute");
    assert_eq!(digest["data"]["sample"].as_array().unwrap().len(), store::DIGEST_SAMPLE);

    let rows = deliveries(&stack, target.id).await;
    let mut by_status = BTreeMap::<String, usize>::new();
    for row in &rows {
        *by_status.entry(row.status.clone()).or_default() += 1;
    }
    assert_eq!(by_status.get("delivered"), Some(&6), "{by_status:?}");
    assert_eq!(by_status.get("digested"), Some(&495), "{by_status:?}");
    let digest_id = digest["id"].as_i64().unwrap();
    assert!(rows.iter().filter(|r| r.status == "digested").all(|r| r.digest_id == Some(digest_id)));
    stop(analyzer, shutdown).await;
}

/// What Slack's incoming webhooks take: `text`, and `blocks` of known types whose
/// text objects are `mrkdwn` or `plain_text` within the 3000-character limit.
fn assert_slack_shape(body: &Value) {
    let text = body["text"].as_str().expect("text is a string");
    assert!(!text.is_empty());
    let blocks = body["blocks"].as_array().expect("blocks is an array");
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    for block in blocks {
        match block["type"].as_str() {
            Some("section") => {
                assert!(["mrkdwn", "plain_text"].contains(&block["text"]["type"].as_str().unwrap()));
                let text = block["text"]["text"].as_str().unwrap();
                assert!(!text.is_empty() && text.chars().count() <= 3000);
            }
            Some("context") => {
                let elements = block["elements"].as_array().unwrap();
                assert!(!elements.is_empty() && elements.len() <= 10);
                assert!(elements.iter().all(|e| e["type"] == "mrkdwn" && e["text"].is_string()));
            }
            other => panic!("unexpected block type {other:?}"),
        }
    }
    let keys: BTreeSet<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["text", "blocks"]));
}

#[tokio::test]
async fn slack_gets_messages_shaped_as_its_incoming_webhooks_accept() {
    let stack = Stack::start().await;
    let receiver = Receiver::start(StatusCode::OK).await;
    let url = receiver.url();
    let agent = agent(&stack, "<!channel>-host").await;
    // From the environment, as NOTIFY_SLACK_WEBHOOK_URL configures it.
    let url_file = stack.secret_file("slack-webhook-url", &url);
    let (analyzer, shutdown) =
        start(notify_config(&stack, &["--notify-slack-webhook-url-file", &url_file])).await;
    let targets = store::list_targets(&stack.db.pool).await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].name, ai_analyzer::notify::ENV_SLACK);
    assert_eq!(targets[0].source, store::TargetSource::Env);

    let feed = Feed::new(&stack).await;
    feed.incident(&agent, 1, Severity::Critical, "oom").await;
    feed.presence(&agent, PresenceState::Offline).await;
    feed.action(&agent, "timeout").await;
    feed.flush().await;
    let posts = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(posts.len(), 3);
    for post in &posts {
        assert_eq!(post.headers["content-type"], "application/json");
        assert!(post.headers.get(format::HEADER_SIGNATURE).is_none());
        let body = post.json();
        assert_slack_shape(&body);
        let all = body.to_string();
        // The agent's hostname cannot mention @channel.
        assert!(!all.contains("<!channel>") && all.contains("&lt;!channel&gt;"), "{all}");
    }
    stop(analyzer, shutdown).await;

    // Without the variable, the next start removes the target.
    let (analyzer, shutdown) = start(notify_config(&stack, &[])).await;
    assert!(store::list_targets(&stack.db.pool).await.unwrap().is_empty());
    stop(analyzer, shutdown).await;
}

#[tokio::test]
async fn routing_follows_each_target_and_a_refusal_is_not_retried() {
    let stack = Stack::start().await;
    let refusing = Receiver::start(StatusCode::BAD_REQUEST).await;
    let offline_only = Receiver::start(StatusCode::NO_CONTENT).await;
    let disabled = Receiver::start(StatusCode::OK).await;
    let refuser = webhook(&stack, "refuser", &refusing.url(), &NotifyEvent::ALL, 60).await;
    let watcher = webhook(&stack, "presence", &offline_only.url(), &[NotifyEvent::Offline], 60).await;
    let off = webhook(&stack, "off", &disabled.url(), &NotifyEvent::ALL, 60).await;
    store::update_target(
        &stack.db.pool,
        off.id,
        &store::TargetUpdate { enabled: Some(false), ..Default::default() },
    )
    .await
    .unwrap();
    let agent = agent(&stack, "web-01").await;
    let (analyzer, shutdown) = start(notify_config(&stack, &[])).await;
    let feed = Feed::new(&stack).await;
    // A feed message nobody can read is passed over, not a reason to stop routing.
    feed.client.publish(feed.subjects.incident_created(), "not a message".into()).await.unwrap();
    feed.incident(&agent, 1, Severity::Critical, "oom").await;
    feed.presence(&agent, PresenceState::Offline).await;
    feed.flush().await;

    let refused = refusing.wait_for(2, Duration::from_secs(20)).await;
    let watched = offline_only.wait_for(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refusing.posts().len(), 2, "a 400 is not retried");
    assert_eq!(refused.len(), 2);
    assert_eq!(watched.len(), 1);
    assert_eq!(offline_only.posts().len(), 1);
    assert_eq!(verified(&watched[0])["event"], "offline");
    assert!(disabled.posts().is_empty());
    let rows = deliveries(&stack, refuser.id).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.status, "failed");
        assert_eq!(row.attempts, 1);
        assert_eq!(row.response_status, Some(400));
        assert_eq!(row.last_error.as_deref(), Some("answered 400 Bad Request"));
    }
    assert_eq!(deliveries(&stack, watcher.id).await[0].status, "delivered");
    assert!(deliveries(&stack, off.id).await.is_empty());
    stop(analyzer, shutdown).await;
}
