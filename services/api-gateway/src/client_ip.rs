//! The client's address, for rate limits, logs and the audit log.
//!
//! `X-Forwarded-For` is a list every hop appends to, and its left end is whatever the
//! client wrote. So it is read from the right, and only as far as the hops are
//! proxies this gateway trusts: `TRUSTED_PROXIES` names them by network; the first
//! address (from the right) that is not one of them is the client. From a peer that
//! is not a trusted proxy the header is ignored. `TRUST_PROXY_HEADERS` (without
//! `TRUSTED_PROXIES`) trusts exactly one hop, whatever its address: right only when
//! nothing but that proxy can reach the gateway.
//!
//! The walk is written here because the usual extractor crates only take the
//! rightmost entry (one proxy); `ipnet` does the network matching.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::error::ApiError;

/// Entries read from the right at most: a long header costs bounded work.
const MAX_HOPS: usize = 32;

/// Which proxies to believe (set from the config as a request extension).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustProxy {
    /// Proxies by network; when set, only their headers are read.
    pub(crate) networks: Vec<IpNet>,
    /// Without networks: trust one hop (the rightmost entry) from any peer.
    pub(crate) one_hop: bool,
}

impl TrustProxy {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a connection from `peer` with these
    /// `X-Forwarded-For` values (in header order).
    pub(crate) fn resolve<'a>(&self, peer: IpAddr, forwarded: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if self.networks.is_empty() && !self.one_hop {
            return peer;
        }
        if !self.networks.is_empty() && !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
        let mut client = peer;
        for entry in entries.iter().rev().take(MAX_HOPS) {
            let Some(ip) = parse_entry(entry) else {
                // A malformed hop breaks the chain: the last address a trusted hop
                // vouched for stands.
                return client;
            };
            client = ip;
            if self.networks.is_empty() || !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// An entry is an address, optionally with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<SocketAddr>().ok().map(|addr| canonical(addr.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What rate limits count by: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64 and could otherwise use a new address per request).
pub(crate) fn limit_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

pub(crate) struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

pub(crate) fn client_ip(parts: &Parts) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    match parts.extensions.get::<TrustProxy>() {
        Some(trust) => trust
            .resolve(peer, parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok())),
        None => canonical(peer),
    }
}

/// Parses `TRUSTED_PROXIES`: comma-separated networks or single addresses.
pub(crate) fn parse_networks(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{p:?} is not an address or a network (e.g. 10.0.0.0/8)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trust_the_header_is_ignored() {
        let trust = TrustProxy::default();
        assert_eq!(trust.resolve(ip("203.0.113.9"), ["1.2.3.4"].into_iter()), ip("203.0.113.9"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trust =
            TrustProxy { networks: parse_networks("10.0.0.0/8, 192.168.1.1").unwrap(), one_hop: false };
        // A client forged "1.1.1.1"; the edge proxy appended the real address, an
        // inner proxy appended the edge's.
        let xff = ["1.1.1.1, 198.51.100.7", "10.1.2.3"];
        assert_eq!(trust.resolve(ip("192.168.1.1"), xff.into_iter()), ip("198.51.100.7"));
        // From a peer that is not a trusted proxy the header means nothing.
        assert_eq!(trust.resolve(ip("198.51.100.99"), xff.into_iter()), ip("198.51.100.99"));
        // Every hop trusted: the leftmost stands.
        assert_eq!(trust.resolve(ip("10.0.0.1"), ["10.0.0.2, 10.0.0.3"].into_iter()), ip("10.0.0.2"));
        // A malformed entry stops the walk at the last vouched-for address.
        assert_eq!(trust.resolve(ip("10.0.0.1"), ["1.1.1.1, garbage, 10.0.0.3"].into_iter()), ip("10.0.0.3"));
        // Ports and mapped addresses.
        assert_eq!(trust.resolve(ip("10.0.0.1"), ["[2001:db8::1]:443"].into_iter()), ip("2001:db8::1"));
        assert_eq!(trust.resolve(ip("::ffff:10.0.0.1"), ["198.51.100.7:80"].into_iter()), ip("198.51.100.7"));
    }

    #[test]
    fn one_hop_takes_the_rightmost_entry() {
        let trust = TrustProxy { networks: Vec::new(), one_hop: true };
        assert_eq!(trust.resolve(ip("10.0.0.1"), ["6.6.6.6, 198.51.100.7"].into_iter()), ip("198.51.100.7"));
        assert_eq!(trust.resolve(ip("10.0.0.1"), std::iter::empty()), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), limit_key(ip("2001:db8:1:2::1")));
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), limit_key(ip("2001:db8:1:2::1")));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert!(parse_networks("10.0.0.0/33").is_err());
    }
}
