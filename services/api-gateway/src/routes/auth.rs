use axum::Json;
use axum::extract::State;
use secrecy::SecretString;

use crate::auth::{CurrentUser, Hasher, Role};
use crate::client_ip::ClientIp;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::requests::LoginRequest;
use crate::state::AppState;
use crate::views::{LoginResponse, UserView};

/// Exchanges an email and password for a bearer token.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    // Lengths in characters, as the document's maxLength counts them.
    if body.email.chars().count() > 254
        || body.password.chars().count() > 1024
        || body.email.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid-body",
            "email or password too long, or with control characters",
        ));
    }
    state.limiter.login(ip, &body.email).await?;
    let user = storage::users::by_email(&state.pool, &body.email).await?;
    let hash = user.as_ref().filter(|u| !u.disabled).map(|u| u.password_hash.clone());
    let valid = state.hasher.verify(SecretString::from(body.password), hash).await?;
    let Some(user) = user.filter(|_| valid) else {
        state.limiter.login_failed(ip, &body.email).await;
        metrics::counter!("opspilot_logins_total", "outcome" => "refused").increment(1);
        tracing::info!(client_ip = %ip, "login refused");
        return Err(ApiError::Unauthenticated("wrong email or password".into()));
    };
    let role =
        Role::parse(&user.role).ok_or_else(|| ApiError::Unauthenticated("user has no valid role".into()))?;
    let (token, expires_at) = state.jwt.issue(user.id, &user.email, role, user.token_version)?;
    storage::users::touch_login(&state.pool, user.id).await?;
    metrics::counter!("opspilot_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(user_id = %user.id, role = role.as_str(), "user logged in");
    Ok(Json(LoginResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: state.jwt.ttl.as_secs(),
        expires_at,
        user: user.into(),
    }))
}

/// The user the token belongs to.
#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The current user", body = UserView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn me(State(state): State<AppState>, user: CurrentUser) -> ApiResult<Json<UserView>> {
    let user = storage::users::by_id(&state.pool, user.id)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated("user unknown".into()))?;
    Ok(Json(user.into()))
}

/// Creates a user (the `create-user` subcommand and the first admin from the
/// environment both come through here).
pub(crate) async fn create_user(
    pool: &storage::PgPool,
    hasher: &Hasher,
    email: &str,
    password: SecretString,
    role: Role,
) -> ApiResult<storage::users::User> {
    validate_email(email)?;
    validate_password(&password)?;
    let hash = hasher.hash(password).await?;
    Ok(storage::users::create(pool, email.trim(), &hash, role.as_str()).await?)
}

pub(crate) fn validate_email(email: &str) -> ApiResult<()> {
    let email = email.trim();
    let valid = email.chars().count() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid { Ok(()) } else { Err(ApiError::bad_request("invalid-email", "not a valid email address")) }
}

pub(crate) fn validate_password(password: &SecretString) -> ApiResult<()> {
    use secrecy::ExposeSecret;
    let len = password.expose_secret().chars().count();
    if (12..=1024).contains(&len) {
        Ok(())
    } else {
        Err(ApiError::bad_request("weak-password", "passwords must be 12 to 1024 characters"))
    }
}
