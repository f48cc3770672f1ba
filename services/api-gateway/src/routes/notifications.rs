//! Notification targets and their deliveries (admins). The gateway only writes the
//! targets; the ai-analyzer routes the change feed to them and posts (see its `notify`
//! module). Secrets and Slack URLs are write-only: shown once, never listed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use storage::notifications::{self as store, NotifyEvent, Target, TargetKind};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use wire_models::{EventKind, Severity};

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::admin::audit_change;
use crate::routes::{page_size, schema};
use crate::state::AppState;

/// A notification target as admins see it: the URL's path and the signing secret are
/// never returned.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TargetView {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    /// `webhook` or `slack`.
    pub(crate) kind: String,
    /// Scheme, host and port; the path is hidden.
    pub(crate) url: String,
    /// Of `incident`, `offline`, `action_failed`.
    pub(crate) events: Vec<String>,
    /// New incidents at or above this severity are notified (critical ones always).
    pub(crate) min_severity: String,
    /// Incident kinds notified; empty is every kind.
    pub(crate) kinds: Vec<String>,
    pub(crate) rate_per_minute: u32,
    pub(crate) enabled: bool,
    /// `api`, or `env` for a target the analyzer's environment configures (read-only).
    pub(crate) source: String,
    pub(crate) has_secret: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl From<Target> for TargetView {
    fn from(t: Target) -> Self {
        use secrecy::ExposeSecret;
        Self {
            id: t.id,
            name: t.name,
            kind: t.kind.as_str().into(),
            url: store::redacted_url(t.url.expose_secret()),
            events: t.events.iter().map(|e| e.as_str().to_owned()).collect(),
            min_severity: t.min_severity.as_str().into(),
            kinds: t.kinds,
            rate_per_minute: t.rate_per_minute,
            enabled: t.enabled,
            source: t.source.as_str().into(),
            has_secret: t.secret.is_some(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A target and, when one was generated or rotated, its signing secret (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TargetWithSecret {
    pub(crate) target: TargetView,
    /// The HMAC-SHA256 key of the `X-OpsPilot-Signature` header; only in this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secret: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTarget {
    /// 1 to 64 of `[a-z0-9_-]`; `env-` is reserved.
    #[schema(value_type = TargetNameDoc, inline)]
    pub(crate) name: String,
    /// `webhook` or `slack`.
    #[schema(value_type = TargetKindDoc, inline)]
    pub(crate) kind: String,
    /// Where to post: http(s) for a webhook; a Slack incoming-webhook URL (https, or
    /// http to a loopback address). No credentials, no fragment, at most 2048
    /// characters.
    #[schema(value_type = schema::WebhookUrlDoc, inline)]
    pub(crate) url: String,
    /// A webhook's signing key (16 to 256 printable ASCII characters, no spaces);
    /// generated when absent. A Slack target takes none.
    #[schema(value_type = Option<schema::WebhookSecretDoc>, inline)]
    pub(crate) secret: Option<String>,
    /// Default: every event.
    #[schema(value_type = Option<Vec<NotifyEventDoc>>, inline, min_items = 1, max_items = 8)]
    pub(crate) events: Option<Vec<String>>,
    /// Default `critical`.
    #[schema(value_type = Option<schema::SeverityDoc>, inline)]
    pub(crate) min_severity: Option<String>,
    /// Incident kinds notified, at most 64; empty or absent is every kind.
    #[schema(value_type = Option<Vec<schema::EventKindDoc>>, inline, max_items = 64)]
    pub(crate) kinds: Option<Vec<String>>,
    /// 1 to 600 (default 10).
    #[schema(minimum = 1, maximum = 600, example = 10)]
    pub(crate) rate_per_minute: Option<u32>,
    pub(crate) enabled: Option<bool>,
}

impl std::fmt::Debug for CreateTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTarget")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTarget {
    /// As when created; it must suit the target's kind (409 otherwise: a Slack
    /// target's URL is https, or http to a loopback address).
    #[schema(value_type = Option<schema::WebhookUrlDoc>, inline)]
    pub(crate) url: Option<String>,
    #[schema(value_type = Option<Vec<NotifyEventDoc>>, inline, min_items = 1, max_items = 8)]
    pub(crate) events: Option<Vec<String>>,
    #[schema(value_type = Option<schema::SeverityDoc>, inline)]
    pub(crate) min_severity: Option<String>,
    /// At most 64; empty is every kind.
    #[schema(value_type = Option<Vec<schema::EventKindDoc>>, inline, max_items = 64)]
    pub(crate) kinds: Option<Vec<String>>,
    /// 1 to 600.
    #[schema(minimum = 1, maximum = 600, example = 10)]
    pub(crate) rate_per_minute: Option<u32>,
    pub(crate) enabled: Option<bool>,
    /// Replace a webhook's signing secret with a new generated one (returned once);
    /// a Slack target has none (409).
    pub(crate) rotate_secret: Option<bool>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-body", detail.into())
}

/// The kinds of target.
const TARGET_KINDS: [TargetKind; 2] = [TargetKind::Webhook, TargetKind::Slack];
/// What a delivery's `status` may be.
const DELIVERY_STATUSES: [&str; 5] = ["pending", "sending", "delivered", "failed", "digested"];
/// What a delivery's `event` may be: what targets subscribe to, and the two the
/// analyzer adds.
fn delivery_events() -> Vec<&'static str> {
    NotifyEvent::ALL.iter().map(|e| e.as_str()).chain(["digest", "test"]).collect()
}

schema::documented! {
    TargetKindDoc => schema::enumeration(TARGET_KINDS.map(TargetKind::as_str)).into();
    NotifyEventDoc => schema::enumeration(NotifyEvent::ALL.map(NotifyEvent::as_str)).into();
    DeliveryStatusDoc => schema::enumeration(DELIVERY_STATUSES).into();
    DeliveryEventDoc => schema::enumeration(delivery_events()).into();
    // Lowercase letters, digits, `-`, `_`, not starting with `env-` (spelt out
    // without look-ahead, which not every regex engine has).
    TargetNameDoc => schema::string()
        .pattern(Some("^([a-df-z0-9_-]|e$|e[a-mo-z0-9_-]|en$|en[a-uw-z0-9_-]|env$|env[a-z0-9_])[a-z0-9_-]*$"))
        .min_length(Some(1))
        .max_length(Some(64))
        .examples(["ops-webhook"])
        .into();
}

fn check_name(name: &str) -> ApiResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(invalid("name must be 1 to 64 of a-z, 0-9, '-' and '_'"));
    }
    if name.starts_with("env-") {
        return Err(invalid("names starting with env- are reserved for targets from the environment"));
    }
    Ok(())
}

fn parse_events(events: &[String]) -> ApiResult<Vec<NotifyEvent>> {
    if events.is_empty() || events.len() > 8 {
        return Err(invalid("events must name 1 to 3 of incident, offline, action_failed"));
    }
    let mut parsed = Vec::new();
    for event in events {
        let event = NotifyEvent::parse(event)
            .ok_or_else(|| invalid("events must name 1 to 3 of incident, offline, action_failed"))?;
        if !parsed.contains(&event) {
            parsed.push(event);
        }
    }
    Ok(parsed)
}

fn parse_severity(s: &str) -> ApiResult<Severity> {
    Severity::parse(s).ok_or_else(|| invalid("min_severity must be info, warning, error or critical"))
}

fn parse_kinds(kinds: &[String]) -> ApiResult<Vec<String>> {
    if kinds.len() > 64 {
        return Err(invalid("kinds lists at most 64 incident kinds"));
    }
    kinds
        .iter()
        .map(|k| {
            EventKind::parse(k).map(|k| k.as_str().to_owned()).map_err(|e| invalid(format!("kinds: {e}")))
        })
        .collect()
}

fn check_rate(rate: u32) -> ApiResult<u32> {
    if (1..=600).contains(&rate) {
        Ok(rate)
    } else {
        Err(invalid("rate_per_minute must be between 1 and 600"))
    }
}

fn generated_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("whsec_{}", hex::encode(bytes))
}

/// Notification targets.
#[utoipa::path(
    get, path = "/api/v1/notifications/targets", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<TargetView>), (status = 403, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn list_targets(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<Vec<TargetView>>> {
    Ok(Json(store::list_targets(&state.pool).await?.into_iter().map(Into::into).collect()))
}

/// Adds a notification target. A webhook's signing secret is generated unless given,
/// and returned in this answer only.
#[utoipa::path(
    post, path = "/api/v1/notifications/targets", tag = "admin", security(("bearer" = [])),
    request_body = CreateTarget,
    responses(
        (status = 201, body = TargetWithSecret),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_target(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiJson(body): ApiJson<CreateTarget>,
) -> ApiResult<(StatusCode, Json<TargetWithSecret>)> {
    check_name(&body.name)?;
    let kind = TARGET_KINDS
        .into_iter()
        .find(|k| k.as_str() == body.kind)
        .ok_or_else(|| invalid("kind must be webhook or slack"))?;
    store::check_target_url(kind, &body.url).map_err(|e| invalid(format!("url {e}")))?;
    let events = match &body.events {
        Some(events) => parse_events(events)?,
        None => NotifyEvent::ALL.to_vec(),
    };
    let min_severity = parse_severity(body.min_severity.as_deref().unwrap_or("critical"))?;
    let kinds = parse_kinds(body.kinds.as_deref().unwrap_or_default())?;
    let rate_per_minute = check_rate(body.rate_per_minute.unwrap_or(10))?;
    let secret = match (kind, body.secret) {
        (TargetKind::Slack, Some(_)) => {
            return Err(invalid("a slack target takes no secret (its URL is one)"));
        }
        (TargetKind::Slack, None) => None,
        (TargetKind::Webhook, Some(secret)) => {
            if secret.chars().count() < store::MIN_SECRET_LEN
                || secret.len() > 256
                || !secret.chars().all(|c| c.is_ascii_graphic())
            {
                return Err(invalid("secret must be 16 to 256 printable characters without spaces"));
            }
            Some(secret)
        }
        (TargetKind::Webhook, None) => Some(generated_secret()),
    };
    let target = store::create_target(
        &state.pool,
        &store::NewTarget {
            name: &body.name,
            kind,
            url: &body.url,
            secret: secret.as_deref(),
            events: &events,
            min_severity,
            kinds: &kinds,
            rate_per_minute,
            enabled: body.enabled.unwrap_or(true),
        },
    )
    .await?;
    audit_change(
        &state,
        &user,
        "create_notification_target",
        None,
        "ok",
        serde_json::json!({"target_id": target.id, "name": target.name, "kind": kind.as_str()}),
    )
    .await?;
    tracing::info!(target_id = %target.id, name = %target.name, by = %user.email, "notification target created");
    Ok((StatusCode::CREATED, Json(TargetWithSecret { target: target.into(), secret })))
}

/// Changes a notification target (not one from the environment).
#[utoipa::path(
    patch, path = "/api/v1/notifications/targets/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Target id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    request_body = UpdateTarget,
    responses(
        (status = 200, body = TargetWithSecret),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The target is configured by the environment", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_target(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateTarget>,
) -> ApiResult<Json<TargetWithSecret>> {
    // What the body says on its own is checked first (400); what depends on the
    // target, which may change under the request, after it is read (409).
    if let Some(url) = &body.url {
        store::check_target_url(TargetKind::Webhook, url).map_err(|e| invalid(format!("url {e}")))?;
    }
    let events = body.events.as_deref().map(parse_events).transpose()?;
    let min_severity = body.min_severity.as_deref().map(parse_severity).transpose()?;
    let kinds = body.kinds.as_deref().map(parse_kinds).transpose()?;
    let rate_per_minute = body.rate_per_minute.map(check_rate).transpose()?;
    let current = store::get_target(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id} not found")))?;
    if let Some(url) = &body.url {
        store::check_target_url(current.kind, url)
            .map_err(|e| ApiError::Conflict(format!("url {e} for a {} target", current.kind.as_str())))?;
    }
    let secret = match (current.kind, body.rotate_secret) {
        (TargetKind::Webhook, Some(true)) => Some(generated_secret()),
        (TargetKind::Slack, Some(true)) => {
            return Err(ApiError::Conflict("a slack target has no secret to rotate".into()));
        }
        _ => None,
    };
    let update = store::TargetUpdate {
        url: body.url.as_deref(),
        secret: secret.as_deref(),
        events: events.as_deref(),
        min_severity,
        kinds: kinds.as_deref(),
        rate_per_minute,
        enabled: body.enabled,
    };
    let target = store::update_target(&state.pool, id, &update)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id} not found")))?;
    audit_change(
        &state,
        &user,
        "update_notification_target",
        None,
        "ok",
        serde_json::json!({"target_id": id, "name": target.name, "url_changed": body.url.is_some(),
                           "secret_rotated": secret.is_some(), "enabled": target.enabled}),
    )
    .await?;
    Ok(Json(TargetWithSecret { target: target.into(), secret }))
}

/// Deletes a notification target and its delivery history.
#[utoipa::path(
    delete, path = "/api/v1/notifications/targets/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Target id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    responses(
        (status = 200, body = TargetView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The target is configured by the environment", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_target(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<TargetView>> {
    let target = store::delete_target(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id} not found")))?;
    audit_change(
        &state,
        &user,
        "delete_notification_target",
        None,
        "ok",
        serde_json::json!({"target_id": id, "name": target.name}),
    )
    .await?;
    Ok(Json(target.into()))
}

/// A queued test notification.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TestQueued {
    pub(crate) target_id: Uuid,
    /// Find it in the deliveries (`event=test`).
    pub(crate) dedup_key: String,
}

/// Queues a test notification to a target (sent by the analyzer like any other,
/// within the target's rate).
#[utoipa::path(
    post, path = "/api/v1/notifications/targets/{id}/test", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Target id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    responses(
        (status = 202, body = TestQueued),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn test_target(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<(StatusCode, Json<TestQueued>)> {
    let target = store::get_target(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("target {id} not found")))?;
    let dedup_key = format!("test:{}", Uuid::now_v7());
    store::enqueue(
        &state.pool,
        &[store::NewDelivery {
            target_id: target.id,
            dedup_key: dedup_key.clone(),
            event: "test".into(),
            agent_id: None,
            summary: format!("Test notification from OpsPilot, sent by {}", user.email),
            payload: serde_json::json!({"requested_by": user.email}),
        }],
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(TestQueued { target_id: target.id, dedup_key })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryQuery {
    #[param(example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")]
    target_id: Option<Uuid>,
    /// `pending`, `sending`, `delivered`, `failed` or `digested`.
    #[param(value_type = Option<DeliveryStatusDoc>, inline)]
    status: Option<String>,
    /// `incident`, `offline`, `action_failed`, `digest` or `test`.
    #[param(value_type = Option<DeliveryEventDoc>, inline)]
    event: Option<String>,
    /// The `next_cursor` of the previous page.
    before: Option<i64>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryView {
    pub(crate) id: i64,
    pub(crate) target_id: Uuid,
    pub(crate) target_name: String,
    pub(crate) event: String,
    pub(crate) agent_id: Option<String>,
    pub(crate) summary: String,
    /// `pending` (waiting or between retries), `sending`, `delivered`, `failed`, or
    /// `digested` (carried by the digest `digest_id`).
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) next_attempt_at: DateTime<Utc>,
    pub(crate) sent_at: Option<DateTime<Utc>>,
    pub(crate) delivered_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status.
    pub(crate) response_status: Option<i32>,
    pub(crate) last_error: Option<String>,
    /// A digest: how many notifications it carries.
    pub(crate) digest_count: Option<i32>,
    pub(crate) digest_id: Option<i64>,
    pub(crate) created_at: DateTime<Utc>,
}

impl From<store::Delivery> for DeliveryView {
    fn from(d: store::Delivery) -> Self {
        Self {
            id: d.id,
            target_id: d.target_id,
            target_name: d.target_name,
            event: d.event,
            agent_id: d.agent_id,
            summary: d.summary,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            sent_at: d.sent_at,
            delivered_at: d.delivered_at,
            response_status: d.response_status,
            last_error: d.last_error,
            digest_count: d.digest_count,
            digest_id: d.digest_id,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryPage {
    pub(crate) items: Vec<DeliveryView>,
    pub(crate) next_cursor: Option<i64>,
}

/// Recent notification deliveries, newest first.
#[utoipa::path(
    get, path = "/api/v1/notifications/deliveries", tag = "admin", security(("bearer" = [])), params(DeliveryQuery),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> ApiResult<Json<DeliveryPage>> {
    let limit = page_size(query.limit)?;
    if let Some(status) = &query.status
        && !DELIVERY_STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            "status must be pending, sending, delivered, failed or digested",
        ));
    }
    if let Some(event) = &query.event
        && !delivery_events().contains(&event.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            "event must be incident, offline, action_failed, digest or test",
        ));
    }
    let rows = store::recent(
        &state.pool,
        &store::DeliveryFilter {
            target_id: query.target_id,
            status: query.status.as_deref(),
            event: query.event.as_deref(),
            before: query.before,
            limit,
        },
    )
    .await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(DeliveryPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}
