//! Fleet-wide actions: one allow-listed command to the agents a target names (ids, a
//! label selector or a hostname prefix), resolved once at submission and stored.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wire_models::{AgentId, LabelSelector};

use crate::auth::{Operator, Viewer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::fleet_action::{Plan, Recipient};
use crate::routes::{page_size, schema};
use crate::state::AppState;

/// Most requests in flight for one action.
const MAX_CONCURRENCY: u32 = 1000;
const DEFAULT_CONCURRENCY: u32 = 64;
/// Bounds of one agent's wait for its reply.
const MIN_TIMEOUT_MS: u32 = 100;
const MAX_TIMEOUT_MS: u32 = 300_000;
/// Unknown agent ids quoted in an error at most.
const QUOTED_IDS: usize = 10;

/// Which agents: exactly one of the three.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionTarget {
    /// These agents, at least one and at most `ACTION_MAX_TARGETS` (default 100000).
    /// An id that is not enrolled, or revoked, is answered 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<schema::AgentIdDoc>>, inline, min_items = 1)]
    agent_ids: Option<Vec<String>>,
    /// The agents a label selector matches (`env=prod,role in (web,lb)`; see Labels);
    /// at least one requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::SelectorDoc>, inline)]
    selector: Option<String>,
    /// The agents whose hostname starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::HostnamePrefixDoc>, inline)]
    hostname_prefix: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FleetActionRequest {
    /// An allow-listed command (see `POST /api/v1/agents/{id}/execute`).
    #[schema(value_type = schema::CommandNameDoc, inline)]
    command: String,
    /// The command's parameters.
    #[serde(default)]
    params: Option<Value>,
    target: ActionTarget,
    /// Requests in flight at once, 1 to 1000 (default 64).
    #[schema(minimum = 1, maximum = 1000, example = 64)]
    max_concurrency: Option<u32>,
    /// How long each agent has to answer, 100 to 300000 ms (default `RPC_TIMEOUT`).
    #[schema(minimum = 100, maximum = 300000, example = 5000)]
    timeout_ms: Option<u32>,
    /// Resolve the target and answer with the agents, sending nothing.
    #[serde(default)]
    dry_run: bool,
    /// For a mutating command to more agents than `ACTION_CONFIRM_OVER`: the number
    /// of agents targeted, as a dry run reports it (409 `confirmation-required`
    /// without it).
    confirm: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TargetedAgent {
    agent_id: String,
    hostname: String,
    /// Online by the last presence; an offline agent is recorded as skipped.
    online: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DryRun {
    dry_run: bool,
    command: String,
    params: Value,
    total: usize,
    online: usize,
    /// Whether a run needs `confirm` (set to `total`).
    confirm_required: bool,
    agents: Vec<TargetedAgent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionAccepted {
    action_id: Uuid,
    state: &'static str,
    total: usize,
    online: usize,
}

/// The outcomes so far.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionCounts {
    ok: i64,
    error: i64,
    timeout: i64,
    skipped: i64,
    cancelled: i64,
    pending: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FleetActionView {
    id: Uuid,
    command: String,
    params: Value,
    /// The target as submitted.
    target: Value,
    requested_by: String,
    /// `running`, `finished`, `cancelled` or `unfinished` (its runner stopped before
    /// the end: what it recorded stays, the rest is `pending`).
    state: String,
    total: i32,
    max_concurrency: i32,
    timeout_ms: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    cancel_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    cancelled_by: Option<String>,
    /// Only on `GET /api/v1/actions/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<ActionCounts>,
    /// From submission to the end (or to now while running), on `GET /api/v1/actions/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
}

impl FleetActionView {
    fn from_row(row: storage::fleet_actions::ActionRow) -> Self {
        Self {
            id: row.id,
            command: row.command,
            params: row.params,
            target: row.target,
            requested_by: row.requested_by,
            state: row.state,
            total: row.total,
            max_concurrency: row.max_concurrency,
            timeout_ms: row.timeout_ms,
            created_at: row.created_at,
            finished_at: row.finished_at,
            cancel_requested_at: row.cancel_requested_at,
            cancelled_by: row.cancelled_by,
            counts: None,
            duration_ms: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FleetActionPage {
    items: Vec<FleetActionView>,
    /// Pass as `before` for the next page; absent on the last page.
    next_cursor: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionResult {
    agent_id: String,
    hostname: String,
    /// The audit log's request id of this agent's request.
    request_id: Uuid,
    /// `ok`, `error`, `timeout`, `skipped`, `cancelled`, or `pending`.
    outcome: String,
    /// The agent's reply (`status`, `output`, `exit_code`, `error`) or why there is none.
    reply: Option<Value>,
    duration_ms: Option<i32>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionResultPage {
    items: Vec<ActionResult>,
    /// Pass as `after` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-body", detail)
}

/// The target's agents, by id.
async fn resolve(state: &AppState, target: &ActionTarget) -> ApiResult<Vec<storage::agents::Reachable>> {
    use storage::agents::Targeting;
    let limit = i64::try_from(state.actions.max_targets).unwrap_or(i64::MAX).saturating_add(1);
    let given = [target.agent_ids.is_some(), target.selector.is_some(), target.hostname_prefix.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(invalid("target: give exactly one of agent_ids, selector and hostname_prefix"));
    }
    let agents = if let Some(ids) = &target.agent_ids {
        if ids.is_empty() || ids.len() > state.actions.max_targets {
            return Err(invalid(format!(
                "target.agent_ids: 1 to {} agent ids (ACTION_MAX_TARGETS)",
                state.actions.max_targets
            )));
        }
        let mut checked = Vec::with_capacity(ids.len());
        for id in ids {
            let id = AgentId::parse(id)
                .map_err(|_| invalid("target.agent_ids: each id is 12 lowercase hex characters"))?;
            checked.push(id.to_string());
        }
        checked.sort();
        checked.dedup();
        let found = storage::agents::resolve(&state.pool, Targeting::Ids(&checked), limit).await?;
        if found.len() != checked.len() {
            let known: std::collections::HashSet<&str> = found.iter().map(|a| a.id.as_str()).collect();
            let unknown: Vec<&str> = checked
                .iter()
                .map(String::as_str)
                .filter(|id| !known.contains(id))
                .take(QUOTED_IDS)
                .collect();
            // Well-formed ids the fleet does not have (now): not found, as for a
            // single agent's execute, not a malformed request.
            return Err(ApiError::NotFound(format!(
                "target.agent_ids: not enrolled or revoked: {}",
                unknown.join(", ")
            )));
        }
        found
    } else if let Some(selector) = &target.selector {
        let selector =
            LabelSelector::parse(selector).map_err(|e| invalid(format!("target.selector: {e}")))?;
        if selector.is_empty() {
            return Err(invalid("target.selector: an empty selector would select every agent"));
        }
        storage::agents::resolve(&state.pool, Targeting::Selector(&selector), limit).await?
    } else {
        let prefix = target.hostname_prefix.as_deref().unwrap_or_default();
        crate::routes::agents::check_hostname_prefix(prefix).map_err(|e| invalid(format!("target.{e}")))?;
        storage::agents::resolve(&state.pool, Targeting::HostnamePrefix(prefix), limit).await?
    };
    // What a valid target resolves to depends on the fleet now, not on the request:
    // a conflict with the current state (409), which no schema can rule out.
    if agents.len() > state.actions.max_targets {
        return Err(ApiError::Conflict(format!(
            "the target names more than {} agents (ACTION_MAX_TARGETS); narrow it",
            state.actions.max_targets
        )));
    }
    Ok(agents)
}

/// Sends an allow-listed command to many agents, with bounded concurrency. The target
/// is resolved now and stored; the answer (202) comes before the run ends: follow it
/// with `GET /api/v1/actions/{id}` or the live stream's `fleet_action` events.
#[utoipa::path(
    post, path = "/api/v1/actions", tag = "actions", security(("bearer" = [])),
    request_body = FleetActionRequest,
    responses(
        (status = 202, body = ActionAccepted, description = "Started"),
        (status = 200, body = DryRun, description = "A dry run: the agents it would go to"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An agent in `target.agent_ids` is not enrolled, or revoked", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The target names no agent or more than `ACTION_MAX_TARGETS` (conflict), or a mutating command to more than `ACTION_CONFIRM_OVER` agents lacks `confirm` (confirmation-required)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiJson(body): ApiJson<FleetActionRequest>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let params = body.params.unwrap_or_else(|| json!({}));
    let command = crate::rpc::command_from(&body.command, &params)?;
    let max_concurrency = body.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=MAX_CONCURRENCY).contains(&max_concurrency) {
        return Err(invalid(format!("max_concurrency: 1 to {MAX_CONCURRENCY}")));
    }
    let default_timeout = u32::try_from(state.rpc_timeout.as_millis()).unwrap_or(MAX_TIMEOUT_MS);
    let timeout_ms = body.timeout_ms.unwrap_or(default_timeout.clamp(MIN_TIMEOUT_MS, MAX_TIMEOUT_MS));
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(invalid(format!("timeout_ms: {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}")));
    }
    let agents = resolve(&state, &body.target).await?;
    let total = agents.len();
    let online = agents.iter().filter(|a| a.online).count();
    let confirm_required = command.name().is_mutating() && total > state.actions.confirm_over;
    let params = command.params();
    if body.dry_run {
        let agents = agents
            .into_iter()
            .map(|a| TargetedAgent { agent_id: a.id, hostname: a.hostname, online: a.online })
            .collect();
        let name = command.name().as_str().to_owned();
        let answer = DryRun { dry_run: true, command: name, params, total, online, confirm_required, agents };
        return Ok(Json(answer).into_response());
    }
    if total == 0 {
        return Err(ApiError::Conflict(
            "the target names no agent (a dry run shows what it resolves to)".into(),
        ));
    }
    if confirm_required && body.confirm != Some(total as u64) {
        return Err(ApiError::ConfirmationRequired(format!(
            "{} changes state on {total} agents (more than {}): repeat that number in `confirm`",
            command.name().as_str(),
            state.actions.confirm_over
        )));
    }
    let id = Uuid::now_v7();
    let targets: Vec<storage::fleet_actions::Target> = agents
        .iter()
        .map(|a| storage::fleet_actions::Target {
            agent_id: a.id.clone(),
            hostname: a.hostname.clone(),
            request_id: Uuid::now_v7(),
        })
        .collect();
    let target_json = serde_json::to_value(&body.target).map_err(|e| ApiError::Internal(e.into()))?;
    storage::fleet_actions::create(
        &state.pool,
        &storage::fleet_actions::NewAction {
            id,
            command: command.name().as_str(),
            params: &params,
            target: &target_json,
            requested_by: &user.email,
            max_concurrency: i32::try_from(max_concurrency).unwrap_or(i32::MAX),
            timeout_ms: i32::try_from(timeout_ms).unwrap_or(i32::MAX),
        },
        &targets,
    )
    .await?;
    let sends = agents
        .iter()
        .zip(&targets)
        .filter_map(|(a, t)| {
            // Ids came from the agents table, which only holds valid ones.
            let agent = AgentId::parse(&a.id).ok()?;
            Some(Recipient { agent, request_id: t.request_id, online: a.online })
        })
        .collect();
    let plan = Plan {
        id,
        command,
        targets: sends,
        max_concurrency: usize::try_from(max_concurrency).unwrap_or(1),
        timeout: Duration::from_millis(u64::from(timeout_ms)),
    };
    tracing::info!(action_id = %id, by = %user.email, total, online, "fleet action started");
    state.runs.spawn(crate::fleet_action::run(state.clone(), plan));
    let accepted = ActionAccepted { action_id: id, state: "running", total, online };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// The `next_cursor` of the previous page.
    #[param(example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")]
    before: Option<Uuid>,
    /// 1 to 500 (default 100).
    limit: Option<u32>,
}

/// Fleet actions, newest first.
#[utoipa::path(
    get, path = "/api/v1/actions", tag = "actions", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = FleetActionPage))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<FleetActionPage>> {
    let limit = page_size(query.limit)?;
    let rows = storage::fleet_actions::list(&state.pool, query.before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(FleetActionPage {
        items: rows.into_iter().map(FleetActionView::from_row).collect(),
        next_cursor,
    }))
}

async fn load(state: &AppState, id: Uuid) -> ApiResult<storage::fleet_actions::ActionRow> {
    storage::fleet_actions::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("action {id} not found")))
}

/// One fleet action: its counts by outcome and its timing.
#[utoipa::path(
    get, path = "/api/v1/actions/{id}", tag = "actions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Action id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    responses(
        (status = 200, body = FleetActionView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<FleetActionView>> {
    let row = load(&state, id).await?;
    let counts: BTreeMap<String, i64> = storage::fleet_actions::counts(&state.pool, id).await?;
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let end = row.finished_at.unwrap_or_else(chrono::Utc::now);
    let duration_ms = (end - row.created_at).num_milliseconds();
    let mut view = FleetActionView::from_row(row);
    view.counts = Some(ActionCounts {
        ok: count("ok"),
        error: count("error"),
        timeout: count("timeout"),
        skipped: count("skipped"),
        cancelled: count("cancelled"),
        pending: count("pending"),
    });
    view.duration_ms = Some(duration_ms);
    Ok(Json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResultsQuery {
    /// Only this outcome: `ok`, `error`, `timeout`, `skipped`, `cancelled` or `pending`.
    #[param(value_type = Option<OutcomeDoc>, inline)]
    outcome: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<schema::AgentIdDoc>, inline)]
    after: Option<String>,
    /// 1 to 500 (default 100).
    limit: Option<u32>,
}

/// What a per-agent result's `outcome` may be.
const OUTCOMES: [&str; 6] = ["ok", "error", "timeout", "skipped", "cancelled", "pending"];

schema::documented! {
    OutcomeDoc => schema::enumeration(OUTCOMES).into();
}

/// A fleet action's per-agent results, by agent id.
#[utoipa::path(
    get, path = "/api/v1/actions/{id}/results", tag = "actions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Action id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd"), ResultsQuery),
    responses(
        (status = 200, body = ActionResultPage),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn results(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> ApiResult<Json<ActionResultPage>> {
    let limit = page_size(query.limit)?;
    if let Some(outcome) = &query.outcome
        && !OUTCOMES.contains(&outcome.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            "outcome must be ok, error, timeout, skipped, cancelled or pending",
        ));
    }
    let after = query.after.as_deref().map(crate::extract::agent_id).transpose()?;
    load(&state, id).await?;
    let rows = storage::fleet_actions::results(
        &state.pool,
        id,
        query.outcome.as_deref(),
        after.as_ref().map(AgentId::as_str),
        limit,
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.agent_id.clone())).flatten();
    let items = rows
        .into_iter()
        .map(|r| ActionResult {
            agent_id: r.agent_id,
            hostname: r.hostname,
            request_id: r.request_id,
            outcome: r.outcome.unwrap_or_else(|| "pending".to_owned()),
            reply: r.reply,
            duration_ms: r.duration_ms,
            finished_at: r.finished_at,
        })
        .collect();
    Ok(Json(ActionResultPage { items, next_cursor }))
}

/// Stops sending a running fleet action: requests in flight finish, the agents not yet
/// sent to are recorded as `cancelled`. The replica running it sees the request within
/// about a second.
#[utoipa::path(
    post, path = "/api/v1/actions/{id}/cancel", tag = "actions", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Action id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    responses(
        (status = 202, body = FleetActionView, description = "Cancellation asked"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The action is not running"),
    )
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Operator(user): Operator,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<(StatusCode, Json<FleetActionView>)> {
    match storage::fleet_actions::request_cancel(&state.pool, id, &user.email).await? {
        None => return Err(ApiError::NotFound(format!("action {id} not found"))),
        Some(false) => return Err(ApiError::Conflict(format!("action {id} is not running"))),
        Some(true) => {}
    }
    let audit = json!({"action_id": id});
    storage::audit::record(
        &state.pool,
        &storage::audit::NewAudit {
            request_id: Uuid::now_v7(),
            actor: &user.email,
            action: "cancel_fleet_action",
            agent_id: None,
            incident_id: None,
            command: None,
            params: Some(&audit),
        },
        "ok",
        None,
    )
    .await?;
    tracing::info!(action_id = %id, by = %user.email, "fleet action cancellation asked");
    let row = load(&state, id).await?;
    Ok((StatusCode::ACCEPTED, Json(FleetActionView::from_row(row))))
}
