//! Several analyzer replicas share the analyze requests (a NATS queue group).

use futures::future::join_all;
use test_support::Stack;
use wire_models::AnalyzeOutcome;

use crate::helpers::*;

#[tokio::test]
async fn two_replicas_share_the_requests() {
    let stack = Stack::start().await;
    let agent = agent(&stack, "web-01").await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let raw = format!("worker-{i}.service: Main process exited, status=1/FAILURE");
        ids.push(incident(&stack, &agent, &NewIncident::new("service_down", "error", "nginx", &raw)).await);
    }
    let (a, stop_a) = start(config(&stack, None, &[])).await;
    let (b, stop_b) = start(config(&stack, None, &[])).await;
    let client = stack.client().await;

    let replies = join_all(ids.iter().map(|id| analyze(&client, &stack, *id, false))).await;
    for (id, reply) in ids.iter().zip(&replies) {
        assert_eq!(reply.incident_id, *id);
        assert!(matches!(reply.outcome, AnalyzeOutcome::Analyzed { .. }), "{reply:?}");
        assert_eq!(row(&stack, *id).await.analysis_status, "ok");
    }
    let (handled_a, handled_b) = (a.requests_handled(), b.requests_handled());
    assert_eq!(handled_a + handled_b, 40);
    assert!(handled_a > 0 && handled_b > 0, "one replica did everything: {handled_a} / {handled_b}");
    stop(a, stop_a).await;
    stop(b, stop_b).await;
}
