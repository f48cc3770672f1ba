use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use rand::Rng;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::requests::*;
use crate::routes::{page_size, schema};
use crate::state::AppState;
use crate::views::*;

const MAX_TOKEN_LIFETIME_SECS: u64 = 90 * 86400;

/// Writes an administrative change to the audit log (who, what, on which agent, with
/// what details). Secrets never go into `detail`.
pub(crate) async fn audit_change(
    state: &AppState,
    by: &crate::auth::CurrentUser,
    action: &str,
    agent: Option<&str>,
    outcome: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    storage::audit::record(
        &state.pool,
        &storage::audit::NewAudit {
            request_id: Uuid::now_v7(),
            actor: &by.email,
            action,
            agent_id: agent,
            incident_id: None,
            command: None,
            params: Some(&detail),
        },
        outcome,
        None,
    )
    .await?;
    Ok(())
}

/// Creates an enrollment token; the token is in the response once and never again.
#[utoipa::path(
    post, path = "/api/v1/enrollment-tokens", tag = "admin", security(("bearer" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid-body", "name must be 1 to 128 printable characters"));
    }
    let lifetime = body.expires_in_secs.unwrap_or(86400);
    if !(60..=MAX_TOKEN_LIFETIME_SECS).contains(&lifetime) {
        return Err(ApiError::bad_request("invalid-body", "expires_in_secs must be between 60 and 7776000"));
    }
    let max_uses = match body.max_uses {
        None => None,
        Some(n @ 1..=1_000_000) => Some(i32::try_from(n).unwrap_or(i32::MAX)),
        Some(_) => {
            return Err(ApiError::bad_request("invalid-body", "max_uses must be between 1 and 1000000"));
        }
    };
    let secret: [u8; 32] = rand::rng().random();
    let token = format!("opt_{}", hex::encode(secret));
    let expires_at = Utc::now() + chrono::Duration::seconds(i64::try_from(lifetime).unwrap_or(86400));
    let created = storage::tokens::create(
        &state.pool,
        name,
        &wire_models::sha256_hex(token.as_bytes()),
        Some(user.id),
        expires_at,
        max_uses,
    )
    .await?;
    audit_change(
        &state,
        &user,
        "create_enrollment_token",
        None,
        "ok",
        serde_json::json!({"token_id": created.id, "name": name, "expires_at": expires_at, "max_uses": max_uses}),
    )
    .await?;
    tracing::info!(token_id = %created.id, by = %user.email, "enrollment token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token, details: created.into() })))
}

/// Enrollment tokens with their use counts (never the tokens themselves).
#[utoipa::path(
    get, path = "/api/v1/enrollment-tokens", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<TokenView>), (status = 403, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<Vec<TokenView>>> {
    Ok(Json(storage::tokens::list(&state.pool).await?.into_iter().map(Into::into).collect()))
}

/// Revokes an enrollment token.
#[utoipa::path(
    delete, path = "/api/v1/enrollment-tokens/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Token id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    responses(
        (status = 200, body = TokenView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Admin(user): Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<TokenView>> {
    let token = storage::tokens::revoke(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("enrollment token {id} not found")))?;
    audit_change(&state, &user, "revoke_enrollment_token", None, "ok", serde_json::json!({"token_id": id}))
        .await?;
    tracing::info!(token_id = %id, by = %user.email, "enrollment token revoked");
    Ok(Json(token.into()))
}

/// Creates a user.
#[utoipa::path(
    post, path = "/api/v1/users", tag = "admin", security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, body = UserView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Email already in use", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = crate::routes::auth::create_user(
        &state.pool,
        &state.hasher,
        &body.email,
        SecretString::from(body.password),
        body.role,
    )
    .await?;
    audit_change(
        &state,
        &admin,
        "create_user",
        None,
        "ok",
        serde_json::json!({"user_id": user.id, "email": user.email, "role": user.role}),
    )
    .await?;
    tracing::info!(user_id = %user.id, role = %user.role, by = %admin.email, "user created");
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Every user.
#[utoipa::path(
    get, path = "/api/v1/users", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserView>), (status = 403, body = Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<Vec<UserView>>> {
    Ok(Json(storage::users::list(&state.pool, 1000).await?.into_iter().map(Into::into).collect()))
}

/// Changes a user's role, disables them, or sets a new password.
#[utoipa::path(
    patch, path = "/api/v1/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id", example = "0192f3a4-5b6c-7d8e-9f01-23456789abcd")),
    request_body = UpdateUser,
    responses(
        (status = 200, body = UserView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An admin cannot demote or disable themselves", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn update_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    if id == admin.id
        && (body.disabled == Some(true) || body.role.is_some_and(|r| r != crate::auth::Role::Admin))
    {
        return Err(ApiError::Conflict("an admin cannot demote or disable themselves".into()));
    }
    let changed = serde_json::json!({
        "user_id": id,
        "role": body.role.map(|r| r.as_str()),
        "disabled": body.disabled,
        "password_changed": body.password.is_some(),
    });
    let password_hash = match body.password {
        Some(password) => {
            let password = SecretString::from(password);
            crate::routes::auth::validate_password(&password)?;
            Some(state.hasher.hash(password).await?)
        }
        None => None,
    };
    let user = storage::users::update(
        &state.pool,
        id,
        body.role.map(|r| r.as_str()),
        body.disabled,
        password_hash.as_deref(),
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    state.users.forget(&id);
    audit_change(&state, &admin, "update_user", None, "ok", changed).await?;
    tracing::info!(user_id = %id, by = %admin.email, "user updated");
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only actions on this agent.
    #[param(value_type = Option<schema::AgentIdDoc>, inline)]
    agent_id: Option<String>,
    /// The `next_cursor` of the previous page.
    before: Option<i64>,
    limit: Option<u32>,
}

/// The audit log of actions, newest first.
#[utoipa::path(
    get, path = "/api/v1/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn audit(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = page_size(query.limit)?;
    let agent = query.agent_id.as_deref().map(crate::extract::agent_id).transpose()?;
    // Outcomes this replica has queued are in what follows (a client reads its own).
    state.audit.settled().await;
    let rows =
        storage::audit::list(&state.pool, agent.as_ref().map(|a| a.as_str()), query.before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(AuditPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConflictQuery {
    /// `pending`, `moved`, `split` or `rejected`.
    #[param(value_type = Option<ConflictStatusDoc>, inline)]
    status: Option<String>,
    /// The `next_cursor` of the previous page.
    before: Option<i64>,
    limit: Option<u32>,
}

/// What an identity conflict's `status` may be.
const CONFLICT_STATUSES: [&str; 4] = ["pending", "moved", "split", "rejected"];

schema::documented! {
    ConflictStatusDoc => schema::enumeration(CONFLICT_STATUSES).into();
}

/// Identity conflicts: enrolled machines that came back with a key not on record.
#[utoipa::path(
    get, path = "/api/v1/identity-conflicts", tag = "admin", security(("bearer" = [])), params(ConflictQuery),
    responses(
        (status = 200, body = IdentityConflictPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_conflicts(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<ConflictQuery>,
) -> ApiResult<Json<IdentityConflictPage>> {
    let limit = page_size(query.limit)?;
    if let Some(status) = &query.status
        && !CONFLICT_STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            "status must be pending, moved, split or rejected",
        ));
    }
    let rows = storage::conflicts::list(&state.pool, query.status.as_deref(), query.before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(IdentityConflictPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Resolves an identity conflict: `move` gives the agent to the presented key (its
/// other keys are revoked at once), `split` makes the machine a new agent, `reject`
/// refuses the key. The machine then enrolls with a proof by its key.
#[utoipa::path(
    post, path = "/api/v1/identity-conflicts/{id}/resolve", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Conflict id", example = 1)),
    request_body = ResolveConflict,
    responses(
        (status = 200, body = IdentityConflictView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already resolved, or the key is another agent's by now", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn resolve_conflict(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ResolveConflict>,
) -> ApiResult<Json<IdentityConflictView>> {
    use storage::conflicts::{Resolution, Resolved};
    let resolution = match body.resolution {
        ConflictResolution::Move => Resolution::Move,
        ConflictResolution::Split => Resolution::Split,
        ConflictResolution::Reject => Resolution::Reject,
    };
    let outcome = storage::conflicts::resolve(
        &state.pool,
        id,
        resolution,
        &admin.email,
        &wire_models::AgentId::random(),
    )
    .await?;
    let (conflict, agent, revoked) = match outcome {
        Resolved::Done { conflict, agent, revoked_keys } => (conflict, agent, revoked_keys),
        Resolved::NotFound => return Err(ApiError::NotFound(format!("identity conflict {id} not found"))),
        Resolved::NotPending => {
            return Err(ApiError::Conflict(format!("identity conflict {id} is not pending any more")));
        }
        Resolved::KeyInUse => {
            return Err(ApiError::KeyInUse(format!(
                "the key of identity conflict {id} belongs to another agent now"
            )));
        }
    };
    if !revoked.is_empty()
        && let Err(err) = state.bus_auth.sync(&state.pool).await
    {
        tracing::warn!(error = %err, "revocation not yet pushed to the bus; the resync will retry");
    }
    audit_change(
        &state,
        &admin,
        "resolve_identity_conflict",
        agent.as_ref().map(|a| a.as_str()).or(conflict.agent_id.as_deref()),
        resolution.as_str(),
        serde_json::json!({"conflict_id": id, "public_key": conflict.public_key, "revoked_keys": revoked,
                           "from_agent": conflict.agent_id}),
    )
    .await?;
    tracing::info!(conflict_id = id, resolution = resolution.as_str(), by = %admin.email, "identity conflict resolved");
    Ok(Json((*conflict).into()))
}
