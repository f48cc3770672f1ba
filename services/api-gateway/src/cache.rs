//! Read-through cache in Redis for reads that many dashboards repeat (agent lists).
//! Entries live a couple of seconds at most, so nothing shown is staler than that;
//! any Redis trouble just means a cache miss.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::AppState;

pub(crate) async fn get<T: DeserializeOwned>(state: &AppState, name: &str) -> Option<T> {
    if state.cache_ttl.is_zero() {
        return None;
    }
    let mut conn = state.redis.get().await.ok()?;
    let raw: Option<Vec<u8>> =
        redis::cmd("GET").arg(state.keys.cache(name)).query_async(&mut *conn).await.ok()?;
    let value = raw.and_then(|raw| serde_json::from_slice(&raw).ok());
    metrics::counter!("opspilot_api_cache_total", "result" => if value.is_some() { "hit" } else { "miss" })
        .increment(1);
    value
}

pub(crate) async fn put<T: Serialize>(state: &AppState, name: &str, value: &T) {
    if state.cache_ttl.is_zero() {
        return;
    }
    let Ok(raw) = serde_json::to_vec(value) else { return };
    let Ok(mut conn) = state.redis.get().await else { return };
    let ttl_ms = u64::try_from(state.cache_ttl.as_millis()).unwrap_or(2000);
    let _: Result<(), _> = redis::cmd("SET")
        .arg(state.keys.cache(name))
        .arg(raw)
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut *conn)
        .await;
}
