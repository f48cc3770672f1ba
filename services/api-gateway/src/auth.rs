//! Who is calling: bearer JWTs (HS256 only, issuer and expiry checked), argon2id
//! passwords (hashed off the async threads), and role checks as extractors.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// What a user may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything operators read.
    Viewer,
    /// Also executes actions and asks for analyses; acknowledges and resolves incidents.
    Operator,
    /// Everything: users, enrollment tokens, the audit log, revoking agents.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Token claims.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: Uuid,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) iss: String,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) jti: Uuid,
    /// The user's token version when the token was issued; a password, role or
    /// disabled change moves it on and ends every older token. Tokens from before
    /// versions existed have none and are refused.
    #[serde(default)]
    pub(crate) ver: i32,
}

/// Signing and verification keys with the validation rules pinned.
pub(crate) struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    pub(crate) ttl: Duration,
}

impl JwtKeys {
    pub(crate) fn new(secret: &SecretString, issuer: &str, ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256: a token claiming `none`, RS256 (the key-confusion attack) or any
        // other algorithm is refused before its signature is even looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            issuer: issuer.to_owned(),
            ttl,
        }
    }

    /// A signed token for `user`, and when it expires.
    pub(crate) fn issue(
        &self,
        id: Uuid,
        email: &str,
        role: Role,
        version: i32,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1));
        let claims = Claims {
            sub: id,
            email: email.to_owned(),
            role,
            iss: self.issuer.clone(),
            iat: now.timestamp(),
            exp: expires.timestamp(),
            jti: Uuid::new_v4(),
            ver: version,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing a token: {e}")))?;
        Ok((token, expires))
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidIssuer => "token from another issuer",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "token algorithm not accepted"
                    }
                    ErrorKind::InvalidSignature => "token signature invalid",
                    _ => "token invalid",
                };
                ApiError::Unauthenticated(reason.into())
            })
    }
}

/// Runs argon2id off the async threads, a bounded number at a time: each hash holds
/// 19 MiB for tens of milliseconds, so a login burst could otherwise take all memory.
/// Past the bound a caller waits up to `wait`, then gets 503 with Retry-After.
pub(crate) struct Hasher {
    permits: tokio::sync::Semaphore,
    wait: Duration,
}

impl Hasher {
    pub(crate) fn new(concurrent: usize, wait: Duration) -> Self {
        Self { permits: tokio::sync::Semaphore::new(concurrent.max(1)), wait }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!("opspilot_password_hash_busy_total").increment(1);
                Err(ApiError::Busy { what: "password checking", retry_after: 1 })
            }
        }
    }

    /// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes).
    pub(crate) async fn hash(&self, password: SecretString) -> Result<String, ApiError> {
        let _permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            use argon2::password_hash::PasswordHasher;
            argon2::Argon2::default()
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
    }

    /// Checks a password against a stored hash (or the decoy, so a login for an
    /// unknown email takes as long as one with a wrong password).
    pub(crate) async fn verify(
        &self,
        password: SecretString,
        hash: Option<String>,
    ) -> Result<bool, ApiError> {
        let _permit = self.permit().await?;
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            use argon2::password_hash::PasswordVerifier;
            let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(&hash) else { return false };
            argon2::Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok()
        })
        .await
        .unwrap_or(false);
        Ok(ok && real)
    }
}

/// A valid-looking hash to verify against when the user does not exist.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0UGUxkTFRRnUQ0nBB3Vh1K2Gfi7x+7mdK1iGXAGBFjk";

/// The authenticated caller. The role and token version come from the database (or
/// a one-second cache), so disabling a user, lowering a role or changing a password
/// takes effect at once on the replica that made the change and within a second on
/// the others.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) id: Uuid,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) token_version: i32,
}

impl CurrentUser {
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role { Ok(()) } else { Err(ApiError::Forbidden(role.as_str())) }
    }
}

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
        let current = match state.users.get(claims.sub) {
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
                state.users.put(current.clone());
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

/// Users seen in the last second. A role change or a disabled account takes effect
/// within that second on every replica (at once on the replica that made the change);
/// it saves a query on every request.
#[derive(Default)]
pub(crate) struct UserCache {
    // Locked only to read or write one entry; never across an await.
    entries: std::sync::Mutex<std::collections::HashMap<Uuid, (CurrentUser, std::time::Instant)>>,
}

impl UserCache {
    const TTL: Duration = Duration::from_secs(1);

    pub(crate) fn get(&self, id: Uuid) -> Option<CurrentUser> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(&id).filter(|(_, at)| at.elapsed() < Self::TTL).map(|(user, _)| user.clone())
    }

    pub(crate) fn put(&self, user: CurrentUser) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < Self::TTL);
        }
        entries.insert(user.id, (user, std::time::Instant::now()));
    }

    pub(crate) fn forget(&self, id: Uuid) {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
    }
}
