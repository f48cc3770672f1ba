//! Notification targets and their deliveries. Routing writes one row per target and
//! notification (the `(target_id, dedup_key)` key makes routing idempotent, so two
//! replicas or a redelivered feed message never notify twice); senders claim due rows
//! with a lease, under a per-target lock that also applies the target's rate and folds
//! what is over it into one digest a minute.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use wire_models::Severity;

use crate::StorageError;
use crate::error::unique_to_conflict;

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A JSON POST signed with HMAC-SHA256.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Webhook => "webhook",
            TargetKind::Slack => "slack",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(TargetKind::Webhook),
            "slack" => Some(TargetKind::Slack),
            _ => None,
        }
    }
}

/// What a target is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    /// A new incident at or above the target's severity (critical ones always qualify).
    Incident,
    /// An agent went offline.
    Offline,
    /// An action ended in anything but `ok`.
    ActionFailed,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 3] =
        [NotifyEvent::Incident, NotifyEvent::Offline, NotifyEvent::ActionFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Incident => "incident",
            NotifyEvent::Offline => "offline",
            NotifyEvent::ActionFailed => "action_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Who manages a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    Api,
    /// Written from the analyzer's environment; read-only through the API.
    Env,
}

impl TargetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSource::Api => "api",
            TargetSource::Env => "env",
        }
    }
}

#[derive(Clone)]
pub struct Target {
    pub id: Uuid,
    pub name: String,
    pub kind: TargetKind,
    /// A credential for Slack (and often for webhooks): never logged or returned whole.
    pub url: SecretString,
    pub secret: Option<SecretString>,
    pub events: Vec<NotifyEvent>,
    pub min_severity: Severity,
    /// Incident kinds notified; empty is every kind.
    pub kinds: Vec<String>,
    pub rate_per_minute: u32,
    pub enabled: bool,
    pub source: TargetSource,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &"[redacted]")
            .field("events", &self.events)
            .field("min_severity", &self.min_severity)
            .field("kinds", &self.kinds)
            .field("rate_per_minute", &self.rate_per_minute)
            .field("enabled", &self.enabled)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Whether a new incident of `kind` and `severity` goes to this target.
    pub fn wants_incident(&self, kind: &str, severity: Severity, is_critical: bool) -> bool {
        let severe = is_critical || severity >= self.min_severity;
        self.enabled
            && self.events.contains(&NotifyEvent::Incident)
            && severe
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
    }

    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.enabled && self.events.contains(&event)
    }
}

#[derive(sqlx::FromRow)]
struct TargetRow {
    id: Uuid,
    name: String,
    kind: String,
    url: String,
    secret: Option<String>,
    events: Vec<String>,
    min_severity: String,
    kinds: Vec<String>,
    rate_per_minute: i32,
    enabled: bool,
    source: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TargetRow> for Target {
    type Error = StorageError;

    fn try_from(row: TargetRow) -> Result<Self, StorageError> {
        let bad = |what: &str| StorageError::Data(format!("notification target {}: {what}", row.id));
        let kind = TargetKind::parse(&row.kind).ok_or_else(|| bad("kind"))?;
        let events = row
            .events
            .iter()
            .map(|e| NotifyEvent::parse(e))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("events"))?;
        let min_severity = Severity::parse(&row.min_severity).ok_or_else(|| bad("min_severity"))?;
        let source = match row.source.as_str() {
            "api" => TargetSource::Api,
            "env" => TargetSource::Env,
            _ => return Err(bad("source")),
        };
        Ok(Target {
            id: row.id,
            name: row.name,
            kind,
            url: SecretString::from(row.url),
            secret: row.secret.map(SecretString::from),
            events,
            min_severity,
            kinds: row.kinds,
            rate_per_minute: u32::try_from(row.rate_per_minute).unwrap_or(1),
            enabled: row.enabled,
            source,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const TARGET_COLUMNS: &str = "id, name, kind, url, secret, events, min_severity, kinds, rate_per_minute, \
                              enabled, source, created_at, updated_at";

/// A target as written.
#[derive(Debug, Clone)]
pub struct NewTarget<'a> {
    pub name: &'a str,
    pub kind: TargetKind,
    pub url: &'a str,
    pub secret: Option<&'a str>,
    pub events: &'a [NotifyEvent],
    pub min_severity: Severity,
    pub kinds: &'a [String],
    pub rate_per_minute: u32,
    pub enabled: bool,
}

fn event_names(events: &[NotifyEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.as_str()).collect()
}

fn rate(rate_per_minute: u32) -> i32 {
    i32::try_from(rate_per_minute).unwrap_or(i32::MAX)
}

fn into_targets(rows: Vec<TargetRow>) -> Result<Vec<Target>, StorageError> {
    rows.into_iter().map(Target::try_from).collect()
}

/// Creates an API-managed target; a taken name is a conflict.
pub async fn create_target(pool: &PgPool, new: &NewTarget<'_>) -> Result<Target, StorageError> {
    write_target(pool, new, TargetSource::Api)
        .await
        .map_err(|e| unique_to_conflict(e, "a notification target with this name exists"))?
        .ok_or_else(|| StorageError::Data("a created target was not returned".into()))?
        .try_into()
}

/// Writes a target from the analyzer's environment, replacing what an earlier start
/// wrote under the same name. A name an API target holds is a conflict: the
/// environment never overwrites what an admin configured.
pub async fn upsert_env_target(pool: &PgPool, new: &NewTarget<'_>) -> Result<Target, StorageError> {
    write_target(pool, new, TargetSource::Env)
        .await?
        .ok_or_else(|| {
            StorageError::Conflict(format!("an API-managed notification target is named {}", new.name))
        })?
        .try_into()
}

/// Inserts a target; an environment target replaces the environment's earlier one of
/// the same name (and only such a one: `None` when the name is an API target's).
async fn write_target(
    pool: &PgPool,
    new: &NewTarget<'_>,
    source: TargetSource,
) -> Result<Option<TargetRow>, sqlx::Error> {
    let on_conflict = match source {
        TargetSource::Api => "",
        TargetSource::Env => {
            "ON CONFLICT (name) DO UPDATE SET
                 kind = EXCLUDED.kind, url = EXCLUDED.url, secret = EXCLUDED.secret, events = EXCLUDED.events,
                 min_severity = EXCLUDED.min_severity, kinds = EXCLUDED.kinds,
                 rate_per_minute = EXCLUDED.rate_per_minute, enabled = EXCLUDED.enabled, updated_at = now()
             WHERE notification_targets.source = 'env'"
        }
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notification_targets
             (id, name, kind, url, secret, events, min_severity, kinds, rate_per_minute, enabled, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         {on_conflict}
         RETURNING {TARGET_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(new.name)
    .bind(new.kind.as_str())
    .bind(new.url)
    .bind(new.secret)
    .bind(event_names(new.events))
    .bind(new.min_severity.as_str())
    .bind(new.kinds)
    .bind(rate(new.rate_per_minute))
    .bind(new.enabled)
    .bind(source.as_str())
    .fetch_optional(pool)
    .await
}

/// Removes an environment target no longer configured.
pub async fn remove_env_target(pool: &PgPool, name: &str) -> Result<bool, StorageError> {
    let done = sqlx::query("DELETE FROM notification_targets WHERE name = $1 AND source = 'env'")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn list_targets(pool: &PgPool) -> Result<Vec<Target>, StorageError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TARGET_COLUMNS} FROM notification_targets ORDER BY name"
    )))
    .fetch_all(pool)
    .await?;
    into_targets(rows)
}

pub async fn enabled_targets(pool: &PgPool) -> Result<Vec<Target>, StorageError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TARGET_COLUMNS} FROM notification_targets WHERE enabled ORDER BY name"
    )))
    .fetch_all(pool)
    .await?;
    into_targets(rows)
}

pub async fn get_target(pool: &PgPool, id: Uuid) -> Result<Option<Target>, StorageError> {
    let row: Option<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TARGET_COLUMNS} FROM notification_targets WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(Target::try_from).transpose()
}

/// A change to an API-managed target; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct TargetUpdate<'a> {
    pub url: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub events: Option<&'a [NotifyEvent]>,
    pub min_severity: Option<Severity>,
    pub kinds: Option<&'a [String]>,
    pub rate_per_minute: Option<u32>,
    pub enabled: Option<bool>,
}

/// Updates an API-managed target: `Ok(None)` when there is no such target, a conflict
/// for an environment one.
pub async fn update_target(
    pool: &PgPool,
    id: Uuid,
    update: &TargetUpdate<'_>,
) -> Result<Option<Target>, StorageError> {
    let Some(current) = get_target(pool, id).await? else { return Ok(None) };
    if current.source == TargetSource::Env {
        return Err(StorageError::Conflict("this target is configured by the environment".into()));
    }
    let row: Option<TargetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE notification_targets SET
             url = coalesce($2, url), secret = coalesce($3, secret), events = coalesce($4, events),
             min_severity = coalesce($5, min_severity), kinds = coalesce($6, kinds),
             rate_per_minute = coalesce($7, rate_per_minute), enabled = coalesce($8, enabled),
             updated_at = now()
         WHERE id = $1 AND source = 'api'
         RETURNING {TARGET_COLUMNS}"
    )))
    .bind(id)
    .bind(update.url)
    .bind(update.secret)
    .bind(update.events.map(event_names))
    .bind(update.min_severity.map(Severity::as_str))
    .bind(update.kinds)
    .bind(update.rate_per_minute.map(rate))
    .bind(update.enabled)
    .fetch_optional(pool)
    .await?;
    row.map(Target::try_from).transpose()
}

/// Deletes an API-managed target and its deliveries.
pub async fn delete_target(pool: &PgPool, id: Uuid) -> Result<Option<Target>, StorageError> {
    let Some(current) = get_target(pool, id).await? else { return Ok(None) };
    if current.source == TargetSource::Env {
        return Err(StorageError::Conflict("this target is configured by the environment".into()));
    }
    sqlx::query("DELETE FROM notification_targets WHERE id = $1 AND source = 'api'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(Some(current))
}

/// Checks a target's URL: http(s) with a host, no credentials in it (they belong in
/// the secret), no fragment. Slack's must be https.
pub fn check_target_url(kind: TargetKind, url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|_| "not a URL".to_owned())?;
    let scheme_ok = match kind {
        TargetKind::Webhook => matches!(parsed.scheme(), "http" | "https"),
        // The URL is Slack's credential: plain HTTP only to this host (a local relay).
        TargetKind::Slack => parsed.scheme() == "https" || parsed.scheme() == "http" && is_loopback(&parsed),
    };
    if !scheme_ok || parsed.host_str().is_none() {
        return Err(match kind {
            TargetKind::Webhook => "must be an http:// or https:// URL".into(),
            TargetKind::Slack => "must be an https:// URL (http:// only to a loopback address)".into(),
        });
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        return Err("must not contain credentials or a fragment".into());
    }
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// The URL as admins are shown it: scheme, host and port, the path hidden (a Slack
/// URL's path is its credential, and webhook paths often carry tokens).
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", parsed.scheme(), parsed.host_str().unwrap_or(""))
        }
        Err(_) => "…".to_owned(),
    }
}

/// The least length of a webhook's signing key.
pub const MIN_SECRET_LEN: usize = 16;

/// A notification for one target, as routing writes it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub target_id: Uuid,
    /// What is notified; the same key for the same target is written once.
    pub dedup_key: String,
    pub event: String,
    pub agent_id: Option<String>,
    pub summary: String,
    pub payload: Value,
}

/// Writes deliveries, skipping those already written; returns how many are new.
pub async fn enqueue(pool: &PgPool, deliveries: &[NewDelivery]) -> Result<u64, StorageError> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let mut targets = Vec::with_capacity(deliveries.len());
    let mut keys = Vec::with_capacity(deliveries.len());
    let mut events = Vec::with_capacity(deliveries.len());
    let mut agents = Vec::with_capacity(deliveries.len());
    let mut summaries = Vec::with_capacity(deliveries.len());
    let mut payloads = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        targets.push(d.target_id);
        keys.push(d.dedup_key.as_str());
        events.push(d.event.as_str());
        agents.push(d.agent_id.as_deref());
        summaries.push(d.summary.as_str());
        payloads.push(sqlx::types::Json(&d.payload));
    }
    let done = sqlx::query(
        "INSERT INTO notification_deliveries (target_id, dedup_key, event, agent_id, summary, payload, status)
         SELECT t, k, e, a, s, p, 'pending'
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[]) AS u(t, k, e, a, s, p)
         ON CONFLICT (target_id, dedup_key) DO NOTHING",
    )
    .bind(&targets)
    .bind(&keys)
    .bind(&events)
    .bind(&agents)
    .bind(&summaries)
    .bind(&payloads)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A delivery a sender holds the lease of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub event: String,
    pub summary: String,
    #[sqlx(json)]
    pub payload: Value,
    /// This attempt's number (1 for the first).
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub digest_count: Option<i32>,
}

const CLAIMED_COLUMNS: &str = "id, event, summary, payload, attempts, created_at, digest_count";
/// The same, from an `UPDATE notification_deliveries d ... FROM due`.
const CLAIMED_COLUMNS_D: &str =
    "d.id, d.event, d.summary, d.payload, d.attempts, d.created_at, d.digest_count";

/// How a target's notifications are claimed.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// How long a claim holds before another replica may take the row over.
    pub lease: Duration,
    /// Rows claimed at most, retries and fresh together.
    pub max: u32,
    /// Notifications one digest carries at most (the rest wait for the next).
    pub max_digest: u32,
}

/// The rate window and the digest's cadence.
const WINDOW: &str = "interval '1 minute'";

/// Claims what `target` should send now: due retries (and rows whose sender's lease
/// ran out), then new notifications while the target's rate allows, then, once the
/// rate is spent and no digest went out within the minute, one digest carrying every
/// new notification still waiting. Under a per-target lock, so replicas never plan a
/// target's minute twice; a replica that finds it taken skips the target this round.
pub async fn claim(
    pool: &PgPool,
    target: &Target,
    limits: ClaimLimits,
) -> Result<Vec<Claimed>, StorageError> {
    let lease = limits.lease.as_secs_f64();
    let max = i64::from(limits.max);
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("opspilot.notify:{}", target.id))
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let mut claimed: Vec<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH due AS (
             SELECT id FROM notification_deliveries
             WHERE target_id = $1 AND attempts > 0
               AND ((status = 'pending' AND next_attempt_at <= now())
                    OR (status = 'sending' AND lease_until < now()))
             ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE notification_deliveries d
         SET status = 'sending', attempts = d.attempts + 1, lease_until = now() + make_interval(secs => $3)
         FROM due WHERE d.id = due.id
         RETURNING {CLAIMED_COLUMNS_D}"
    )))
    .bind(target.id)
    .bind(max)
    .bind(lease)
    .fetch_all(&mut *tx)
    .await?;
    let sent_in_window: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM notification_deliveries
         WHERE target_id = $1 AND sent_at > now() - {WINDOW} AND event <> 'digest'"
    )))
    .bind(target.id)
    .fetch_one(&mut *tx)
    .await?;
    let room = max - i64::try_from(claimed.len()).unwrap_or(max);
    let allowance = (i64::from(target.rate_per_minute) - sent_in_window).min(room).max(0);
    if allowance > 0 {
        let fresh: Vec<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH due AS (
                 SELECT id FROM notification_deliveries
                 WHERE target_id = $1 AND status = 'pending' AND attempts = 0 AND next_attempt_at <= now()
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE notification_deliveries d
             SET status = 'sending', attempts = 1, sent_at = now(), lease_until = now() + make_interval(secs => $3)
             FROM due WHERE d.id = due.id
             RETURNING {CLAIMED_COLUMNS_D}"
        )))
        .bind(target.id)
        .bind(allowance)
        .bind(lease)
        .fetch_all(&mut *tx)
        .await?;
        claimed.extend(fresh);
    } else if room > 0 {
        let digest_recent: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM notification_deliveries
                            WHERE target_id = $1 AND event = 'digest' AND sent_at > now() - {WINDOW})"
        )))
        .bind(target.id)
        .fetch_one(&mut *tx)
        .await?;
        if !digest_recent && let Some(digest) = fold_digest(&mut tx, target, limits, lease).await? {
            claimed.push(digest);
        }
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Folds the waiting new notifications into one digest row, claimed for sending.
async fn fold_digest(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    target: &Target,
    limits: ClaimLimits,
    lease: f64,
) -> Result<Option<Claimed>, StorageError> {
    // Wait until the oldest has waited DIGEST_GATHER: a burst still being routed
    // goes out as one digest, not as a first slice and the rest a minute later.
    let gathered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM notification_deliveries
                        WHERE target_id = $1 AND status = 'pending' AND attempts = 0
                          AND created_at <= now() - make_interval(secs => $2))",
    )
    .bind(target.id)
    .bind(DIGEST_GATHER.as_secs_f64())
    .fetch_one(&mut **tx)
    .await?;
    if !gathered {
        return Ok(None);
    }
    let waiting: Vec<(i64, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, event, summary, created_at FROM notification_deliveries
         WHERE target_id = $1 AND status = 'pending' AND attempts = 0 AND next_attempt_at <= now()
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(target.id)
    .bind(i64::from(limits.max_digest))
    .fetch_all(&mut **tx)
    .await?;
    let (Some(first), Some(last)) = (waiting.first(), waiting.last()) else { return Ok(None) };
    let count = waiting.len();
    let mut by_event = std::collections::BTreeMap::<&str, u64>::new();
    for (_, event, _, _) in &waiting {
        *by_event.entry(event.as_str()).or_default() += 1;
    }
    let payload = serde_json::json!({
        "count": count,
        "by_event": by_event,
        "first_at": first.3,
        "last_at": last.3,
        "sample": waiting.iter().take(DIGEST_SAMPLE).map(|w| w.2.as_str()).collect::<Vec<_>>(),
    });
    let summary = format!("{count} more notifications in the last minute");
    let count = i32::try_from(count).unwrap_or(i32::MAX);
    let digest: Claimed = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notification_deliveries
             (target_id, dedup_key, event, summary, payload, status, attempts, sent_at, lease_until, digest_count)
         VALUES ($1, $2, 'digest', $3, $4, 'sending', 1, now(), now() + make_interval(secs => $5), $6)
         RETURNING {CLAIMED_COLUMNS}"
    )))
    .bind(target.id)
    .bind(format!("digest:{}", Uuid::now_v7()))
    .bind(&summary)
    .bind(sqlx::types::Json(&payload))
    .bind(lease)
    .bind(count)
    .fetch_one(&mut **tx)
    .await?;
    let ids: Vec<i64> = waiting.iter().map(|w| w.0).collect();
    sqlx::query("UPDATE notification_deliveries SET status = 'digested', digest_id = $2 WHERE id = ANY($1)")
        .bind(&ids)
        .bind(digest.id)
        .execute(&mut **tx)
        .await?;
    Ok(Some(digest))
}

/// How long the oldest notification over the rate waits before a digest is sent.
pub const DIGEST_GATHER: Duration = Duration::from_secs(5);

/// Summaries a digest lists by name; the rest are counted.
pub const DIGEST_SAMPLE: usize = 10;

/// What a sender learned from one attempt.
#[derive(Debug, Clone)]
pub enum Attempt<'a> {
    Delivered {
        status: u16,
    },
    /// Try again after `delay`.
    Retry {
        delay: Duration,
        status: Option<u16>,
        error: &'a str,
    },
    /// Given up: the receiver refused it, or retries ran out.
    Failed {
        status: Option<u16>,
        error: &'a str,
    },
}

/// Records the outcome of attempt `attempt` of delivery `id`; a row another replica
/// took over since (its lease ran out) is left to that replica. Returns whether it
/// was recorded.
pub async fn record(
    pool: &PgPool,
    id: i64,
    attempt: i32,
    outcome: &Attempt<'_>,
) -> Result<bool, StorageError> {
    let query = match outcome {
        Attempt::Delivered { status } => sqlx::query(
            "UPDATE notification_deliveries
             SET status = 'delivered', delivered_at = now(), response_status = $3, last_error = NULL,
                 lease_until = NULL
             WHERE id = $1 AND attempts = $2 AND status = 'sending'",
        )
        .bind(id)
        .bind(attempt)
        .bind(i32::from(*status)),
        Attempt::Retry { delay, status, error } => sqlx::query(
            "UPDATE notification_deliveries
             SET status = 'pending', next_attempt_at = now() + make_interval(secs => $5),
                 response_status = $3, last_error = $4, lease_until = NULL
             WHERE id = $1 AND attempts = $2 AND status = 'sending'",
        )
        .bind(id)
        .bind(attempt)
        .bind(status.map(i32::from))
        .bind(*error)
        .bind(delay.as_secs_f64()),
        Attempt::Failed { status, error } => sqlx::query(
            "UPDATE notification_deliveries
             SET status = 'failed', response_status = $3, last_error = $4, lease_until = NULL
             WHERE id = $1 AND attempts = $2 AND status = 'sending'",
        )
        .bind(id)
        .bind(attempt)
        .bind(status.map(i32::from))
        .bind(*error),
    };
    Ok(query.execute(pool).await?.rows_affected() > 0)
}

/// Targets with something due now, retries and new notifications alike.
pub async fn targets_with_due(pool: &PgPool) -> Result<Vec<Uuid>, StorageError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT target_id FROM notification_deliveries
         WHERE (status = 'pending' AND next_attempt_at <= now())
            OR (status = 'sending' AND lease_until < now())",
    )
    .fetch_all(pool)
    .await?)
}

/// A delivery as admins see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    pub target_id: Uuid,
    pub target_name: String,
    pub event: String,
    pub agent_id: Option<String>,
    pub summary: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub response_status: Option<i32>,
    pub last_error: Option<String>,
    pub digest_count: Option<i32>,
    pub digest_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Which deliveries to list: newest first, before `before` (an id) when paging.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter<'a> {
    pub target_id: Option<Uuid>,
    pub status: Option<&'a str>,
    pub event: Option<&'a str>,
    pub before: Option<i64>,
    pub limit: i64,
}

pub async fn recent(pool: &PgPool, filter: &DeliveryFilter<'_>) -> Result<Vec<Delivery>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT d.id, d.target_id, t.name AS target_name, d.event, d.agent_id, d.summary, d.status, d.attempts,
                d.next_attempt_at, d.sent_at, d.delivered_at, d.response_status, d.last_error,
                d.digest_count, d.digest_id, d.created_at
         FROM notification_deliveries d JOIN notification_targets t ON t.id = d.target_id
         WHERE ($1::uuid IS NULL OR d.target_id = $1)
           AND ($2::text IS NULL OR d.status = $2)
           AND ($3::text IS NULL OR d.event = $3)
           AND ($4::bigint IS NULL OR d.id < $4)
         ORDER BY d.id DESC LIMIT $5",
    )
    .bind(filter.target_id)
    .bind(filter.status)
    .bind(filter.event)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?)
}

/// Deliveries per status, for the backlog gauges.
pub async fn counts(pool: &PgPool) -> Result<Vec<(String, i64)>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT status, count(*) FROM notification_deliveries
         WHERE status IN ('pending', 'sending') GROUP BY status",
    )
    .fetch_all(pool)
    .await?)
}

/// Deletes finished deliveries older than `age`, at most `limit` at a time.
pub async fn prune(pool: &PgPool, age: Duration, limit: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "DELETE FROM notification_deliveries WHERE id IN (
             SELECT id FROM notification_deliveries
             WHERE created_at < now() - make_interval(secs => $1)
               AND status IN ('delivered', 'failed', 'digested')
             ORDER BY id LIMIT $2)",
    )
    .bind(age.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
