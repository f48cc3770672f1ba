//! Fleet-wide incident reads: every agent's incidents, filtered, newest first, paged by
//! key, and their counts per status. Each is one read-only statement (no locks, no
//! temporary state), so a read replica can serve it.
//!
//! Incidents of revoked agents are left out, as the per-agent list leaves them out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};
use wire_models::{AgentId, Severity};

use super::{INCIDENT_COLUMNS, IncidentRow, IncidentStatus};
use crate::StorageError;

/// What to keep. Every field narrows; an empty list or `None` keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFilter {
    pub statuses: Vec<IncidentStatus>,
    pub severities: Vec<Severity>,
    pub critical: Option<bool>,
    /// The event kind (`type`).
    pub kind: Option<String>,
    pub agent_id: Option<AgentId>,
    /// Agents whose hostname starts with this.
    pub hostname_prefix: Option<String>,
    /// From this time on (inclusive), on the sort's time: creation or last occurrence.
    pub since: Option<DateTime<Utc>>,
    /// Before this time (exclusive), on the sort's time.
    pub until: Option<DateTime<Utc>>,
    /// A case-insensitive substring of `source` or `raw_error` (trigram-indexed, so at
    /// least three characters to be fast).
    pub text: Option<String>,
}

/// The order of a fleet page, newest first either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FleetSort {
    /// By creation (the incident id): stable while new incidents arrive.
    #[default]
    Created,
    /// By last occurrence: an incident that recurs while a client pages moves up.
    LastSeen,
}

impl FleetSort {
    pub const ALL: [FleetSort; 2] = [FleetSort::Created, FleetSort::LastSeen];

    pub fn as_str(self) -> &'static str {
        match self {
            FleetSort::Created => "created",
            FleetSort::LastSeen => "last_seen",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sort| sort.as_str() == s)
    }

    fn time_column(self) -> &'static str {
        match self {
            FleetSort::Created => "i.created_at",
            FleetSort::LastSeen => "i.last_seen_at",
        }
    }
}

/// Where the previous page ended. Opaque to clients: `c{id}` or `l{micros}.{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetCursor {
    Created { id: i64 },
    LastSeen { last_seen_at: DateTime<Utc>, id: i64 },
}

impl FleetCursor {
    pub fn encode(&self) -> String {
        match self {
            FleetCursor::Created { id } => format!("c{id}"),
            FleetCursor::LastSeen { last_seen_at, id } => {
                format!("l{}.{id}", last_seen_at.timestamp_micros())
            }
        }
    }

    /// The cursor, if `s` is one and belongs to `sort`.
    pub fn parse(s: &str, sort: FleetSort) -> Option<Self> {
        match (sort, s.split_at_checked(1)?) {
            (FleetSort::Created, ("c", id)) => Some(FleetCursor::Created { id: id.parse().ok()? }),
            (FleetSort::LastSeen, ("l", rest)) => {
                let (micros, id) = rest.split_once('.')?;
                let last_seen_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
                Some(FleetCursor::LastSeen { last_seen_at, id: id.parse().ok()? })
            }
            _ => None,
        }
    }

    fn after(row: &FleetIncident, sort: FleetSort) -> Self {
        match sort {
            FleetSort::Created => FleetCursor::Created { id: row.incident.id },
            FleetSort::LastSeen => {
                FleetCursor::LastSeen { last_seen_at: row.incident.last_seen_at, id: row.incident.id }
            }
        }
    }
}

/// An incident with its agent's hostname, as a fleet list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FleetIncident {
    #[sqlx(flatten)]
    pub incident: IncidentRow,
    pub hostname: String,
}

/// A page and where the next one starts (`None` on the last page).
#[derive(Debug, Clone)]
pub struct FleetPage {
    pub items: Vec<FleetIncident>,
    pub next: Option<FleetCursor>,
}

/// Incidents per status for a filter, and how many of them are critical.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSummary {
    pub by_status: BTreeMap<&'static str, i64>,
    pub critical: i64,
    pub total: i64,
}

/// `\`, `%` and `_` escaped for `LIKE ... ESCAPE '\'`.
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The ids of the live agents whose hostname starts with `prefix`.
async fn agents_with_prefix(pool: &PgPool, prefix: &str) -> Result<Vec<String>, StorageError> {
    Ok(sqlx::query_scalar("SELECT id FROM agents WHERE hostname LIKE $1 ESCAPE '\\' AND revoked_at IS NULL")
        .bind(format!("{}%", like_literal(prefix)))
        .fetch_all(pool)
        .await?)
}

/// A filter ready to be written into SQL: a hostname prefix is resolved to its agents
/// first, so that the incidents are filtered by a set Postgres hashes once (an array
/// bound as a constant) instead of probing the agents table for every row it walks.
struct Resolved<'a> {
    filter: &'a FleetFilter,
    /// `Some` when the filter has a hostname prefix: the agents it names.
    prefix_agents: Option<Vec<String>>,
}

impl<'a> Resolved<'a> {
    async fn new(pool: &PgPool, filter: &'a FleetFilter) -> Result<Self, StorageError> {
        let prefix_agents = match &filter.hostname_prefix {
            Some(prefix) => Some(agents_with_prefix(pool, prefix).await?),
            None => None,
        };
        Ok(Self { filter, prefix_agents })
    }

    /// Nothing can match: a hostname prefix no live agent has.
    fn is_empty(&self) -> bool {
        self.prefix_agents.as_ref().is_some_and(Vec::is_empty)
    }

    /// Whether the statement must be planned with its parameters' values. An array
    /// parameter is hashed only when the planner sees it as a constant, which a plan
    /// cached for any value (a generic plan) does not: such statements are sent unnamed.
    fn needs_custom_plan(&self) -> bool {
        self.prefix_agents.is_some()
    }

    /// The `WHERE` clause both reads share.
    fn push_where(&self, qb: &mut QueryBuilder<Postgres>, sort: FleetSort) {
        let filter = self.filter;
        // Few agents are ever revoked: their partial index makes this a probe of a tiny
        // index per row kept (or one hash of it for a count), not one of every agent.
        qb.push(
            " WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = i.agent_id AND a.revoked_at IS NOT NULL)",
        );
        if !filter.statuses.is_empty() {
            let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
            qb.push(" AND i.status = ANY(").push_bind(statuses).push(")");
        }
        if !filter.severities.is_empty() {
            let severities: Vec<&str> = filter.severities.iter().map(|s| s.as_str()).collect();
            qb.push(" AND i.severity = ANY(").push_bind(severities).push(")");
        }
        if let Some(critical) = filter.critical {
            qb.push(" AND i.is_critical = ").push_bind(critical);
        }
        if let Some(kind) = &filter.kind {
            qb.push(" AND i.type = ").push_bind(kind.clone());
        }
        if let Some(agent) = &filter.agent_id {
            qb.push(" AND i.agent_id = ").push_bind(agent.as_str().to_owned());
        }
        if let Some(agents) = &self.prefix_agents {
            qb.push(" AND i.agent_id = ANY(").push_bind(agents.clone()).push(")");
        }
        if let Some(since) = filter.since {
            qb.push(format_args!(" AND {} >= ", sort.time_column())).push_bind(since);
        }
        if let Some(until) = filter.until {
            qb.push(format_args!(" AND {} < ", sort.time_column())).push_bind(until);
        }
        if let Some(text) = &filter.text {
            // The expression of the trigram index, so the index serves it.
            qb.push(" AND (i.source || ' ' || i.raw_error) ILIKE ")
                .push_bind(format!("%{}%", like_literal(text)))
                .push(" ESCAPE '\\'");
        }
    }
}

/// One page of the fleet's incidents, newest first by `sort`.
pub async fn list(
    pool: &PgPool,
    filter: &FleetFilter,
    sort: FleetSort,
    cursor: Option<FleetCursor>,
    limit: i64,
) -> Result<FleetPage, StorageError> {
    let resolved = Resolved::new(pool, filter).await?;
    if resolved.is_empty() {
        return Ok(FleetPage { items: Vec::new(), next: None });
    }
    let mut qb = QueryBuilder::new(format!(
        "SELECT {INCIDENT_COLUMNS}, \
         COALESCE((SELECT a.hostname FROM agents a WHERE a.id = i.agent_id), '') AS hostname \
         FROM incidents i"
    ));
    resolved.push_where(&mut qb, sort);
    match cursor {
        Some(FleetCursor::Created { id }) => {
            qb.push(" AND i.id < ").push_bind(id);
        }
        Some(FleetCursor::LastSeen { last_seen_at, id }) => {
            qb.push(" AND (i.last_seen_at, i.id) < (")
                .push_bind(last_seen_at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        None => {}
    }
    qb.push(match sort {
        FleetSort::Created => " ORDER BY i.id DESC",
        FleetSort::LastSeen => " ORDER BY i.last_seen_at DESC, i.id DESC",
    });
    qb.push(" LIMIT ").push_bind(limit);
    let items: Vec<FleetIncident> =
        qb.build_query_as().persistent(!resolved.needs_custom_plan()).fetch_all(pool).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|row| FleetCursor::after(row, sort)))
        .flatten();
    Ok(FleetPage { items, next })
}

/// How many incidents `filter` keeps, per status.
pub async fn summary(pool: &PgPool, filter: &FleetFilter) -> Result<FleetSummary, StorageError> {
    let mut summary = FleetSummary {
        by_status: IncidentStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
        ..FleetSummary::default()
    };
    let resolved = Resolved::new(pool, filter).await?;
    if resolved.is_empty() {
        return Ok(summary);
    }
    let mut qb = QueryBuilder::new(
        "SELECT i.status, count(*) AS n, count(*) FILTER (WHERE i.is_critical) AS critical FROM incidents i",
    );
    resolved.push_where(&mut qb, FleetSort::Created);
    qb.push(" GROUP BY i.status");
    let rows: Vec<(String, i64, i64)> =
        qb.build_query_as().persistent(!resolved.needs_custom_plan()).fetch_all(pool).await?;
    for (status, n, critical) in rows {
        let status = IncidentStatus::parse(&status)
            .ok_or_else(|| StorageError::Data(format!("unknown incident status {status:?}")))?;
        summary.by_status.insert(status.as_str(), n);
        summary.critical += critical;
        summary.total += n;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_belong_to_their_sort() {
        let created = FleetCursor::Created { id: 42 };
        assert_eq!(FleetCursor::parse(&created.encode(), FleetSort::Created), Some(created));
        assert_eq!(FleetCursor::parse(&created.encode(), FleetSort::LastSeen), None);
        let at = DateTime::from_timestamp_micros(1_764_460_800_123_456).unwrap();
        let last = FleetCursor::LastSeen { last_seen_at: at, id: 7 };
        assert_eq!(FleetCursor::parse(&last.encode(), FleetSort::LastSeen), Some(last));
        for bad in ["", "c", "cx", "c1.2", "l12", "l.1", "lx.1", "x1", "é1"] {
            assert_eq!(FleetCursor::parse(bad, FleetSort::Created), None, "{bad}");
            assert_eq!(FleetCursor::parse(bad, FleetSort::LastSeen), None, "{bad}");
        }
    }

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(like_literal(r"50%_a\b"), r"50\%\_a\\b");
    }
}
