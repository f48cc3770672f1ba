//! Presence as the API shows it: live from Redis (what the presence-tracker keeps),
//! with Postgres (the durable mirror) when Redis has no word or is unreachable.

use std::collections::HashMap;

use chrono::Utc;
use wire_models::AgentId;

use crate::state::AppState;
use crate::views::{AgentView, PresenceInfo};

/// Presence of one agent from its Postgres row.
fn from_row(row: &storage::agents::AgentRow, state: &AppState) -> PresenceInfo {
    PresenceInfo {
        state: row.status.clone(),
        since: row.status_changed_at,
        last_heartbeat_at: row.last_seen_at,
        threshold_secs: u32::try_from(state.default_offline_threshold.as_secs()).ok(),
        source: "postgres".into(),
    }
}

fn from_view(view: &presence::PresenceView) -> PresenceInfo {
    PresenceInfo {
        state: view.state.as_str().to_owned(),
        since: view.since,
        last_heartbeat_at: view.last_seen,
        threshold_secs: Some(view.threshold_secs),
        source: "redis".into(),
    }
}

/// What Redis says of `ids` (nothing when it is unreachable).
pub(crate) async fn live_views(
    state: &AppState,
    ids: &[AgentId],
) -> HashMap<AgentId, presence::PresenceView> {
    match state.presence.read(ids).await {
        Ok(live) => live,
        Err(err) => {
            // Redis down: the durable record still answers, a few seconds behind.
            tracing::warn!(error = %err, "presence read from redis failed; using postgres");
            HashMap::new()
        }
    }
}

/// What Redis says of one agent, through the execute path's cache of presence.
pub(crate) async fn live_view(state: &AppState, id: &AgentId) -> Option<presence::PresenceView> {
    let start = match state.presence_cache.get(id) {
        Ok(view) => return Some(view),
        Err(start) => start,
    };
    let view = live_views(state, std::slice::from_ref(id)).await.remove(id)?;
    state.presence_cache.put(id.clone(), view.clone(), start);
    Some(view)
}

/// Presence for each row, Redis first.
pub(crate) async fn presence_of(
    state: &AppState,
    rows: &[storage::agents::AgentRow],
) -> HashMap<String, PresenceInfo> {
    let ids: Vec<AgentId> = rows.iter().filter_map(|r| AgentId::parse(&r.id).ok()).collect();
    let live = live_views(state, &ids).await;
    combine(state, rows, &live)
}

/// Presence for each row from what Redis said (`live`), the row where it said nothing.
pub(crate) fn combine(
    state: &AppState,
    rows: &[storage::agents::AgentRow],
    live: &HashMap<AgentId, presence::PresenceView>,
) -> HashMap<String, PresenceInfo> {
    rows.iter()
        .map(|row| {
            let info = AgentId::parse(&row.id)
                .ok()
                .and_then(|id| live.get(&id))
                .map(from_view)
                .unwrap_or_else(|| from_row(row, state));
            (row.id.clone(), info)
        })
        .collect()
}

/// Agent views for rows, with the freshest presence available.
pub(crate) async fn agent_views(state: &AppState, rows: Vec<storage::agents::AgentRow>) -> Vec<AgentView> {
    let mut presence = presence_of(state, &rows).await;
    rows.into_iter()
        .map(|row| {
            let presence = presence.remove(&row.id).unwrap_or_else(|| from_row(&row, state));
            AgentView {
                id: row.id,
                hostname: row.hostname,
                presence,
                meta: row.meta,
                labels: row.effective_labels,
                operator_labels: row.labels,
                enrolled_at: row.enrolled_at,
                revoked_at: row.revoked_at,
                inventory_at: row.inventory_at,
                created_at: row.created_at,
            }
        })
        .collect()
}

/// Slack past an agent's deadline before the gateway stops trusting an "online" that
/// the tracker has not confirmed (the tracker reconciles every few seconds).
const STALE_SLACK_SECS: i64 = 10;

/// Whether an agent counts as online right now: marked online, and not silent far past
/// its threshold (which would mean the tracker has not caught up).
pub(crate) fn is_online(info: &PresenceInfo) -> bool {
    if info.state != "online" {
        return false;
    }
    match (info.last_heartbeat_at, info.threshold_secs) {
        (Some(seen), Some(threshold)) => {
            seen + chrono::Duration::seconds(i64::from(threshold) + STALE_SLACK_SECS) > Utc::now()
        }
        _ => true,
    }
}
