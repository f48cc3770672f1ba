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
        let read = axum::Json::<Sent>::from_request(req, state);
        let read = match deadline {
            Some(BodyDeadline(limit)) => {
                tokio::time::timeout(limit, read).await.map_err(|_| ApiError::BodyTimeout(limit))?
            }
            None => read.await,
        };
        let axum::Json(Sent(value)) = read.map_err(json_rejection)?;
        // Read again as `T` from the normalised JSON, so the errors name the field at fault.
        let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.into()))?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body as the client sent it, with two differences from `serde_json::Value`:
/// a number with no fractional part (`3.0`, `1e3`) is read as the integer it is, as
/// JSON Schema's `integer` (and so the document) counts it; and an object that repeats
/// a key is refused, as the typed read would refuse it, rather than keeping the last.
struct Sent(serde_json::Value);

/// Integers a double holds exactly.
const EXACT_IN_F64: f64 = 9_007_199_254_740_992.0;

impl<'de> serde::Deserialize<'de> for Sent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SentVisitor).map(Sent)
    }
}

struct SentVisitor;

impl<'de> serde::de::Visitor<'de> for SentVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Exact: the value is integral and within what an f64 holds without rounding.
        if v.fract() == 0.0 && v.abs() <= EXACT_IN_F64 {
            return Ok((v as i64).into());
        }
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::Deserialize::deserialize(d).map(|Sent(v)| v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Sent(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let Sent(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_numbers_are_integers_and_repeated_keys_are_refused() {
        let sent: Sent =
            serde_json::from_str(r#"{"a": 3.0, "b": [1e3, 1.5, -2.0], "c": {"d": 1e20}}"#).unwrap();
        assert_eq!(sent.0, serde_json::json!({"a": 3, "b": [1000, 1.5, -2], "c": {"d": 1e20}}));
        let repeated = serde_json::from_str::<Sent>(r#"{"command": "ping", "command": "stop_service"}"#);
        assert!(repeated.is_err_and(|e| e.to_string().contains("duplicate field `command`")));
    }
}
