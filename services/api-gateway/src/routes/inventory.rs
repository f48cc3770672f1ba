//! An agent's inventory history and the difference between two snapshots.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiPath, ApiQuery, agent_id};
use crate::routes::agents::find_agent;
use crate::routes::{AgentPath, page_size};
use crate::state::AppState;
use crate::views::*;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

/// An agent's inventory history (a row per change), newest first.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/inventory", tag = "agents", security(("bearer" = [])),
    params(AgentPath, PageQuery),
    responses(
        (status = 200, body = InventoryPage),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn inventory(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<InventoryPage>> {
    let id = agent_id(&id)?;
    let limit = page_size(query.limit)?;
    find_agent(&state, &id).await?;
    let rows = storage::inventory::history(&state.pool, &id, query.before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(InventoryPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffQuery {
    /// Id of the older snapshot.
    from: i64,
    /// Id of the newer snapshot.
    to: i64,
}

/// What changed between two of an agent's snapshots.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/inventory/diff", tag = "agents", security(("bearer" = [])),
    params(AgentPath, DiffQuery),
    responses(
        (status = 200, body = InventoryDiff),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn inventory_diff(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiPath(AgentPath { id }): ApiPath<AgentPath>,
    ApiQuery(query): ApiQuery<DiffQuery>,
) -> ApiResult<Json<InventoryDiff>> {
    let id = agent_id(&id)?;
    let from = storage::inventory::get(&state.pool, &id, query.from).await?;
    let to = storage::inventory::get(&state.pool, &id, query.to).await?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::NotFound(format!(
            "snapshot {} or {} of agent {id} not found",
            query.from, query.to
        )));
    };
    let mut changes = Vec::new();
    crate::inventory_diff::diff_values("", &from.data, &to.data, &mut changes);
    Ok(Json(InventoryDiff { from: from.id, to: to.id, changes }))
}
