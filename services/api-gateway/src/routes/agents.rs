use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Admin, Operator, Viewer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, agent_id};
use crate::presence_view;
use crate::requests::*;
use crate::routes::{AgentPath, page_size, schema};
use crate::state::AppState;
use crate::views::*;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// `online` or `offline`.
    #[param(value_type = Option<AgentStatusDoc>, inline)]
    status: Option<String>,
    /// Only agents whose hostname starts with this.
    #[param(value_type = Option<schema::HostnamePrefixDoc>, inline)]
    hostname_prefix: Option<String>,
    /// A label selector, Kubernetes-style: requirements joined by commas, all of which
    /// must hold: `env=prod`, `env!=dev`, `role in (web,lb)`, `zone notin (eu-1)`,
    /// `canary` (has the label), `!legacy` (has not). At least one requirement.
    #[param(value_type = Option<schema::SelectorDoc>, inline)]
    selector: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<schema::AgentIdDoc>, inline)]
    after: Option<String>,
    /// 1 to 500 (default 100).
    limit: Option<u32>,
}

/// What `status` filters on.
const AGENT_STATUSES: [wire_models::PresenceState; 2] =
    [wire_models::PresenceState::Online, wire_models::PresenceState::Offline];

schema::documented! {
    AgentStatusDoc => schema::enumeration(AGENT_STATUSES.map(wire_models::PresenceState::as_str)).into();
    DeleteHistoryDoc => schema::enumeration(HISTORY).into();
}

/// Enrolled agents with their presence, ordered by id (keyset pagination).
#[utoipa::path(
    get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = AgentPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<axum::response::Response> {
    let limit = page_size(query.limit)?;
    if let Some(status) = &query.status
        && !AGENT_STATUSES.iter().any(|s| s.as_str() == status)
    {
        return Err(ApiError::bad_request("invalid-query", "status must be online or offline"));
    }
    if let Some(prefix) = &query.hostname_prefix {
        check_hostname_prefix(prefix).map_err(|e| ApiError::bad_request("invalid-query", e))?;
    }
    let selector = query
        .selector
        .as_deref()
        .map(wire_models::LabelSelector::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid-query", format!("selector: {e}")))?;
    // An empty value is refused like any other invalid one (the document says so): a
    // filter left out is the way to ask for everything.
    if selector.as_ref().is_some_and(wire_models::LabelSelector::is_empty) {
        return Err(ApiError::bad_request("invalid-query", "selector: give at least one requirement"));
    }
    let after = query.after.as_deref().map(agent_id).transpose()?;
    // The selector's canonical form: the same selector however it was spelled.
    let canonical = selector.as_ref().map(ToString::to_string);
    let cache_key = format!(
        "agents:{}",
        wire_models::sha256_hex(
            format!("{:?}|{:?}|{canonical:?}|{:?}|{limit}", query.status, query.hostname_prefix, after)
                .as_bytes()
        )
    );
    // A hit is served as the stored bytes: no decoding and re-encoding of the page.
    crate::cache::read_through(&state.page_cache, &cache_key, async {
        let rows = storage::agents::list(
            &state.pool,
            &storage::agents::AgentFilter {
                status: query.status.as_deref(),
                hostname_prefix: query.hostname_prefix.as_deref(),
                selector: selector.as_ref(),
                after: after.as_ref().map(|a| a.as_str()),
                limit,
                include_revoked: false,
            },
        )
        .await?;
        let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.clone())).flatten();
        let page = AgentPage { items: presence_view::agent_views(&state, rows).await, next_cursor };
        serde_json::to_vec(&page).map_err(|e| ApiError::Internal(e.into()))
    })
    .await
}

/// One agent with its presence and latest inventory.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(AgentPath),
    responses(
        (status = 200, body = AgentDetail),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
) -> ApiResult<Json<AgentDetail>> {
    let id = agent_id(&id)?;
    let row = find_agent(&state, &id).await?;
    let latest = storage::inventory::latest(&state.pool, &id).await?;
    let agent = presence_view::agent_views(&state, vec![row]).await.into_iter().next();
    let agent = agent.ok_or_else(|| ApiError::NotFound(format!("agent {id} not found")))?;
    Ok(Json(AgentDetail { agent, latest_inventory: latest.map(Into::into) }))
}

/// Sets or removes labels operators give an agent. They override its inventory's
/// labels of the same key.
#[utoipa::path(
    patch, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(AgentPath),
    request_body = AgentPatch,
    responses(
        (status = 200, body = AgentView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The agent would have more than 64 operator labels", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiJson(body): ApiJson<AgentPatch>,
) -> ApiResult<Json<AgentView>> {
    let id = agent_id(&id)?;
    let changes = body.labels;
    if changes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-body",
            "labels: give at least one label to set or remove",
        ));
    }
    if changes.len() > wire_models::MAX_LABELS {
        return Err(ApiError::bad_request(
            "invalid-body",
            format!("labels: at most {} in one request", wire_models::MAX_LABELS),
        ));
    }
    for (key, value) in &changes {
        let checked = wire_models::check_label_key(key)
            .and_then(|()| value.as_deref().map_or(Ok(()), wire_models::check_label_value));
        checked.map_err(|e| ApiError::bad_request("invalid-body", e.to_string()))?;
    }
    let request_id = uuid::Uuid::now_v7();
    let params = serde_json::json!({ "labels": &changes });
    storage::audit::begin(
        &state.pool,
        &storage::audit::NewAudit {
            request_id,
            actor: &user.email,
            action: "set_labels",
            agent_id: Some(id.as_str()),
            incident_id: None,
            command: None,
            params: Some(&params),
        },
    )
    .await?;
    let row = match storage::agents::set_labels(&state.pool, &id, &changes, wire_models::MAX_LABELS).await? {
        storage::agents::LabelsSet::Done(row) => *row,
        storage::agents::LabelsSet::NotFound => {
            storage::audit::finish(&state.pool, request_id, "not_found", None, 0).await?;
            return Err(ApiError::NotFound(format!("agent {id} not found")));
        }
        storage::agents::LabelsSet::TooMany => {
            // A valid change the agent's current labels leave no room for: the state
            // refuses it, not the request's shape.
            storage::audit::finish(&state.pool, request_id, "invalid", None, 0).await?;
            return Err(ApiError::Conflict(format!(
                "labels: an agent has at most {} operator labels",
                wire_models::MAX_LABELS
            )));
        }
    };
    storage::audit::finish(&state.pool, request_id, "ok", None, 0).await?;
    tracing::info!(agent_id = %id, by = %user.email, labels = changes.len(), "agent labels changed");
    let view = presence_view::agent_views(&state, vec![row]).await.into_iter().next();
    Ok(Json(view.ok_or_else(|| ApiError::NotFound(format!("agent {id} not found")))?))
}

/// Revokes an agent: its data stays, it can no longer send anything or be enrolled
/// again, and its bus credentials stop working.
#[utoipa::path(
    delete, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(AgentPath),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
) -> ApiResult<StatusCode> {
    let id = agent_id(&id)?;
    let request_id = uuid::Uuid::now_v7();
    storage::audit::begin(
        &state.pool,
        &storage::audit::NewAudit {
            request_id,
            actor: &user.email,
            action: "revoke_agent",
            agent_id: Some(id.as_str()),
            incident_id: None,
            command: None,
            params: None,
        },
    )
    .await?;
    let revoked = storage::agents::revoke(&state.pool, &id).await?;
    state.agents.forget(&id.to_string());
    if !revoked {
        storage::audit::finish(&state.pool, request_id, "not_found", None, 0).await?;
        return Err(ApiError::NotFound(format!("agent {id} not found or already revoked")));
    }
    let keys = storage::credentials::revoke_agent(&state.pool, &id).await?;
    // The database revocation stands either way; if the bus did not hear about it,
    // the periodic resync delivers it.
    let pushed = state.bus_auth.sync(&state.pool).await;
    let outcome = if pushed.is_ok() { "ok" } else { "ok_bus_pending" };
    let detail = serde_json::json!({"credentials_revoked": keys});
    storage::audit::finish(&state.pool, request_id, outcome, Some(&detail), 0).await?;
    if let Err(err) = pushed {
        tracing::warn!(agent_id = %id, error = %err, "revocation not yet pushed to the bus; the resync will retry");
    }
    tracing::info!(agent_id = %id, by = %user.email, "agent revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteRevokedQuery {
    /// `keep` (default): the agent's incidents, inventory and presence history stay,
    /// under its revoked id. `purge`: they are deleted with it.
    #[param(value_type = Option<DeleteHistoryDoc>, inline)]
    history: Option<String>,
}

/// What `history` may be: keep, or purge.
const HISTORY: [&str; 2] = ["keep", "purge"];

/// A hostname prefix filter: 1 to 253 characters (as the document counts them: code
/// points), no control characters.
pub(crate) fn check_hostname_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() || prefix.chars().count() > 253 || prefix.chars().any(char::is_control) {
        Err("hostname_prefix: 1 to 253 characters, no control characters")
    } else {
        Ok(())
    }
}

/// Deletes a revoked agent so its machine can enroll again (as a new agent). Its
/// revoked credentials stay revoked.
#[utoipa::path(
    delete, path = "/api/v1/revoked-agents/{id}", tag = "agents", security(("bearer" = [])),
    params(AgentPath, DeleteRevokedQuery),
    responses(
        (status = 204, description = "Deleted; the machine may enroll again"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No revoked agent with this id (revoke it first)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_revoked(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiQuery(query): ApiQuery<DeleteRevokedQuery>,
) -> ApiResult<StatusCode> {
    let id = agent_id(&id)?;
    let purge = match query.history.as_deref() {
        None => false,
        Some(history) if HISTORY.contains(&history) => history == "purge",
        Some(_) => return Err(ApiError::bad_request("invalid-query", "history must be keep or purge")),
    };
    let deleted = storage::agents::delete_revoked(&state.pool, &id, purge).await?;
    let detail = serde_json::json!({"history": if purge { "purge" } else { "keep" }});
    crate::routes::admin::audit_change(
        &state,
        &user,
        "delete_agent",
        Some(id.as_str()),
        if deleted { "ok" } else { "not_found" },
        detail,
    )
    .await?;
    if !deleted {
        return Err(ApiError::NotFound(format!(
            "no revoked agent {id}; revoke it first (DELETE /api/v1/agents/{id})"
        )));
    }
    tracing::info!(agent_id = %id, by = %user.email, purge, "revoked agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct IncidentQuery {
    /// `new`, `analyzed`, `acknowledged` or `resolved`.
    #[param(value_type = Option<schema::IncidentStatusDoc>, inline)]
    status: Option<String>,
    /// The `next_cursor` of the previous page.
    before: Option<i64>,
    /// 1 to 500 (default 100).
    limit: Option<u32>,
}

/// An agent's incidents, newest first.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/incidents", tag = "agents", security(("bearer" = [])),
    params(AgentPath, IncidentQuery),
    responses(
        (status = 200, body = IncidentPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn incidents(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiQuery(query): ApiQuery<IncidentQuery>,
) -> ApiResult<Json<IncidentPage>> {
    let id = agent_id(&id)?;
    let limit = page_size(query.limit)?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            storage::incidents::IncidentStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-query",
                    "status must be new, analyzed, acknowledged or resolved",
                )
            })
        })
        .transpose()?;
    let rows = storage::incidents::list_for_agent(&state.pool, &id, status, query.before, limit).await?;
    // One query answers the common case; only an empty page needs to know whether the
    // agent exists at all (404) or simply has nothing to show.
    if rows.is_empty() {
        find_agent(&state, &id).await?;
    }
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(IncidentPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Runs an allow-listed command on the agent and returns its reply.
#[utoipa::path(
    post, path = "/api/v1/agents/{id}/execute", tag = "agents", security(("bearer" = [])),
    params(AgentPath),
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The agent's reply", body = ExecuteResponse),
        (status = 400, description = "Invalid command or params; nothing was sent", body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown or offline agent", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The agent's reply was invalid", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "No reply within the timeout", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiJson(body): ApiJson<ExecuteRequest>,
) -> ApiResult<Json<ExecuteResponse>> {
    let id = agent_id(&id)?;
    if let Some(body_id) = &body.agent_id
        && body_id != id.as_str()
    {
        return Err(ApiError::bad_request("agent-mismatch", "agent_id in the body differs from the path"));
    }
    let command = crate::rpc::command_from(&body.command, &body.params)?;
    let agent = find_agent_cached(&state, &id).await?;
    // Whether it is online is read while its audit row is written: an agent found
    // offline leaves a row saying so, and nothing is sent.
    let online = async {
        let live: std::collections::HashMap<_, _> =
            presence_view::live_view(&state, &id).await.map(|view| (id.clone(), view)).into_iter().collect();
        // Without live presence, the row's mirror decides: read fresh, not cached.
        let row =
            if live.contains_key(&id) { agent.clone() } else { Arc::new(find_agent(&state, &id).await?) };
        let presence = presence_view::combine(&state, std::slice::from_ref(&*row), &live).remove(&row.id);
        online_or_refuse(&row, presence.as_ref())
    };
    Ok(Json(crate::rpc::execute(&state, &user, &id, &command, None, online).await?))
}

/// Looks an agent up; revoked agents are as good as unknown.
pub(crate) async fn find_agent(
    state: &AppState,
    id: &wire_models::AgentId,
) -> ApiResult<storage::agents::AgentRow> {
    storage::agents::get(&state.pool, id)
        .await?
        .filter(|row| row.revoked_at.is_none())
        .ok_or_else(|| ApiError::NotFound(format!("agent {id} not found")))
}

/// [`find_agent`] through the execute path's cache of agents.
async fn find_agent_cached(
    state: &AppState,
    id: &wire_models::AgentId,
) -> ApiResult<Arc<storage::agents::AgentRow>> {
    if let Some(row) = state.agents.get(&id.to_string()) {
        return Ok(row);
    }
    let row = Arc::new(find_agent(state, id).await?);
    state.agents.put(id.to_string(), Arc::clone(&row));
    Ok(row)
}

pub(crate) async fn ensure_online(state: &AppState, agent: &storage::agents::AgentRow) -> ApiResult<()> {
    let presence = presence_view::presence_of(state, std::slice::from_ref(agent)).await.remove(&agent.id);
    online_or_refuse(agent, presence.as_ref())
}

fn online_or_refuse(
    agent: &storage::agents::AgentRow,
    presence: Option<&crate::views::PresenceInfo>,
) -> ApiResult<()> {
    if presence.is_some_and(presence_view::is_online) {
        Ok(())
    } else {
        Err(ApiError::AgentOffline(format!("agent {} is offline", agent.id)))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PresenceQuery {
    /// The `next_cursor` of the previous page.
    before: Option<i64>,
    /// 1 to 500 (default 100).
    limit: Option<u32>,
}

/// An agent's presence now and its history of transitions: when it was down, and for
/// how long.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/presence", tag = "agents", security(("bearer" = [])),
    params(AgentPath, PresenceQuery),
    responses(
        (status = 200, body = PresenceHistory),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn presence(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiQuery(query): ApiQuery<PresenceQuery>,
) -> ApiResult<Json<PresenceHistory>> {
    let id = agent_id(&id)?;
    let limit = page_size(query.limit)?;
    let row = find_agent(&state, &id).await?;
    let current = presence_view::presence_of(&state, std::slice::from_ref(&row))
        .await
        .remove(&row.id)
        .ok_or_else(|| ApiError::NotFound(format!("agent {id} not found")))?;
    let records =
        storage::presence::history(&state.pool, &id, query.before, u32::try_from(limit).unwrap_or(100))
            .await?;
    let next_cursor = (records.len() as i64 == limit).then(|| records.last().map(|r| r.id)).flatten();
    Ok(Json(PresenceHistory {
        agent_id: id.to_string(),
        current,
        transitions: records
            .into_iter()
            .map(|r| PresenceTransitionView {
                id: r.id,
                state: r.state.as_str().to_owned(),
                changed_at: r.changed_at,
                until: r.until,
                last_seen_at: r.last_seen_at,
                threshold_secs: r.threshold_secs,
                reason: r.reason,
            })
            .collect(),
        next_cursor,
    }))
}
