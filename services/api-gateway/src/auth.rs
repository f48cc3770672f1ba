//! Who is calling, as axum extractors: the bearer token checked against the user it
//! names (role, disabled, token version), and the role each handler needs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
pub(crate) use crate::passwords::Hasher;
pub use crate::sessions::Role;
pub(crate) use crate::sessions::{CurrentUser, JwtKeys, UserCache};
use crate::state::AppState;

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(user.clone());
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthenticated("expected `Authorization: Bearer <token>`".into()))?;
        let claims = state.jwt.verify(token)?;
        let current = match state.users.get(&claims.sub) {
            Some(user) => user,
            None => {
                let user = storage::users::by_id(&state.pool, claims.sub)
                    .await?
                    .filter(|u| !u.disabled)
                    .ok_or_else(|| ApiError::Unauthenticated("user unknown or disabled".into()))?;
                let role = Role::parse(&user.role)
                    .ok_or_else(|| ApiError::Unauthenticated("user has no valid role".into()))?;
                let current =
                    CurrentUser { id: user.id, email: user.email, role, token_version: user.token_version };
                state.users.put(current.id, current.clone());
                current
            }
        };
        if claims.ver != current.token_version {
            return Err(ApiError::Unauthenticated(
                "token no longer valid (the account changed); log in again".into(),
            ));
        }
        state.limiter.per_user(current.id).await?;
        parts.extensions.insert(current.clone());
        Ok(current)
    }
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        #[allow(dead_code)] // read-only handlers only need the check, not the user
        pub(crate) struct $name(pub(crate) CurrentUser);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                let user = CurrentUser::from_request_parts(parts, state).await?;
                user.require($role)?;
                Ok($name(user))
            }
        }
    };
}

role_extractor!(Viewer, Role::Viewer, "Any authenticated user.");
role_extractor!(Operator, Role::Operator, "An operator or an admin.");
role_extractor!(Admin, Role::Admin, "An admin.");
