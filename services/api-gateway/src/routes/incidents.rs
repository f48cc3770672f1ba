use axum::Json;
use axum::extract::State;
use wire_models::{AnalyzeOutcome, AnalyzeReply, AnalyzeRequest, PROTOCOL_VERSION};

use crate::auth::{Operator, Viewer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::requests::{ExecuteSuggested, PatchIncident};
use crate::routes::agents::{ensure_online, find_agent};
use crate::state::AppState;
use crate::views::{IncidentExecuteResponse, IncidentView};

async fn load(state: &AppState, id: i64) -> ApiResult<storage::incidents::IncidentRow> {
    storage::incidents::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} not found")))
}

fn incident_id(raw: i64) -> ApiResult<i64> {
    if raw > 0 {
        Ok(raw)
    } else {
        Err(ApiError::bad_request("invalid-path", "incident ids are positive integers"))
    }
}

/// One incident.
#[utoipa::path(
    get, path = "/api/v1/incidents/{id}", tag = "incidents", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Incident id")),
    responses(
        (status = 200, body = IncidentView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<IncidentView>> {
    Ok(Json(load(&state, incident_id(id)?).await?.into()))
}

/// Acknowledges or resolves an incident.
#[utoipa::path(
    patch, path = "/api/v1/incidents/{id}", tag = "incidents", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Incident id")),
    request_body = PatchIncident,
    responses(
        (status = 200, body = IncidentView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not possible from the current status", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<PatchIncident>,
) -> ApiResult<Json<IncidentView>> {
    let id = incident_id(id)?;
    let target = storage::incidents::IncidentStatus::from(body.status);
    match storage::incidents::change_status(&state.pool, id, target, &user.email).await? {
        storage::incidents::StatusChange::Changed(row) => {
            tracing::info!(incident_id = id, status = %target, by = %user.email, "incident status changed");
            Ok(Json((*row).into()))
        }
        storage::incidents::StatusChange::NotFound => {
            Err(ApiError::NotFound(format!("incident {id} not found")))
        }
        storage::incidents::StatusChange::Refused { current } => {
            Err(ApiError::Conflict(format!("incident {id} is {current}; it cannot become {target}")))
        }
    }
}

/// Asks the ai-analyzer to explain the incident and suggest an action; returns the
/// updated incident.
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/analyze", tag = "incidents", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Incident id")),
    responses(
        (status = 200, body = IncidentView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The analysis failed (recorded on the incident)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No analyzer is running", body = Problem, content_type = "application/problem+json"),
        (status = 504, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn analyze(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<IncidentView>> {
    let id = incident_id(id)?;
    load(&state, id).await?;
    let request = AnalyzeRequest {
        v: PROTOCOL_VERSION,
        incident_id: id,
        force: true,
        requested_by: Some(user.email.clone()),
    };
    let reply: AnalyzeReply =
        natsbus::request(&state.nats, state.subjects.analyze(), &request, state.analyze_timeout)
            .await
            .map_err(|err| {
                crate::error::bus_error(err, "the analyzer", || {
                    ApiError::Unavailable("no ai-analyzer is running; start one or retry later".into())
                })
            })?;
    match reply.outcome {
        AnalyzeOutcome::Analyzed { .. } => Ok(Json(load(&state, id).await?.into())),
        AnalyzeOutcome::NotFound => Err(ApiError::NotFound(format!("incident {id} not found"))),
        AnalyzeOutcome::Failed { reason } => Err(ApiError::BadGateway(format!("analysis failed: {reason}"))),
    }
}

/// Runs the incident's suggested action (checked against the allow-list again) through
/// the same path as a direct execute, and records the outcome on the incident. The
/// body repeats the command and params the operator was shown: if the incident was
/// analyzed again in between and the suggestion changed, nothing runs (409).
#[utoipa::path(
    post, path = "/api/v1/incidents/{id}/execute", tag = "incidents", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Incident id")),
    request_body = ExecuteSuggested,
    responses(
        (status = 200, body = IncidentExecuteResponse),
        (status = 404, description = "Unknown incident, or the agent is offline", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No (valid) suggested action (conflict), or it is not the one in the body (suggestion-changed)", body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 504, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiPath(id): ApiPath<i64>,
    ApiJson(expected): ApiJson<ExecuteSuggested>,
) -> ApiResult<Json<IncidentExecuteResponse>> {
    let id = incident_id(id)?;
    let shown = crate::rpc::command_from(&expected.command, &expected.params)?;
    let incident = load(&state, id).await?;
    let Some(action) = &incident.suggested_action else {
        return Err(ApiError::Conflict(format!("incident {id} has no suggested action; analyze it first")));
    };
    let name = action.get("command").and_then(|c| c.as_str()).unwrap_or_default();
    let params = action.get("params").cloned().unwrap_or(serde_json::Value::Null);
    let command = crate::rpc::command_from(name, &params)
        .map_err(|e| ApiError::Conflict(format!("the suggested action is not allowed: {e}")))?;
    if command != shown {
        return Err(ApiError::SuggestionChanged(format!(
            "incident {id} now suggests {} {}; review it and confirm that instead",
            command.name().as_str(),
            command.params()
        )));
    }
    let agent_id = crate::extract::agent_id(&incident.agent_id)?;
    let agent = find_agent(&state, &agent_id).await?;
    ensure_online(&state, &agent).await?;
    let result = match crate::rpc::execute(&state, &user, &agent_id, &command, Some(id)).await {
        Ok(result) => result,
        Err(err) => {
            // The attempt is part of the incident's story even when it failed.
            let failure = serde_json::json!({"status": "failed", "error": err.to_string(), "by": user.email});
            storage::incidents::record_action(&state.pool, id, &failure).await?;
            return Err(err);
        }
    };
    let recorded = serde_json::to_value(&result).map_err(|e| ApiError::Internal(e.into()))?;
    storage::incidents::record_action(&state.pool, id, &recorded).await?;
    let incident = load(&state, id).await?;
    Ok(Json(IncidentExecuteResponse { result, incident: incident.into() }))
}
