//! The live stream (`GET /api/v1/stream`) and the tickets a browser opens it with.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{CurrentUser, Role, Viewer};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiQuery, agent_id};
use crate::routes::schema;
use crate::state::AppState;
use crate::stream::{ClientFilter, EVENT_TYPES, client_stream};

/// How long a ticket may wait to be used.
const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// A single-use ticket for `GET /api/v1/stream?ticket=...`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StreamTicket {
    pub(crate) ticket: String,
    pub(crate) expires_at: DateTime<Utc>,
}

fn unavailable_tickets() -> ApiError {
    ApiError::Unavailable("stream tickets are unavailable (Redis); retry shortly".into())
}

/// A ticket to open the live stream where no `Authorization` header can be sent (a
/// browser's `EventSource`): used once, within 30 seconds, for the stream only.
#[utoipa::path(
    post, path = "/api/v1/stream/tickets", tag = "stream", security(("bearer" = [])),
    responses(
        (status = 201, body = StreamTicket),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ticket(
    State(state): State<AppState>,
    Viewer(user): Viewer,
) -> ApiResult<(StatusCode, Json<StreamTicket>)> {
    let bytes: [u8; 32] = rand::rng().random();
    let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let key = state.keys.stream_ticket(&wire_models::sha256_hex(ticket.as_bytes()));
    let mut conn = state.redis.get().await.map_err(|_| unavailable_tickets())?;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(format!("{}:{}", user.id, user.token_version))
        .arg("PX")
        .arg(u64::try_from(TICKET_TTL.as_millis()).unwrap_or(30_000))
        .query_async(&mut conn)
        .await
        .map_err(|_| unavailable_tickets())?;
    let expires_at =
        Utc::now() + chrono::Duration::from_std(TICKET_TTL).unwrap_or(chrono::Duration::seconds(30));
    Ok((StatusCode::CREATED, Json(StreamTicket { ticket, expires_at })))
}

/// The user a ticket was issued to, if the ticket is unused and unexpired (it is used
/// up either way) and the account has not changed since.
async fn redeem(state: &AppState, ticket: &str) -> ApiResult<CurrentUser> {
    let refused = || ApiError::Unauthenticated("stream ticket unknown, used or expired".into());
    if ticket.len() > 128 {
        return Err(refused());
    }
    let key = state.keys.stream_ticket(&wire_models::sha256_hex(ticket.as_bytes()));
    let mut conn = state.redis.get().await.map_err(|_| unavailable_tickets())?;
    let holder: Option<String> =
        redis::cmd("GETDEL").arg(key).query_async(&mut conn).await.map_err(|_| unavailable_tickets())?;
    let (id, version) = holder.as_deref().and_then(|h| h.split_once(':')).ok_or_else(refused)?;
    let id: uuid::Uuid = id.parse().map_err(|_| refused())?;
    let user = storage::users::by_id(&state.pool, id).await?.filter(|u| !u.disabled).ok_or_else(refused)?;
    if version != user.token_version.to_string() {
        return Err(ApiError::Unauthenticated("the account changed since the ticket was issued".into()));
    }
    let role = Role::parse(&user.role).ok_or_else(refused)?;
    Ok(CurrentUser { id: user.id, email: user.email, role, token_version: user.token_version })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// A ticket from `POST /api/v1/stream/tickets`, instead of an `Authorization`
    /// header.
    #[param(min_length = 1, max_length = 128, example = "eDd7UldXtJRCf4kBT5fXmSjzk40U61HiD7XeyYNOswQ")]
    ticket: Option<String>,
    /// Only these agents' events (comma-separated agent ids, at most 100).
    #[param(value_type = Option<Vec<schema::AgentIdDoc>>, inline, style = Form, explode = false, min_items = 1, max_items = 100)]
    agent_id: Option<String>,
    /// Only these event types (comma-separated): `presence`, `incident.created`,
    /// `incident.updated`, `action.finished`, `fleet_action`.
    #[param(value_type = Option<Vec<EventTypeDoc>>, inline, style = Form, explode = false, min_items = 1)]
    types: Option<String>,
    /// Resume after this event id (what `Last-Event-ID` says; the header wins).
    last_event_id: Option<u64>,
}

schema::documented! {
    EventTypeDoc => schema::enumeration(EVENT_TYPES).into();
}

fn filter_of(query: &StreamQuery) -> ApiResult<ClientFilter> {
    let mut filter = ClientFilter::default();
    // Counted as given, repeats included, as the document's maxItems counts them.
    if query.agent_id.iter().flat_map(|s| s.split(',')).count() > 100 {
        return Err(ApiError::bad_request("invalid-query", "agent_id: at most 100 agents"));
    }
    for id in query.agent_id.iter().flat_map(|s| s.split(',')) {
        let id = agent_id(id.trim())?;
        if !filter.agents.contains(&id) {
            filter.agents.push(id);
        }
    }
    for kind in query.types.iter().flat_map(|s| s.split(',')) {
        let known = EVENT_TYPES.iter().find(|t| **t == kind.trim()).ok_or_else(|| {
            ApiError::bad_request("invalid-query", format!("types: unknown event type {kind:?}"))
        })?;
        if !filter.types.contains(known) {
            filter.types.push(known);
        }
    }
    Ok(filter)
}

/// Changes as they happen, as Server-Sent Events: `presence`, `incident.created`,
/// `incident.updated`, `action.finished` (each `data` is the JSON message of the same
/// name in docs/PROTOCOL.md, each `id` its place in the feed). A reconnect with
/// `Last-Event-ID` replays what was missed; `reload` says it is no longer kept,
/// `lagged` that the client fell behind and was closed. Comments keep the connection
/// alive. Authenticated by `Authorization` or by a ticket.
#[utoipa::path(
    get, path = "/api/v1/stream", tag = "stream", security(("bearer" = [])),
    params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An endless `text/event-stream`", body = String, content_type = "text/event-stream"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    mut parts: Parts,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    let filter = filter_of(&query)?;
    let last_seen = match parts.headers.get("last-event-id") {
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
                ApiError::bad_request("invalid-header", "Last-Event-ID must be an event id from this stream")
            })?)
        }
        None => query.last_event_id,
    };
    let user = match &query.ticket {
        Some(ticket) => redeem(&state, ticket).await?,
        None => CurrentUser::from_request_parts(&mut parts, &state).await?,
    };
    user.require(Role::Viewer)?;
    tracing::info!(user = %user.email, last_event_id = ?last_seen, "live stream opened");
    Ok(client_stream(state.feed_hub.clone(), filter, last_seen).into_response())
}
