//! The client's address, for rate limits and logs. `X-Forwarded-For` is believed only
//! when the gateway is configured to sit behind a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::error::ApiError;

/// Whether to trust `X-Forwarded-For` (set from the config as a request extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrustProxy(pub bool);

pub(crate) struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

pub(crate) fn client_ip(parts: &Parts) -> IpAddr {
    let trust = parts.extensions.get::<TrustProxy>().is_some_and(|t| t.0);
    if trust
        && let Some(forwarded) = parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        && let Some(ip) = forwarded.split(',').next().and_then(|s| s.trim().parse::<IpAddr>().ok())
    {
        return ip;
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}
