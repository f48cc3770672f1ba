//! Read-through cache for reads that many dashboards repeat (agent lists), in two levels:
//! each replica keeps the encoded page in memory, and Redis shares it between replicas.
//!
//! An entry lives `API_CACHE_TTL` from the moment its page was built, at both levels: a
//! replica that takes a page from Redis keeps it only for the time Redis has left on it,
//! so nothing shown is staler than the TTL. When an entry expires under load, every
//! request in flight would miss together and run the same query; [`Loads`] lets one of
//! them fill the entry while the others on this replica wait for it. Any Redis trouble
//! just means a miss.

use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::error::ApiResult;

/// How many distinct pages a replica keeps in memory; filters and cursors make the key
/// space unbounded, so the oldest go first.
const LOCAL_PAGES: u64 = 1_000;

#[derive(Clone)]
struct Entry {
    body: Bytes,
    expires_at: Instant,
}

struct UntilBuiltPlusTtl;

impl moka::Expiry<String, Entry> for UntilBuiltPlusTtl {
    fn expire_after_create(&self, _key: &String, entry: &Entry, created_at: Instant) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(created_at))
    }
}

pub(crate) struct PageCache {
    ttl: Duration,
    local: moka::future::Cache<String, Entry>,
    loads: Loads,
    redis: storage::redis::Pool,
    keys: storage::redis::Keys,
}

impl PageCache {
    pub(crate) fn new(ttl: Duration, redis: storage::redis::Pool, keys: storage::redis::Keys) -> Self {
        let local =
            moka::future::Cache::builder().max_capacity(LOCAL_PAGES).expire_after(UntilBuiltPlusTtl).build();
        Self { ttl, local, loads: Loads::default(), redis, keys }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }
}

/// Answers with the cached page named `name`, or builds it with `build` (a JSON body).
pub(crate) async fn read_through<F>(cache: &PageCache, name: &str, build: F) -> ApiResult<Response>
where
    F: Future<Output = ApiResult<Vec<u8>>>,
{
    if !cache.enabled() {
        return Ok(json_response(Bytes::from(build.await?)));
    }
    if let Some(entry) = cache.local.get(name).await {
        count("local");
        return Ok(json_response(entry.body));
    }
    let _turn = cache.loads.lock(name).await;
    if let Some(entry) = cache.local.get(name).await {
        count("local");
        return Ok(json_response(entry.body));
    }
    let entry = match shared_get(cache, name).await {
        Some(entry) => {
            count("shared");
            entry
        }
        None => {
            count("miss");
            let body = Bytes::from(build.await?);
            shared_put(cache, name, &body, cache.ttl).await;
            Entry { body, expires_at: Instant::now() + cache.ttl }
        }
    };
    cache.local.insert(name.to_owned(), entry.clone()).await;
    Ok(json_response(entry.body))
}

fn count(result: &'static str) {
    metrics::counter!("opspilot_api_cache_total", "result" => result).increment(1);
}

/// The page as Redis holds it, with the time Redis has left on it.
async fn shared_get(cache: &PageCache, name: &str) -> Option<Entry> {
    let mut conn = cache.redis.get().await.ok()?;
    let key = cache.keys.cache(name);
    let (body, ttl_ms): (Option<Vec<u8>>, i64) =
        redis::pipe().cmd("GET").arg(&key).cmd("PTTL").arg(&key).query_async(&mut conn).await.ok()?;
    // PTTL is negative when the key vanished between the two commands or has no expiry.
    let left = Duration::from_millis(u64::try_from(ttl_ms).ok()?);
    Some(Entry { body: Bytes::from(body?), expires_at: Instant::now() + left })
}

async fn shared_put(cache: &PageCache, name: &str, body: &[u8], ttl: Duration) {
    let Ok(mut conn) = cache.redis.get().await else { return };
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(2000).max(1);
    let _: Result<(), _> = redis::cmd("SET")
        .arg(cache.keys.cache(name))
        .arg(body)
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut conn)
        .await;
}

/// A 200 with a JSON body that is already encoded.
fn json_response(body: Bytes) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Per-key fill locks, striped so no map of keys has to be kept and cleaned up: two keys
/// sharing a stripe only take turns filling.
struct Loads {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Default for Loads {
    fn default() -> Self {
        Self { stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect() }
    }
}

impl Loads {
    async fn lock(&self, name: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        let stripe = usize::try_from(hash % self.stripes.len() as u64).unwrap_or(0);
        self.stripes[stripe].lock().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Loads;

    #[tokio::test]
    async fn one_filler_per_key_at_a_time() {
        let loads = Loads::default();
        let first = loads.lock("agents|page").await;
        let second = tokio::time::timeout(Duration::from_millis(50), loads.lock("agents|page")).await;
        assert!(second.is_err(), "a second filler of the same key must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_millis(50), loads.lock("agents|page")).await;
        assert!(second.is_ok(), "the turn passes on once the first filler is done");
    }

    #[tokio::test]
    async fn other_keys_mostly_fill_in_parallel() {
        let loads = Loads::default();
        let _held = loads.lock("agents|page").await;
        let mut free = 0;
        for n in 0..32 {
            let name = format!("agents|other-{n}");
            if tokio::time::timeout(Duration::from_millis(5), loads.lock(&name)).await.is_ok() {
                free += 1;
            }
        }
        assert!(free >= 28, "only keys sharing the held stripe may wait, got {free} of 32 free");
    }
}
