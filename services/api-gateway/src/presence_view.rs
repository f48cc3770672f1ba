//! Presence as the API shows it: live from Redis (what the presence-tracker keeps),
//! with Postgres (the durable mirror) when Redis has no word or is unreachable.

use chrono::Utc;

use crate::state::AppState;
use crate::views::{AgentView, PresenceInfo};

/// Presence of one agent from its Postgres row.
pub(crate) fn from_row(row: &storage::agents::AgentRow, state: &AppState) -> PresenceInfo {
    PresenceInfo {
        state: row.status.clone(),
        since: row.status_changed_at,
        last_heartbeat_at: row.last_seen_at,
        threshold_secs: u32::try_from(state.default_offline_threshold.as_secs()).ok(),
        source: "postgres".into(),
    }
}

/// Agent views for rows, with the freshest presence available.
pub(crate) async fn agent_views(state: &AppState, rows: Vec<storage::agents::AgentRow>) -> Vec<AgentView> {
    rows.into_iter()
        .map(|row| {
            let presence = from_row(&row, state);
            AgentView {
                id: row.id,
                hostname: row.hostname,
                presence,
                meta: row.meta,
                enrolled_at: row.enrolled_at,
                revoked_at: row.revoked_at,
                inventory_at: row.inventory_at,
                created_at: row.created_at,
            }
        })
        .collect()
}

/// Whether an agent counts as online right now.
pub(crate) fn is_online(info: &PresenceInfo) -> bool {
    info.state == "online"
        && info.since.is_none_or(|since| since <= Utc::now() + chrono::Duration::seconds(5))
}
