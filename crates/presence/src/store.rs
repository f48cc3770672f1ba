//! Presence in Redis: batched, race-free operations on the layout described at
//! [`Keys`].
//!
//! Every write that reads before it writes (recording a heartbeat, marking a state) is
//! a Lua script, so two tracker replicas, or a heartbeat and an offline decision, never
//! interleave inside one agent's update. Each call handles up to [`MAX_BATCH`] agents
//! per round trip; larger inputs are split.

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use storage::redis::{Pool, RedisError};
use wire_models::{AgentId, PresenceState};

use crate::Keys;

/// Largest number of agents sent to Redis in one script call or command.
pub const MAX_BATCH: usize = 1000;

/// Records heartbeats. Per agent, unless the heartbeat is older than the one already
/// recorded: the deadline goes into the sorted set (unless the heartbeat is already
/// stale and the agent is known offline), the TTL key is set to expire at the deadline
/// (fresh heartbeats only), and the state field gets the new last-seen and threshold
/// while keeping the decided state. Returns the agents whose heartbeat is fresh but
/// whose state is not `online`: the candidates for an offline -> online transition.
///
/// KEYS: deadlines, state, then one TTL key per agent. ARGV: now (ms), then per agent
/// id, last seen (ms), threshold (ms).
const RECORD_LUA: &str = r"
local now = tonumber(ARGV[1])
local wake = {}
local n = (#ARGV - 1) / 3
for i = 1, n do
  local base = 1 + (i - 1) * 3
  local id, seen_s, thr_s = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local seen, thr = tonumber(seen_s), tonumber(thr_s)
  local state, since, prev = 'unknown', '0', -1
  local cur = redis.call('HGET', KEYS[2], id)
  if cur then
    local s, si, ls = string.match(cur, '^(%a+):(%d+):(%d+):%d+$')
    if s then state, since, prev = s, si, tonumber(ls) end
  end
  if seen >= prev then
    local deadline = seen + thr
    local fresh = deadline > now
    if fresh or state ~= 'offline' then
      redis.call('ZADD', KEYS[1], deadline, id)
    end
    if fresh then
      redis.call('SET', KEYS[2 + i], seen_s, 'PX', deadline - now)
    end
    redis.call('HSET', KEYS[2], id, state .. ':' .. since .. ':' .. seen_s .. ':' .. thr_s)
    if fresh and state ~= 'online' then
      wake[#wake + 1] = id
    end
  end
end
return wake
";

/// Writes a state Postgres decided. For `offline`, the agent stops being tracked (its
/// deadline and TTL key go) unless a fresh heartbeat moved its deadline past `now`
/// meanwhile: those agents are returned, "raced", and need to come back online.
///
/// KEYS: deadlines, state, then one TTL key per agent. ARGV: now (ms), the state, then
/// per agent id, since (ms), and the last seen (ms) and threshold (ms) to use when Redis
/// holds nothing for the agent.
const MARK_LUA: &str = r"
local now = tonumber(ARGV[1])
local state = ARGV[2]
local raced = {}
local n = (#ARGV - 2) / 4
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local id, since, seen, thr = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local cur = redis.call('HGET', KEYS[2], id)
  if cur then
    local ls, th = string.match(cur, '^%a+:%d+:(%d+):(%d+)$')
    if ls then seen, thr = ls, th end
  end
  redis.call('HSET', KEYS[2], id, state .. ':' .. since .. ':' .. seen .. ':' .. thr)
  if state == 'offline' then
    local deadline = redis.call('ZSCORE', KEYS[1], id)
    if deadline and tonumber(deadline) > now then
      raced[#raced + 1] = id
    else
      redis.call('ZREM', KEYS[1], id)
      redis.call('DEL', KEYS[2 + i])
    end
  end
end
return raced
";

/// Sets agents' state to `unknown`, keeping the rest of the field.
///
/// KEYS: state. ARGV: the agent ids.
const UNSETTLE_LUA: &str = r"
for i = 1, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local rest = string.match(cur, '^%a+:(.*)$')
    if rest then redis.call('HSET', KEYS[1], ARGV[i], 'unknown:' .. rest) end
  end
end
return 0
";

static RECORD: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_LUA));
static MARK: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_LUA));
static UNSETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(UNSETTLE_LUA));

/// One heartbeat to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRecord {
    pub agent_id: AgentId,
    /// When the heartbeat arrived (Unix ms).
    pub last_seen_ms: i64,
    /// The silence after which this agent counts as offline (ms).
    pub threshold_ms: i64,
}

/// A state Postgres decided, to mirror in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub agent_id: AgentId,
    /// When the state began (Unix ms).
    pub since_ms: i64,
    /// Stored only when Redis holds nothing for the agent (after a data loss).
    pub last_seen_ms: i64,
    /// Stored only when Redis holds nothing for the agent.
    pub threshold_ms: i64,
}

/// Everything Redis holds about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPresence {
    pub agent_id: AgentId,
    /// `None` when no transition was decided yet (`unknown`) or nothing is stored.
    pub state: Option<PresenceState>,
    pub since_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub threshold_ms: Option<i64>,
    /// Present while the agent is tracked; an agent marked offline has none.
    pub deadline_ms: Option<i64>,
}

impl AgentPresence {
    fn parse(agent_id: AgentId, field: Option<&str>, deadline: Option<f64>) -> Self {
        let mut out = Self {
            agent_id,
            state: None,
            since_ms: None,
            last_seen_ms: None,
            threshold_ms: None,
            // Scores are integral milliseconds written by the scripts above.
            deadline_ms: deadline.map(|d| d as i64),
        };
        if let Some(field) = field {
            let mut parts = field.split(':');
            let (state, since, seen, threshold) = (parts.next(), parts.next(), parts.next(), parts.next());
            out.state = match state {
                Some("online") => Some(PresenceState::Online),
                Some("offline") => Some(PresenceState::Offline),
                _ => None,
            };
            let ms = |p: Option<&str>| p.and_then(|p| p.parse::<i64>().ok());
            out.since_ms = ms(since).filter(|&s| s > 0);
            out.last_seen_ms = ms(seen);
            out.threshold_ms = ms(threshold);
        }
        out
    }

    /// The operator's view, when a state was decided.
    pub fn view(&self) -> Option<PresenceView> {
        let state = self.state?;
        let threshold_secs =
            self.threshold_ms.map_or(0, |ms| u32::try_from((ms + 999) / 1000).unwrap_or(u32::MAX));
        Some(PresenceView {
            state,
            since: self.since_ms.and_then(DateTime::from_timestamp_millis),
            last_seen: self.last_seen_ms.and_then(DateTime::from_timestamp_millis),
            threshold_secs,
        })
    }
}

/// What an operator needs to see: "online / offline since T, last heartbeat at T',
/// threshold N s".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceView {
    pub state: PresenceState,
    /// When the current state began.
    pub since: Option<DateTime<Utc>>,
    /// The last heartbeat heard.
    pub last_seen: Option<DateTime<Utc>>,
    /// The silence after which the agent counts as offline (rounded up to seconds).
    pub threshold_secs: u32,
}

/// Presence operations on one pool and key layout. Every call is bounded by a timeout.
#[derive(Clone)]
pub struct PresenceStore {
    pool: Pool,
    keys: Keys,
    timeout: Duration,
}

impl std::fmt::Debug for PresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceStore").field("keys", &self.keys).field("timeout", &self.timeout).finish()
    }
}

impl PresenceStore {
    /// A store with a 2 s timeout per call.
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys, timeout: Duration::from_secs(2) }
    }

    /// Bounds every call (getting a connection included) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        tokio::time::timeout(self.timeout, op).await.map_err(|_| RedisError::Timeout(what))?
    }

    /// Records a batch of heartbeats (see the layout at [`Keys`]); returns the agents
    /// whose heartbeat is fresh (deadline after `now_ms`) but whose state is not yet
    /// `online`. A heartbeat older than the one already recorded for its agent changes
    /// nothing.
    pub async fn record(
        &self,
        heartbeats: &[HeartbeatRecord],
        now_ms: i64,
    ) -> Result<Vec<AgentId>, RedisError> {
        let mut wake = Vec::new();
        for chunk in heartbeats.chunks(MAX_BATCH) {
            let mut invocation = RECORD.prepare_invoke();
            invocation.key(self.keys.deadlines()).key(self.keys.state());
            for hb in chunk {
                invocation.key(self.keys.agent(&hb.agent_id));
            }
            invocation.arg(now_ms);
            for hb in chunk {
                invocation.arg(hb.agent_id.as_str()).arg(hb.last_seen_ms).arg(hb.threshold_ms.max(1));
            }
            let ids: Vec<String> = self
                .timed("recording heartbeats", async {
                    let mut conn = self.pool.get().await?;
                    Ok(invocation.invoke_async(&mut conn).await?)
                })
                .await?;
            wake.extend(ids.iter().filter_map(|id| AgentId::parse(id).ok()));
        }
        Ok(wake)
    }

    /// Everything Redis holds about `ids`, in order: state, since, last heartbeat,
    /// threshold and deadline. One pipelined round trip per [`MAX_BATCH`] agents.
    pub async fn inspect(&self, ids: &[AgentId]) -> Result<Vec<AgentPresence>, RedisError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BATCH) {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(self.keys.state())
                .arg(chunk.iter().map(AgentId::as_str).collect::<Vec<_>>());
            pipe.cmd("ZMSCORE")
                .arg(self.keys.deadlines())
                .arg(chunk.iter().map(AgentId::as_str).collect::<Vec<_>>());
            let (fields, deadlines): (Vec<Option<String>>, Vec<Option<f64>>) = self
                .timed("reading presence", async {
                    let mut conn = self.pool.get().await?;
                    Ok(pipe.query_async(&mut conn).await?)
                })
                .await?;
            for (i, id) in chunk.iter().enumerate() {
                let field = fields.get(i).and_then(Option::as_deref);
                let deadline = deadlines.get(i).copied().flatten();
                out.push(AgentPresence::parse(id.clone(), field, deadline));
            }
        }
        Ok(out)
    }

    /// What the API shows for `ids`: agents with a decided state. Agents missing from
    /// the map are unknown to Redis; the caller falls back to Postgres for them.
    pub async fn read(&self, ids: &[AgentId]) -> Result<HashMap<AgentId, PresenceView>, RedisError> {
        Ok(self
            .inspect(ids)
            .await?
            .into_iter()
            .filter_map(|p| p.view().map(|view| (p.agent_id, view)))
            .collect())
    }

    /// Agents whose deadline is at or before `now_ms`, oldest deadline first, with their
    /// deadline: one range query however many agents are tracked (`offset` and `limit`
    /// page through a long answer).
    pub async fn overdue(
        &self,
        now_ms: i64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(AgentId, i64)>, RedisError> {
        let found: Vec<(String, f64)> = self
            .timed("scanning deadlines", async {
                let mut conn = self.pool.get().await?;
                Ok(redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.deadlines())
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(id, deadline)| Some((AgentId::parse(&id).ok()?, deadline as i64)))
            .collect())
    }

    /// How many agents have a deadline after `now_ms` (heard from within their threshold).
    pub async fn count_live(&self, now_ms: i64) -> Result<u64, RedisError> {
        self.timed("counting live agents", async {
            let mut conn = self.pool.get().await?;
            Ok(redis::cmd("ZCOUNT")
                .arg(self.keys.deadlines())
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .query_async(&mut conn)
                .await?)
        })
        .await
    }

    /// Mirrors states Postgres decided. Marking `offline` stops tracking the agent unless
    /// a fresh heartbeat arrived meanwhile; those agents are returned ("raced") and need
    /// an online transition.
    pub async fn mark(
        &self,
        state: PresenceState,
        changes: &[StateChange],
        now_ms: i64,
    ) -> Result<Vec<AgentId>, RedisError> {
        let mut raced = Vec::new();
        for chunk in changes.chunks(MAX_BATCH) {
            let mut invocation = MARK.prepare_invoke();
            invocation.key(self.keys.deadlines()).key(self.keys.state());
            for change in chunk {
                invocation.key(self.keys.agent(&change.agent_id));
            }
            invocation.arg(now_ms).arg(state.as_str());
            for change in chunk {
                invocation
                    .arg(change.agent_id.as_str())
                    .arg(change.since_ms.max(0))
                    .arg(change.last_seen_ms.max(0))
                    .arg(change.threshold_ms.max(0));
            }
            let ids: Vec<String> = self
                .timed("marking presence", async {
                    let mut conn = self.pool.get().await?;
                    Ok(invocation.invoke_async(&mut conn).await?)
                })
                .await?;
            raced.extend(ids.iter().filter_map(|id| AgentId::parse(id).ok()));
        }
        Ok(raced)
    }

    /// Marks agents' state undecided (`unknown`) before Postgres is asked to change it,
    /// keeping since, last heartbeat and threshold. Should the decision be committed but
    /// never mirrored (Redis failing right then, the process dying), Redis does not keep
    /// claiming the old state: the next heartbeat or deadline scan raises the question
    /// again and Postgres answers it. Until then the API falls back to Postgres.
    pub async fn unsettle(&self, ids: &[AgentId]) -> Result<(), RedisError> {
        for chunk in ids.chunks(MAX_BATCH) {
            let mut invocation = UNSETTLE.prepare_invoke();
            invocation.key(self.keys.state());
            for id in chunk {
                invocation.arg(id.as_str());
            }
            let _: i64 = self
                .timed("unsettling presence", async {
                    let mut conn = self.pool.get().await?;
                    Ok(invocation.invoke_async(&mut conn).await?)
                })
                .await?;
        }
        Ok(())
    }

    /// Stops tracking agents entirely (removed from Postgres, say).
    pub async fn forget(&self, ids: &[AgentId]) -> Result<(), RedisError> {
        for chunk in ids.chunks(MAX_BATCH) {
            let names: Vec<&str> = chunk.iter().map(AgentId::as_str).collect();
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("ZREM").arg(self.keys.deadlines()).arg(&names).ignore();
            pipe.cmd("HDEL").arg(self.keys.state()).arg(&names).ignore();
            pipe.cmd("DEL").arg(chunk.iter().map(|id| self.keys.agent(id)).collect::<Vec<_>>()).ignore();
            self.timed("forgetting agents", async {
                let mut conn = self.pool.get().await?;
                Ok(pipe.exec_async(&mut conn).await?)
            })
            .await?;
        }
        Ok(())
    }

    /// Gives agents that are not tracked at all a deadline of `deadline_ms` (`ZADD NX`),
    /// so the offline scan takes them up; tracked agents keep theirs. Used for agents
    /// Postgres believes online but Redis has no heartbeat for. Returns how many were
    /// added.
    pub async fn track_untracked(&self, ids: &[AgentId], deadline_ms: i64) -> Result<u64, RedisError> {
        let mut added = 0;
        for chunk in ids.chunks(MAX_BATCH) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(self.keys.deadlines()).arg("NX");
            for id in chunk {
                cmd.arg(deadline_ms).arg(id.as_str());
            }
            let n: u64 = self
                .timed("tracking agents", async {
                    let mut conn = self.pool.get().await?;
                    Ok(cmd.query_async(&mut conn).await?)
                })
                .await?;
            added += n;
        }
        Ok(added)
    }

    /// Checks that Redis still holds the presence data seen last time. `last` is the
    /// token seen by the previous call (`None` on the first); returns `true` when the
    /// token changed since, i.e. Redis lost (or another writer reset) the presence data
    /// and it must be rebuilt. The first call only plants the token.
    pub async fn check_epoch(&self, last: &mut Option<String>) -> Result<bool, RedisError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let current: String = self
            .timed("checking the presence epoch", async {
                let mut conn = self.pool.get().await?;
                let mut pipe = redis::pipe();
                pipe.cmd("SET").arg(self.keys.epoch()).arg(&token).arg("NX").ignore();
                pipe.cmd("GET").arg(self.keys.epoch());
                let (value,): (String,) = pipe.query_async(&mut conn).await?;
                Ok(value)
            })
            .await?;
        let lost = last.as_ref().is_some_and(|seen| *seen != current);
        *last = Some(current);
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_fields_parse() {
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let p =
            AgentPresence::parse(id.clone(), Some("online:1700000000000:1700000005000:30000"), Some(1.7e12));
        assert_eq!(p.state, Some(PresenceState::Online));
        assert_eq!(p.since_ms, Some(1_700_000_000_000));
        assert_eq!(p.last_seen_ms, Some(1_700_000_005_000));
        assert_eq!(p.threshold_ms, Some(30_000));
        assert_eq!(p.deadline_ms, Some(1_700_000_000_000));
        let view = p.view().unwrap();
        assert_eq!(view.threshold_secs, 30);
        assert_eq!(view.since.unwrap().timestamp_millis(), 1_700_000_000_000);

        let unknown = AgentPresence::parse(id.clone(), Some("unknown:0:5:1500"), None);
        assert_eq!(unknown.state, None);
        assert_eq!(unknown.since_ms, None);
        assert!(unknown.view().is_none());

        let nothing = AgentPresence::parse(id.clone(), None, None);
        assert_eq!(nothing.last_seen_ms, None);
        let garbage = AgentPresence::parse(id, Some("what:ever"), None);
        assert_eq!(garbage.state, None);
        assert_eq!(garbage.last_seen_ms, None);
    }

    #[test]
    fn thresholds_round_up_to_seconds() {
        let id = AgentId::parse("a1b2c3d4e5f6").unwrap();
        let p = AgentPresence::parse(id, Some("offline:1:2:1500"), None);
        assert_eq!(p.view().unwrap().threshold_secs, 2);
    }
}
