//! Sending an allow-listed action to an agent: the one path both executes (direct and
//! an incident's suggested action) take. Audit row first, then the request, then the
//! outcome on the audit row.

use std::time::Instant;

use serde_json::{Value, json};
use uuid::Uuid;
use wire_models::{AgentId, Command, PROTOCOL_VERSION, RpcReply, RpcRequest, RpcStatus};

use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::state::AppState;
use crate::views::{ExecuteResponse, RpcErrorView};

/// Sends `command` to `agent` (known to exist) and waits for its reply, unless `online`,
/// which runs while the audit row is written, refuses: then the row records the refusal
/// and nothing is sent.
#[tracing::instrument(skip_all, fields(agent_id = %agent, command = %command.name(), request_id))]
pub(crate) async fn execute(
    state: &AppState,
    user: &CurrentUser,
    agent: &AgentId,
    command: &Command,
    incident_id: Option<i64>,
    online: impl Future<Output = Result<(), ApiError>>,
) -> Result<ExecuteResponse, ApiError> {
    let request_id = Uuid::now_v7();
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    let params = command.params();
    let action = if incident_id.is_some() { "execute_suggested" } else { "execute" };
    let pending = storage::audit::PendingAudit {
        request_id,
        actor: user.email.clone(),
        action: action.to_owned(),
        agent_id: Some(agent.to_string()),
        incident_id,
        command: Some(command.name().as_str().to_owned()),
        params: Some(params.clone()),
    };
    let (written, online) = tokio::join!(state.audit.begin(pending), online);
    written?;
    if let Err(refused) = online {
        let refusal = storage::audit::FinishedAudit {
            request_id,
            outcome: "offline".to_owned(),
            result: Some(json!({"error": refused.to_string(), "sent": false})),
            duration_ms: 0,
        };
        if let Err(err) = state.audit.finish(refusal).await {
            tracing::error!(error = %err, %request_id, "recording the refusal failed");
        }
        return Err(refused);
    }

    let started = Instant::now();
    let outcome = send(state, agent, command, request_id).await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (label, result) = match &outcome {
        Ok(reply) => (
            if reply.status == RpcStatus::Ok { "ok" } else { "error" },
            json!({"status": reply.status, "output": reply.output, "exit_code": reply.exit_code, "error": reply.error}),
        ),
        Err(ApiError::AgentOffline(_)) => ("offline", json!({"error": "no agent is listening"})),
        Err(ApiError::GatewayTimeout(_)) => ("timeout", json!({"error": "no reply within the timeout"})),
        Err(ApiError::BadGateway(detail)) => ("invalid_reply", json!({"error": detail})),
        Err(other) => ("failed", json!({"error": other.to_string()})),
    };
    metrics::histogram!("opspilot_rpc_seconds", "command" => command.name().as_str(), "outcome" => label)
        .record(started.elapsed().as_secs_f64());
    let finished = storage::audit::FinishedAudit {
        request_id,
        outcome: label.to_owned(),
        result: Some(result),
        duration_ms: i64::try_from(elapsed_ms).unwrap_or(i64::MAX),
    };
    if let Err(err) = state.audit.finish(finished).await {
        // The action went out; losing its outcome row must not turn into an error here.
        tracing::error!(error = %err, %request_id, "recording the action's outcome failed");
    }
    // What changes a host, and what did not go as asked, is logged; a read-only command
    // that answered (a ping, a status) is in the audit log and the metrics already, and
    // logging each would be most of a busy gateway's log.
    if command.name().is_mutating() || label != "ok" {
        tracing::info!(outcome = label, elapsed_ms, "action executed");
    } else {
        tracing::debug!(outcome = label, elapsed_ms, "action executed");
    }
    let finished = wire_models::ActionFinished {
        v: PROTOCOL_VERSION,
        request_id,
        agent_id: agent.clone(),
        command: command.name().as_str().to_owned(),
        outcome: label.to_owned(),
        incident_id,
        duration_ms: i64::try_from(elapsed_ms).unwrap_or(i64::MAX),
        finished_at: chrono::Utc::now(),
    };
    // The answer does not wait for the announcement.
    state.announcer.announce(finished);
    let reply = outcome?;
    Ok(ExecuteResponse {
        request_id,
        agent_id: agent.to_string(),
        command: command.name().as_str().to_owned(),
        params,
        status: match reply.status {
            RpcStatus::Ok => "ok".into(),
            RpcStatus::Error => "error".into(),
        },
        output: reply.output,
        exit_code: reply.exit_code,
        error: reply.error.map(|e| RpcErrorView { code: e.code, message: e.message }),
        duration_ms: reply.duration_ms,
        round_trip_ms: elapsed_ms,
    })
}

async fn send(
    state: &AppState,
    agent: &AgentId,
    command: &Command,
    request_id: Uuid,
) -> Result<RpcReply, ApiError> {
    let request = RpcRequest {
        v: PROTOCOL_VERSION,
        request_id,
        command: command.clone(),
        issued_at: chrono::Utc::now(),
        timeout_ms: u32::try_from(state.rpc_timeout.as_millis()).unwrap_or(u32::MAX),
    };
    let reply: RpcReply =
        natsbus::request(&state.nats, state.subjects.rpc(agent), &request, state.rpc_timeout).await.map_err(
            |err| {
                crate::error::bus_error(err, &format!("agent {agent}"), || {
                    ApiError::AgentOffline(format!("agent {agent} is not connected"))
                })
            },
        )?;
    if reply.request_id != request_id {
        return Err(ApiError::BadGateway(format!(
            "agent {agent} answered request {} instead of {request_id}",
            reply.request_id
        )));
    }
    Ok(reply)
}

/// Validates a command from an API body or an incident's suggested action.
pub(crate) fn command_from(name: &str, params: &Value) -> Result<Command, ApiError> {
    Command::from_parts(name, params).map_err(|e| ApiError::bad_request("invalid-command", e.to_string()))
}
