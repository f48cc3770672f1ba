//! Scenario 5: API reads with 100,000 agents and 1,000,000 incidents in the database,
//! at concurrency 64, driven by wrk; the HTTP stack alone (`/healthz`) is the baseline.
//!
//! The fleet-wide list (`GET /api/v1/incidents`) is read under each single filter and
//! with text search, and its summary beside it: as served (the same URL every time, so
//! the page cache answers and one request a TTL reads the database), and with every
//! request missing the cache (a wrk script makes each URL distinct: a cursor above the
//! newest incident, which is the first page, or for the summary an `until` far in the
//! future), alone and at 64 connections, so the database's real cost shows.

use crate::gateway;
use crate::ingest::prepare;
use crate::report::Row;
use crate::wrk::run as wrk;

/// A wrk script sending `path` with `suffix` (Lua expression) appended to every request.
fn script(name: &str, path: &str, suffix: &str) -> anyhow::Result<std::path::PathBuf> {
    crate::wrk::script(
        name,
        &format!(
            "math.randomseed(42)\nrequest = function()\n  return wrk.format('GET', '{path}' .. {suffix})\nend\n"
        ),
    )
}

/// A prefix an operator would type: one role, one block of numbers (2% of the agents).
const HOSTNAME_PREFIX: &str = "db-01";
/// A phrase of one kind's error text (one incident in seven).
const TEXT: &str = "connection refused";

/// The loaded fleet: agents of five roles (hostnames `{role}-{number}`, so a prefix picks
/// a role and a block of numbers), and incidents of the simulator's seven kinds
/// and their error texts, of every severity (5% critical), newest first mostly open and
/// older ones mostly resolved, one a second up to now, spread over the agents.
async fn seed(pool: &sqlx::PgPool, agents: usize, incidents: usize) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO agents (id, hostname, status, last_seen_at, status_changed_at, enrolled_at)
         SELECT lpad(to_hex(i), 12, '0'),
                (ARRAY['web', 'db', 'cache', 'worker', 'edge'])[i % 5 + 1] || '-' || lpad(i::text, 6, '0'),
                CASE WHEN i % 10 = 0 THEN 'offline' ELSE 'online' END, now(), now(), now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(agents)?)
    .execute(pool)
    .await?;
    // The agent of incident i is i * 7919 mod agents (7919 is prime): every agent gets
    // its share, and neighbouring incidents belong to agents far apart, as they do when
    // hosts fail independently. Ids grow with created_at, as the ingestor writes them.
    sqlx::query(
        "INSERT INTO incidents (agent_id, type, source, raw_error, severity, is_critical, status, event_id,
                                fingerprint, dedup_key, occurrences, first_seen_at, last_seen_at, created_at)
         SELECT lpad(to_hex(i * 7919 % $2 + 1), 12, '0'), k.kind, k.source, k.raw_error, s.severity,
                s.severity = 'critical',
                CASE WHEN i <= $1 * 95 / 100 THEN (CASE WHEN i % 50 = 0 THEN 'acknowledged' ELSE 'resolved' END)
                     ELSE (ARRAY['new', 'analyzed', 'acknowledged', 'resolved'])[i % 4 + 1] END,
                gen_random_uuid(), md5(i::text), md5(i::text), 1, t.at, t.at, t.at
         FROM generate_series(1, $1) AS i
         CROSS JOIN LATERAL (SELECT now() - (($1 - i) || ' seconds')::interval AS at) t
         CROSS JOIN LATERAL (SELECT CASE WHEN i % 20 = 0 THEN 'critical' WHEN i % 20 < 6 THEN 'warning'
                                         WHEN i % 20 < 8 THEN 'info' ELSE 'error' END AS severity) s
         CROSS JOIN LATERAL (SELECT * FROM (VALUES
             (0, 'service_down', 'nginx',
              'nginx.service: Main process exited, code=killed, status=9/KILL (pid ' || i || ')'),
             (1, 'oom', 'kernel', 'Out of memory: Killed process ' || i || ' (java) total-vm:' || i * 7 % 9000000 || 'kB'),
             (2, 'disk_full', 'df', '/var: No space left on device (' || i % 100000 || ' bytes free)'),
             (3, 'cert_expiry', 'certbot', 'certificate for api.example.com expires in ' || i % 30 || ' days'),
             (4, 'connection_refused', 'app', 'dial tcp 10.0.' || i % 256 || '.4:5432: connect: connection refused'),
             (5, 'permission_denied', 'cron', 'open /etc/app/' || i % 1000 || '.conf: permission denied'),
             (6, 'high_cpu', 'node_exporter', 'cpu usage ' || 50 + i % 50 || '% over 5m on core ' || i % 8)
           ) AS v(n, kind, source, raw_error) WHERE v.n = i % 7) k",
    )
    .bind(i64::try_from(incidents)?)
    .bind(i64::try_from(agents)?)
    .execute(pool)
    .await?;
    // A database in service has had its rows vacuumed; freshly loaded ones would have
    // every first read set hint bits and dirty its page, which is the load, not the API.
    sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;
    Ok(())
}

/// The fleet list's first page under each single filter and with text search:
/// (row name, query string).
fn fleet_queries(agents: usize) -> Vec<(String, String)> {
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let agent = format!("{:012x}", agents / 2 + 1);
    [
        ("status=new", "status=new".to_owned()),
        ("severity=critical", "severity=critical".to_owned()),
        ("critical=true", "critical=true".to_owned()),
        ("kind=disk_full", "kind=disk_full".to_owned()),
        ("agent_id=(one)", format!("agent_id={agent}")),
        ("hostname_prefix=db-01", format!("hostname_prefix={HOSTNAME_PREFIX}")),
        ("since=1h ago", format!("since={since}")),
        ("q=connection refused", format!("q={}", TEXT.replace(' ', "%20"))),
    ]
    .into_iter()
    .map(|(name, query)| (name.to_owned(), query))
    .collect()
}

/// Every query must find incidents, or its figure measures an empty answer.
async fn check_hits(gw: &gateway::Gateway, queries: &[(String, String)]) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for (name, query) in queries {
        let page: serde_json::Value = http
            .get(format!("{}/api/v1/incidents?{query}", gw.base))
            .bearer_auth(&gw.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let items = page["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(items > 0, "the read scenario's seed has no incidents for {name}");
    }
    Ok(())
}

/// One fleet read, measured as the cache answers it and as a miss.
struct FleetRead {
    name: String,
    path: String,
    /// Lua appended to `path` so that every request has a name of its own.
    miss: String,
    miss_connections: u32,
    target_ms: Option<f64>,
}

/// The gateway's pool size (see `gateway::start`).
fn pool_connections() -> u32 {
    gateway::pool_size().parse().unwrap_or(4)
}

/// What to measure on the loaded data: the API under wrk, the console in a browser.
pub(crate) struct Parts {
    pub(crate) api: bool,
    pub(crate) console: bool,
}

pub(crate) async fn run(
    agents: usize,
    incidents: usize,
    parts: Parts,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let setup = prepare(0, "bench-reads").await?;
    let pool = &setup.stack.db.pool;
    seed(pool, agents, incidents).await?;
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM incidents").fetch_one(pool).await?;

    let gw = gateway::start(&setup.stack).await?;
    if parts.api {
        api(&gw, agents, newest, rows).await?;
    }
    if parts.console {
        crate::console::run(&gw, newest, gateway::cache_ttl(), rows).await?;
    }
    gw.service.stop().await;
    Ok(())
}

async fn api(gw: &gateway::Gateway, agents: usize, newest: i64, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // Incidents of many different agents, so no cache can answer them all.
    let agent_incidents = script(
        "agent-incidents",
        "/api/v1/agents/",
        &format!("string.format('%012x', math.random(1, {agents})) .. '/incidents?limit=100'"),
    )?;
    let health = wrk(&format!("{}/healthz", gw.base), &gw.token, None, 5, 64).await?;
    let list = wrk(&format!("{}/api/v1/agents?limit=100", gw.base), &gw.token, None, 10, 64).await?;
    let incidents_page = wrk(&gw.base, &gw.token, Some(&agent_incidents), 10, 64).await?;
    let _ = std::fs::remove_file(&agent_incidents);
    rows.push(Row::new("reads", "baseline: GET /healthz c=64", health.per_sec, "req/s"));
    rows.push(Row::new("reads", "baseline: GET /healthz c=64 p99", health.p99_ms, "ms"));
    for (name, run) in
        [("GET /agents (100) c=64", &list), ("GET /agents/{id}/incidents c=64", &incidents_page)]
    {
        rows.push(Row::new("reads", &format!("{name} p50"), run.p50_ms, "ms"));
        rows.push(
            Row::new("reads", &format!("{name} p99"), run.p99_ms, "ms").floor("< 20 ms", run.p99_ms < 20.0),
        );
        rows.push(Row::new("reads", name, run.per_sec, "req/s").baseline("/healthz", health.per_sec));
    }

    // The fleet-wide list and its summary.
    let queries = fleet_queries(agents);
    check_hits(gw, &queries).await?;
    let mut reads: Vec<FleetRead> = queries
        .iter()
        .map(|(name, query)| FleetRead {
            name: format!("GET /incidents?{name}"),
            path: format!("/api/v1/incidents?{query}&limit=100"),
            // A cursor above the newest incident: the first page, under a new name each time.
            miss: format!("'&cursor=c' .. ({newest} + math.random(1, 1000000000))"),
            miss_connections: 64,
            target_ms: Some(if name.starts_with("q=") { 50.0 } else { 20.0 }),
        })
        .collect();
    reads.push(FleetRead {
        name: "GET /incidents/summary".to_owned(),
        path: "/api/v1/incidents/summary".to_owned(),
        // Nothing is that recent: every incident is counted, under a new name each time.
        miss: "'?until=2999-01-01T00:00:00.' .. string.format('%06d', math.random(0, 999999)) .. 'Z'"
            .to_owned(),
        // Each miss counts every incident (about a second of the database): at 64 the
        // requests would outwait the gateway's pool, so as many as its connections.
        miss_connections: pool_connections(),
        target_ms: None,
    });
    for read in &reads {
        let cached = wrk(&format!("{}{}", gw.base, read.path), &gw.token, None, 5, 64).await?;
        let script = script("fleet", &read.path, &read.miss)?;
        let missed = wrk(&gw.base, &gw.token, Some(&script), 10, read.miss_connections).await;
        let alone = wrk(&gw.base, &gw.token, Some(&script), 5, 1).await;
        let _ = std::fs::remove_file(&script);
        let (missed, alone) = (missed?, alone?);
        // As served: the page cache answers repeats, one request a TTL goes to the
        // database (the bound is for this, the read every console makes).
        let hit_name = format!("{} (as served, c=64)", read.name);
        let mut p99 = Row::new("reads", &format!("{hit_name} p99"), cached.p99_ms, "ms")
            .baseline("/healthz p99", health.p99_ms);
        if let Some(target) = read.target_ms {
            p99 = p99.floor(&format!("< {target} ms"), cached.p99_ms < target);
        }
        rows.push(p99);
        rows.push(Row::new("reads", &hit_name, cached.per_sec, "req/s").baseline("/healthz", health.per_sec));
        // Every request a miss: the database's cost, alone and with the cores saturated.
        let alone_name = format!("{} (cache miss, c=1)", read.name);
        rows.push(Row::new("reads", &format!("{alone_name} p99"), alone.p99_ms, "ms"));
        let miss_name = format!("{} (cache miss, c={})", read.name, read.miss_connections);
        rows.push(Row::new("reads", &format!("{miss_name} p50"), missed.p50_ms, "ms"));
        rows.push(
            Row::new("reads", &format!("{miss_name} p99"), missed.p99_ms, "ms")
                .baseline("/healthz p99", health.p99_ms),
        );
        rows.push(
            Row::new("reads", &miss_name, missed.per_sec, "req/s").baseline("/healthz", health.per_sec),
        );
    }
    Ok(())
}
