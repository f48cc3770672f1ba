//! Extractors that turn axum's rejections into problem documents, so a malformed
//! body, query or path is a 4xx with a JSON problem, never axum's plain-text default.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// How long a whole request body may take to arrive, set once on the router. The
/// body limit bounds the size of a body but not its pace: without a deadline a client
/// trickling a byte at a time holds a connection and a task for as long as it likes.
#[derive(Clone, Copy)]
pub(crate) struct BodyDeadline(pub std::time::Duration);

/// `Json<T>` with problem+json rejections, read within the [`BodyDeadline`].
pub(crate) struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let read = axum::Json::<T>::from_request(req, state);
        let read = match deadline {
            Some(BodyDeadline(limit)) => {
                tokio::time::timeout(limit, read).await.map_err(|_| ApiError::BodyTimeout(limit))?
            }
            None => read.await,
        };
        match read {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("expected a body with Content-Type: application/json".into())
        }
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid-body", bounded(e.body_text())),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed-json", bounded(e.body_text())),
        JsonRejection::BytesRejection(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(crate::BODY_LIMIT)
        }
        other => ApiError::bad_request("invalid-body", bounded(other.body_text())),
    }
}

/// `Query<T>` with problem+json rejections.
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid-query", bounded(rejection.body_text()))
}

/// `Path<T>` with problem+json rejections.
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::bad_request("invalid-path", bounded(rejection.body_text()))
}

/// Rejection texts can echo hostile input; keep them short.
fn bounded(text: String) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text;
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Parses an agent id from a path segment with a clear 400.
pub(crate) fn agent_id(raw: &str) -> Result<wire_models::AgentId, ApiError> {
    wire_models::AgentId::parse(raw).map_err(|e| ApiError::bad_request("invalid-agent-id", e.to_string()))
}
