//! Rate limits kept in Redis (fixed windows, one atomic script per check), so every
//! gateway replica counts together.
//!
//! When Redis is unreachable: general limits fail open (the API stays up; a warning is
//! logged and `opspilot_ratelimit_unavailable_total` counts it), while login attempts
//! fall back to a per-replica in-memory window, so brute force stays bounded even then.

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
    pub login_per_account_per_10_minutes: u32,
    pub(crate) enroll_per_ip_per_minute: u32,
}

pub(crate) struct RateLimiter {
    redis: presence::Pool,
    keys: presence::Keys,
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
    pub(crate) fn new(redis: presence::Pool, keys: presence::Keys, limits: Limits) -> Self {
        Self { redis, keys, limits, script: redis::Script::new(SCRIPT), fallback: Mutex::new(HashMap::new()) }
    }

    pub(crate) async fn per_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            "ip",
            &ip.to_string(),
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

    /// Login: per client address and per account (case-insensitive email).
    pub(crate) async fn login(&self, ip: IpAddr, email: &str) -> Result<(), ApiError> {
        self.check(
            "login-ip",
            &ip.to_string(),
            self.limits.login_per_ip_per_minute,
            Duration::from_secs(60),
            WhenRedisIsDown::LocalWindow,
        )
        .await?;
        let account = wire_models::sha256_hex(email.to_lowercase().as_bytes());
        self.check(
            "login-account",
            &account,
            self.limits.login_per_account_per_10_minutes,
            Duration::from_secs(600),
            WhenRedisIsDown::LocalWindow,
        )
        .await
    }

    pub(crate) async fn enroll(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            "enroll-ip",
            &ip.to_string(),
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

    async fn count(&self, key: &str, window: Duration) -> Result<(i64, i64), presence::PresenceError> {
        let mut conn = self.redis.get().await?;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let (count, ttl): (i64, i64) = self.script.key(key).arg(window_ms).invoke_async(&mut *conn).await?;
        Ok((count, ttl))
    }

    fn check_local(&self, key: &str, limit: u32, window: Duration) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut windows = self.fallback.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > limit {
            let retry_after = window.saturating_sub(now.duration_since(entry.0)).as_secs().max(1);
            return Err(ApiError::RateLimited { retry_after });
        }
        Ok(())
    }
}
