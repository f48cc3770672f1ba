use std::time::Duration;

use agent_sim::{Bus, SimAgent};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// The API explains presence: online since T with the last heartbeat and the threshold
/// (live from Redis), then the history of transitions once the host went quiet.
#[tokio::test]
async fn presence_is_explained_live_and_in_history() {
    let api = start(&[]).await;
    let mut args = vec!["presence-tracker".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(api.stack.args_for(&natsbus::auth::Identity::PresenceTracker));
    args.extend(api.stack.redis_args());
    args.extend(["--reconcile-interval".into(), "500ms".into()]);
    let config = test_support::parse_config::<presence_tracker::Config>(args);
    let stop_tracker = CancellationToken::new();
    let tracker = presence_tracker::start(config, stop_tracker.clone()).await.unwrap();

    let agent = SimAgent::numbered("explained", 0);
    storage::agents::register(&api.stack.db.pool, &agent.id, &agent.hostname).await.unwrap();
    let bus = Bus::new(
        api.stack.client().await,
        api.stack.topology.subjects.clone(),
        &api.stack.topology.agents_bucket,
    )
    .await
    .unwrap();
    bus.put_heartbeat(&agent.heartbeat(Duration::from_secs(1))).await.unwrap();
    let path = format!("/api/v1/agents/{}", agent.id);
    let online = test_support::eventually(Duration::from_secs(10), "the agent online in the API", || {
        let (api, path) = (&api, &path);
        async move {
            let (_, body) = api.get(path, &api.viewer).await;
            (body["presence"]["state"] == "online").then_some(body)
        }
    })
    .await;
    assert_eq!(online["presence"]["source"], "redis");
    assert_eq!(online["presence"]["threshold_secs"], 3);
    assert!(online["presence"]["since"].is_string());
    assert!(online["presence"]["last_heartbeat_at"].is_string());

    // Silence: offline after the threshold (3 s) plus the reconcile interval.
    test_support::eventually(Duration::from_secs(10), "the agent offline in the API", || {
        let (api, path) = (&api, &path);
        async move {
            let (_, body) = api.get(path, &api.viewer).await;
            (body["presence"]["state"] == "offline").then_some(())
        }
    })
    .await;
    let (status, history) = api.get(&format!("{path}/presence"), &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["current"]["state"], "offline");
    let transitions = history["transitions"].as_array().unwrap();
    assert_eq!(transitions.len(), 2, "{history}");
    assert_eq!(transitions[0]["state"], "offline");
    assert!(transitions[0]["until"].is_null());
    assert_eq!(transitions[1]["state"], "online");
    assert_eq!(
        transitions[1]["until"], transitions[0]["changed_at"],
        "the online period ends when offline began"
    );

    // Execute refuses an offline agent with 404.
    let (status, _) =
        api.post(&format!("{path}/execute"), &api.operator, serde_json::json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stop_tracker.cancel();
    tracker.wait().await.unwrap();
    api.stop().await;
}
