//! The API's one error type. Every failure becomes an RFC 7807
//! `application/problem+json` body with a stable `type`; internal causes are logged,
//! never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Prefix of every problem `type` (a URN: stable, and never mistaken for a live URL).
const TYPE_PREFIX: &str = "urn:opspilot:problem:";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("this action needs the {0} role")]
    Forbidden(&'static str),
    #[error("{0}")]
    Revoked(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AgentOffline(String),
    #[error("{detail}")]
    BadRequest { kind: &'static str, detail: String },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    EnrollmentRefused(String),
    #[error("{0}")]
    InvalidProof(String),
    #[error("{0}")]
    IdentityProofRequired(String),
    #[error("{0}")]
    KeyInUse(String),
    #[error("{0}")]
    SuggestionChanged(String),
    /// A well-formed request the current state makes dangerous without an explicit
    /// confirmation (a mutating fleet action to many agents).
    #[error("{0}")]
    ConfirmationRequired(String),
    #[error("{what} is busy; retry in {retry_after} s")]
    Busy { what: &'static str, retry_after: u64 },
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub(crate) fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest { kind, detail: detail.into() }
    }

    /// Status, stable type slug and title for each variant.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthenticated(_) => {
                (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::Revoked(_) => (StatusCode::FORBIDDEN, "revoked", "Revoked"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::AgentOffline(_) => (StatusCode::NOT_FOUND, "agent-offline", "Agent offline"),
            ApiError::BadRequest { kind, .. } => (StatusCode::BAD_REQUEST, kind, "Bad request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large")
            }
            ApiError::BodyTimeout(_) => {
                (StatusCode::REQUEST_TIMEOUT, "body-timeout", "Request body too slow")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            }
            ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
            }
            ApiError::EnrollmentRefused(_) => {
                (StatusCode::UNAUTHORIZED, "enrollment-refused", "Enrollment refused")
            }
            ApiError::InvalidProof(_) => (StatusCode::UNAUTHORIZED, "invalid-proof", "Invalid proof"),
            ApiError::IdentityProofRequired(_) => {
                (StatusCode::CONFLICT, "identity-proof-required", "Proof of identity required")
            }
            ApiError::KeyInUse(_) => (StatusCode::CONFLICT, "key-in-use", "Key in use"),
            ApiError::SuggestionChanged(_) => {
                (StatusCode::CONFLICT, "suggestion-changed", "The suggested action changed")
            }
            ApiError::ConfirmationRequired(_) => {
                (StatusCode::CONFLICT, "confirmation-required", "Confirmation required")
            }
            ApiError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy", "Busy"),
            ApiError::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout", "Timed out"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad-gateway", "Invalid upstream answer"),
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            }
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }
}

/// The problem document (RFC 7807).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Problem {
    /// Stable identifier of the kind of problem (`urn:opspilot:problem:{slug}`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) title: String,
    pub(crate) status: u16,
    pub(crate) detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                "the server could not complete the request; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let body = Problem {
            kind: format!("{TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
        };
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let ApiError::RateLimited { retry_after } | ApiError::Busy { retry_after, .. } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if let ApiError::BodyTimeout(_) = &self {
            // The rest of a slow body is not worth waiting for to reuse the connection.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::Unauthenticated(_) = &self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<storage::StorageError> for ApiError {
    fn from(err: storage::StorageError) -> Self {
        match err {
            storage::StorageError::NotFound => ApiError::NotFound("not found".into()),
            storage::StorageError::Conflict(message) => ApiError::Conflict(message),
            // SQLSTATE class 22 (data exception: a NUL byte, a value out of range) is
            // the input's fault; everything reaching a query is validated first, so
            // this is the safety net, not the plan.
            storage::StorageError::Database(sqlx::Error::Database(db))
                if db.code().is_some_and(|code| code.starts_with("22")) =>
            {
                ApiError::bad_request(
                    "invalid-input",
                    "a value in the request cannot be stored or searched for",
                )
            }
            err if err.is_transient() => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            err => ApiError::Internal(anyhow::Error::new(err)),
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A request-reply over NATS that got no usable answer from `who` (the agent, the
/// analyzer); `nobody` is the answer when nobody listens.
pub(crate) fn bus_error(
    err: natsbus::RequestError,
    who: &str,
    nobody: impl FnOnce() -> ApiError,
) -> ApiError {
    match err {
        natsbus::RequestError::NoResponders { .. } => nobody(),
        natsbus::RequestError::TimedOut { timeout, .. } => {
            ApiError::GatewayTimeout(format!("{who} did not answer within {timeout:?}"))
        }
        natsbus::RequestError::InvalidReply { detail, .. } => {
            ApiError::BadGateway(format!("{who} sent an invalid reply: {detail}"))
        }
        natsbus::RequestError::Unavailable(detail) => {
            ApiError::Unavailable(format!("the message bus is unavailable: {detail}"))
        }
        natsbus::RequestError::Invalid(detail) => {
            ApiError::Internal(anyhow::anyhow!("sending a request to {who}: {detail}"))
        }
    }
}
