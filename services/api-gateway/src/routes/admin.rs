use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use rand::Rng;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::{Admin, hash_password};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::page_size;
use crate::state::AppState;
use crate::views::*;

const MAX_TOKEN_LIFETIME_SECS: u64 = 90 * 86400;

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
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
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
    params(("id" = Uuid, Path, description = "Token id")),
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
        &body.email,
        SecretString::from(body.password),
        body.role,
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
    params(("id" = Uuid, Path, description = "User id")),
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
    let password_hash = match body.password {
        Some(password) => {
            let password = SecretString::from(password);
            crate::routes::auth::validate_password(&password)?;
            Some(hash_password(password).await?)
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
    state.users.forget(id);
    tracing::info!(user_id = %id, by = %admin.email, "user updated");
    Ok(Json(user.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only actions on this agent.
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
    let rows =
        storage::audit::list(&state.pool, agent.as_ref().map(|a| a.as_str()), query.before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(AuditPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}
