//! Rate limits kept in Redis (fixed windows, one atomic script per check), so every
//! gateway replica counts together.
//!
//! When Redis is unreachable: general limits fail open (the API stays up; a warning is
//! logged and `opspilot_ratelimit_unavailable_total` counts it), while login attempts
//! fall back to a per-replica in-memory window, so brute force stays bounded even then.
//!
//! Addresses are counted by [`crate::client_ip::limit_key`]: an IPv4 address or an
//! IPv6 /64. Logins count twice: every attempt per address, and *failed* attempts
//! per account and address. Only failures lock, and only the address that failed: a
//! burst of wrong passwords for an account from elsewhere does not lock its owner out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::ApiError;

/// Requests allowed per window; 0 disables a limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) per_ip_per_minute: u32,
    pub(crate) per_user_per_minute: u32,
    pub(crate) login_per_ip_per_minute: u32,
    /// Failed logins per account and address within 10 minutes before that address
    /// is refused for the account.
    pub login_per_account_per_10_minutes: u32,
    pub(crate) enroll_per_ip_per_minute: u32,
}

pub(crate) struct RateLimiter {
    redis: storage::redis::Pool,
    keys: storage::redis::Keys,
    limits: Limits,
    script: redis::Script,
    // Locked only to update one counter; never held across an await.
    fallback: Mutex<HashMap<String, (Instant, u32)>>,
}

const SCRIPT: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {count, ttl}
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenRedisIsDown {
    Allow,
    LocalWindow,
}

impl RateLimiter {
    pub(crate) fn new(redis: storage::redis::Pool, keys: storage::redis::Keys, limits: Limits) -> Self {
        Self { redis, keys, limits, script: redis::Script::new(SCRIPT), fallback: Mutex::new(HashMap::new()) }
    }

    pub(crate) async fn per_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            "ip",
            &crate::client_ip::limit_key(ip),
            self.limits.per_ip_per_minute,
            Duration::from_secs(60),
            WhenRedisIsDown::Allow,
        )
        .await
    }

    pub(crate) async fn per_user(&self, user: Uuid) -> Result<(), ApiError> {
        self.check(
            "user",
            &user.to_string(),
            self.limits.per_user_per_minute,
            Duration::from_secs(60),
            WhenRedisIsDown::Allow,
        )
        .await
    }

    /// Before a login is checked: every attempt counts per address, and an address
    /// that failed too often for this account (case-insensitive email) is refused.
    pub(crate) async fn login(&self, ip: IpAddr, email: &str) -> Result<(), ApiError> {
        self.check(
            "login-ip",
            &crate::client_ip::limit_key(ip),
            self.limits.login_per_ip_per_minute,
            Duration::from_secs(60),
            WhenRedisIsDown::LocalWindow,
        )
        .await?;
        let limit = self.limits.login_per_account_per_10_minutes;
        if limit == 0 {
            return Ok(());
        }
        let key = self.keys.rate_limit("login-fail", &failure_subject(ip, email));
        let (failures, ttl_ms) = match self.peek(&key).await {
            Ok(found) => found,
            Err(_) => self.peek_local(&key),
        };
        if failures >= i64::from(limit) {
            metrics::counter!("opspilot_ratelimited_total", "scope" => "login-fail").increment(1);
            return Err(ApiError::RateLimited {
                retry_after: u64::try_from(ttl_ms).unwrap_or(1).div_ceil(1000).max(1),
            });
        }
        Ok(())
    }

    /// A login that failed: it counts against this account from this address.
    pub(crate) async fn login_failed(&self, ip: IpAddr, email: &str) {
        let key = self.keys.rate_limit("login-fail", &failure_subject(ip, email));
        let window = Duration::from_secs(600);
        if self.count(&key, window).await.is_err() {
            let _ = self.check_local(&key, u32::MAX, window);
        }
    }

    async fn peek(&self, key: &str) -> Result<(i64, i64), storage::redis::RedisError> {
        let mut conn = self.redis.get().await?;
        let (count, ttl): (Option<i64>, i64) =
            redis::pipe().get(key).pttl(key).query_async(&mut conn).await?;
        Ok((count.unwrap_or(0), ttl))
    }

    fn peek_local(&self, key: &str) -> (i64, i64) {
        let windows = self.fallback.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        windows.get(key).map_or((0, 0), |(start, count)| {
            let left = Duration::from_secs(600).saturating_sub(start.elapsed());
            if left.is_zero() {
                (0, 0)
            } else {
                (i64::from(*count), i64::try_from(left.as_millis()).unwrap_or(0))
            }
        })
    }

    pub(crate) async fn enroll(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            "enroll-ip",
            &crate::client_ip::limit_key(ip),
            self.limits.enroll_per_ip_per_minute,
            Duration::from_secs(60),
            WhenRedisIsDown::LocalWindow,
        )
        .await
    }

    async fn check(
        &self,
        scope: &str,
        subject: &str,
        limit: u32,
        window: Duration,
        when_down: WhenRedisIsDown,
    ) -> Result<(), ApiError> {
        if limit == 0 {
            return Ok(());
        }
        let key = self.keys.rate_limit(scope, subject);
        match self.count(&key, window).await {
            Ok((count, ttl_ms)) => {
                if count > i64::from(limit) {
                    metrics::counter!("opspilot_ratelimited_total", "scope" => scope.to_owned()).increment(1);
                    return Err(ApiError::RateLimited {
                        retry_after: u64::try_from(ttl_ms).unwrap_or(1).div_ceil(1000).max(1),
                    });
                }
                Ok(())
            }
            Err(err) => {
                metrics::counter!("opspilot_ratelimit_unavailable_total").increment(1);
                tracing::warn!(scope, error = %err, "rate limit store unavailable");
                match when_down {
                    WhenRedisIsDown::Allow => Ok(()),
                    WhenRedisIsDown::LocalWindow => self.check_local(&key, limit, window),
                }
            }
        }
    }

    async fn count(&self, key: &str, window: Duration) -> Result<(i64, i64), storage::redis::RedisError> {
        let mut conn = self.redis.get().await?;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let (count, ttl): (i64, i64) = self.script.key(key).arg(window_ms).invoke_async(&mut conn).await?;
        Ok((count, ttl))
    }

    fn check_local(&self, key: &str, limit: u32, window: Duration) -> Result<(), ApiError> {
        // Counting a failure (limit u32::MAX) and checking share this window.
        let now = Instant::now();
        let mut windows = self.fallback.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > limit {
            let retry_after = window.saturating_sub(now.duration_since(entry.0)).as_secs().max(1);
            return Err(ApiError::RateLimited { retry_after });
        }
        Ok(())
    }
}

/// The account (case-insensitive email, hashed) and the address a failure counts for.
fn failure_subject(ip: IpAddr, email: &str) -> String {
    let account = wire_models::sha256_hex(email.trim().to_lowercase().as_bytes());
    format!("{account}:{}", crate::client_ip::limit_key(ip))
}
