//! Typed request-reply: encode, carry the trace context, wait at most a timeout,
//! decode; with "nobody listens" and "no answer in time" as errors of their own.

use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use tracing::Instrument;
use wire_models::WireMessage;

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nobody is subscribed (an agent that is not connected, no analyzer running).
    #[error("no responders on {subject}")]
    NoResponders { subject: String },
    #[error("no reply on {subject} within {timeout:?}")]
    TimedOut { subject: String, timeout: Duration },
    /// The reply did not decode as the expected message.
    #[error("invalid reply on {subject}: {detail}")]
    InvalidReply { subject: String, detail: String },
    /// The connection is down or the request could not be sent.
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
    /// A request we built is wrong (a bug, not a condition to retry).
    #[error("sending the request: {0}")]
    Invalid(String),
}

/// Sends `request` to `subject` and decodes the reply as `Rep`.
pub async fn request<Req: WireMessage, Rep: WireMessage>(
    client: &async_nats::Client,
    subject: String,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, RequestError> {
    let payload =
        Bytes::from(wire_models::encode(request).map_err(|e| RequestError::Invalid(e.to_string()))?);
    let span = crate::trace::send_span(crate::trace::Send::Request, &subject, payload.len());
    async move {
        let mut headers = HeaderMap::new();
        crate::trace::inject_current(&mut headers);
        let nats_request =
            async_nats::Request::new().payload(payload).headers(headers).timeout(Some(timeout));
        let message = client.send_request(subject.clone(), nats_request).await.map_err(|err| {
            let (kind, error) = match err.kind() {
                RequestErrorKind::NoResponders => {
                    ("no_responders", RequestError::NoResponders { subject: subject.clone() })
                }
                RequestErrorKind::TimedOut => {
                    ("timeout", RequestError::TimedOut { subject: subject.clone(), timeout })
                }
                RequestErrorKind::Other => ("unavailable", RequestError::Unavailable(err.to_string())),
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    ("invalid", RequestError::Invalid(err.to_string()))
                }
            };
            crate::trace::record_error(kind);
            error
        })?;
        wire_models::decode(&message.payload)
            .map_err(|e| RequestError::InvalidReply { subject, detail: e.to_string() })
    }
    .instrument(span)
    .await
}
