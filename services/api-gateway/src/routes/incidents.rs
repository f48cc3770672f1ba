use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use storage::incidents::IncidentStatus;
use storage::incidents::fleet::{FleetCursor, FleetFilter, FleetSort};
use utoipa::IntoParams;
use wire_models::{AnalyzeOutcome, AnalyzeReply, AnalyzeRequest, EventKind, PROTOCOL_VERSION, Severity};

use crate::auth::{Operator, Viewer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, agent_id};
use crate::requests::{ExecuteSuggested, PatchIncident};
use crate::routes::agents::{ensure_online, find_agent};
use crate::routes::{IncidentPath, page_size, schema};
use crate::state::AppState;
use crate::views::{FleetIncidentPage, IncidentExecuteResponse, IncidentSummary, IncidentView};

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

/// The filters of the fleet-wide list and of its summary.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FleetQuery {
    /// One status or several, comma-separated: `new`, `analyzed`, `acknowledged`,
    /// `resolved`.
    #[param(value_type = Option<Vec<schema::IncidentStatusDoc>>, inline, style = Form, explode = false, min_items = 1)]
    status: Option<String>,
    /// One severity or several, comma-separated: `info`, `warning`, `error`, `critical`.
    #[param(value_type = Option<Vec<schema::SeverityDoc>>, inline, style = Form, explode = false, min_items = 1)]
    severity: Option<String>,
    /// Only critical incidents (`true`) or only the others (`false`).
    critical: Option<bool>,
    /// The event kind (`type`), e.g. `service_down`.
    #[param(value_type = Option<schema::EventKindDoc>, inline)]
    kind: Option<String>,
    /// One agent's incidents.
    #[param(value_type = Option<schema::AgentIdDoc>, inline)]
    agent_id: Option<String>,
    /// Agents whose hostname starts with this.
    #[param(value_type = Option<schema::HostnamePrefixDoc>, inline)]
    hostname_prefix: Option<String>,
    /// From this time on (RFC 3339, inclusive), on the sort's time.
    #[param(example = "2026-01-01T00:00:00Z")]
    since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339, exclusive), on the sort's time.
    #[param(example = "2026-02-01T00:00:00Z")]
    until: Option<DateTime<Utc>>,
    /// Text that `source` or `raw_error` contains, case-insensitively (3 to 200
    /// characters).
    #[param(value_type = Option<schema::IncidentTextDoc>, inline)]
    q: Option<String>,
}

/// Paging and order of the fleet-wide list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FleetPaging {
    /// `created` (default: newest incident first) or `last_seen` (most recent
    /// occurrence first).
    #[param(value_type = Option<SortDoc>, inline)]
    sort: Option<String>,
    /// The `next_cursor` of the previous page, with the same `sort` (a cursor of the
    /// other sort is refused).
    #[param(value_type = Option<schema::FleetCursorDoc>, inline)]
    cursor: Option<String>,
    /// 1 to 500 (default 100).
    limit: Option<u32>,
}

schema::documented! {
    SortDoc => schema::enumeration(FleetSort::ALL.map(FleetSort::as_str)).into();
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-query", detail)
}

/// A comma-separated list of values `parse` knows, without repeats.
fn list_of<T: PartialEq>(
    raw: Option<&str>,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> ApiResult<Vec<T>> {
    let mut out = Vec::new();
    for part in raw.into_iter().flat_map(|s| s.split(',')) {
        let value = parse(part.trim()).ok_or_else(|| invalid(format!("{name}: unknown value {part:?}")))?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

fn fleet_filter(query: FleetQuery) -> ApiResult<FleetFilter> {
    let statuses = list_of(query.status.as_deref(), "status", IncidentStatus::parse)?;
    let severities = list_of(query.severity.as_deref(), "severity", Severity::parse)?;
    let kind = query
        .kind
        .map(|k| {
            EventKind::parse(&k).map(|k| k.as_str().to_owned()).map_err(|e| invalid(format!("kind: {e}")))
        })
        .transpose()?;
    let agent_id = query.agent_id.as_deref().map(agent_id).transpose()?;
    if let Some(prefix) = &query.hostname_prefix {
        crate::routes::agents::check_hostname_prefix(prefix).map_err(invalid)?;
    }
    if let Some(q) = &query.q
        && (!(3..=200).contains(&q.chars().count()) || q.chars().any(char::is_control))
    {
        return Err(invalid("q: 3 to 200 characters, no control characters"));
    }
    // `since` at or after `until` is an empty interval: nothing is in it, which is an
    // answer (an empty page), not a malformed request (the document cannot tie one
    // parameter to another, and a request it allows must not be refused).
    Ok(FleetFilter {
        statuses,
        severities,
        critical: query.critical,
        kind,
        agent_id,
        hostname_prefix: query.hostname_prefix,
        since: query.since,
        until: query.until,
        text: query.q,
    })
}

/// The page cache's name for a read: what was asked, hashed.
fn cache_name(what: &str, parts: impl std::fmt::Debug) -> String {
    format!("{what}:{}", wire_models::sha256_hex(format!("{parts:?}").as_bytes()))
}

/// Every agent's incidents, newest first, filtered (keyset pagination).
#[utoipa::path(
    get, path = "/api/v1/incidents", tag = "incidents", security(("bearer" = [])),
    params(FleetQuery, FleetPaging),
    responses(
        (status = 200, body = FleetIncidentPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<FleetQuery>,
    ApiQuery(paging): ApiQuery<FleetPaging>,
) -> ApiResult<axum::response::Response> {
    let filter = fleet_filter(query)?;
    let limit = page_size(paging.limit)?;
    let sort = match paging.sort.as_deref() {
        None => FleetSort::Created,
        Some(s) => FleetSort::parse(s).ok_or_else(|| invalid("sort must be created or last_seen"))?,
    };
    let cursor = paging
        .cursor
        .as_deref()
        .map(|c| FleetCursor::parse(c, sort).ok_or_else(|| invalid("cursor: not a cursor of this sort")))
        .transpose()?;
    let name = cache_name("incidents", (&filter, sort, cursor, limit));
    crate::cache::read_through(&state.page_cache, &name, async {
        let page = storage::incidents::fleet::list(&state.pool, &filter, sort, cursor, limit).await?;
        let page = FleetIncidentPage {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next.map(|c| c.encode()),
        };
        serde_json::to_vec(&page).map_err(|e| ApiError::Internal(e.into()))
    })
    .await
}

/// How many incidents the same filters keep, per status (for "12 new, 3 critical").
#[utoipa::path(
    get, path = "/api/v1/incidents/summary", tag = "incidents", security(("bearer" = [])),
    params(FleetQuery),
    responses(
        (status = 200, body = IncidentSummary),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn summary(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<FleetQuery>,
) -> ApiResult<axum::response::Response> {
    let filter = fleet_filter(query)?;
    let name = cache_name("incidents-summary", &filter);
    crate::cache::read_through(&state.page_cache, &name, async {
        let summary: IncidentSummary = storage::incidents::fleet::summary(&state.pool, &filter).await?.into();
        serde_json::to_vec(&summary).map_err(|e| ApiError::Internal(e.into()))
    })
    .await
}

/// One incident.
#[utoipa::path(
    get, path = "/api/v1/incidents/{id}", tag = "incidents", security(("bearer" = [])),
    params(IncidentPath),
    responses(
        (status = 200, body = IncidentView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(IncidentPath { id }): ApiPath<IncidentPath>,
) -> ApiResult<Json<IncidentView>> {
    Ok(Json(load(&state, incident_id(id)?).await?.into()))
}

/// Acknowledges or resolves an incident.
#[utoipa::path(
    patch, path = "/api/v1/incidents/{id}", tag = "incidents", security(("bearer" = [])),
    params(IncidentPath),
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
    ApiPath(IncidentPath { id }): ApiPath<IncidentPath>,
    ApiJson(body): ApiJson<PatchIncident>,
) -> ApiResult<Json<IncidentView>> {
    let id = incident_id(id)?;
    let target = storage::incidents::IncidentStatus::from(body.status);
    match storage::incidents::change_status(&state.pool, id, target, &user.email).await? {
        storage::incidents::StatusChange::Changed(row) => {
            tracing::info!(incident_id = id, status = %target, by = %user.email, "incident status changed");
            if let Ok(agent_id) = wire_models::AgentId::parse(&row.agent_id) {
                state
                    .feed
                    .incident_updated(&wire_models::IncidentUpdated {
                        v: PROTOCOL_VERSION,
                        incident_id: id,
                        agent_id,
                        change: wire_models::IncidentChange::Status,
                        status: Some(row.status.as_str().to_owned()),
                        occurrences: Some(row.occurrences),
                        last_seen_at: Some(row.last_seen_at),
                        analysis_status: None,
                        updated_at: row.updated_at,
                    })
                    .await;
            }
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
    params(IncidentPath),
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
    ApiPath(IncidentPath { id }): ApiPath<IncidentPath>,
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
    params(IncidentPath),
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
    ApiPath(IncidentPath { id }): ApiPath<IncidentPath>,
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
    let result =
        match crate::rpc::execute(&state, &user, &agent_id, &command, Some(id), std::future::ready(Ok(())))
            .await
        {
            Ok(result) => result,
            Err(err) => {
                // The attempt is part of the incident's story even when it failed.
                let failure =
                    serde_json::json!({"status": "failed", "error": err.to_string(), "by": user.email});
                storage::incidents::record_action(&state.pool, id, &failure).await?;
                announce_action(&state, id, &agent_id).await;
                return Err(err);
            }
        };
    let recorded = serde_json::to_value(&result).map_err(|e| ApiError::Internal(e.into()))?;
    storage::incidents::record_action(&state.pool, id, &recorded).await?;
    announce_action(&state, id, &agent_id).await;
    let incident = load(&state, id).await?;
    Ok(Json(IncidentExecuteResponse { result, incident: incident.into() }))
}

/// Tells the change feed the incident's action result is recorded: after the write,
/// so a client that reloads the incident on this event reads the result, and after the
/// action's own `action.finished` (which waits for a batch otherwise), so the stream
/// tells the two in the order they happened.
async fn announce_action(state: &AppState, incident_id: i64, agent_id: &wire_models::AgentId) {
    state.announcer.settled().await;
    state
        .feed
        .incident_updated(&wire_models::IncidentUpdated {
            v: wire_models::PROTOCOL_VERSION,
            incident_id,
            agent_id: agent_id.clone(),
            change: wire_models::IncidentChange::Action,
            status: None,
            occurrences: None,
            last_seen_at: None,
            analysis_status: None,
            updated_at: chrono::Utc::now(),
        })
        .await;
}
