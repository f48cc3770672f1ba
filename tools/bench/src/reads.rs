//! Scenario 5: API reads with 100,000 agents and 1,000,000 incidents in the database,
//! at concurrency 64, driven by wrk; the HTTP stack alone (`/healthz`) is the baseline.

use std::process::Command;

use crate::gateway;
use crate::ingest::prepare;
use crate::report::Row;

struct Wrk {
    p50_ms: f64,
    p99_ms: f64,
    per_sec: f64,
}

fn parse_ms(token: &str) -> Option<f64> {
    let (num, unit) = token.split_at(token.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => return None,
    })
}

fn wrk(url: &str, token: &str, script: Option<&std::path::Path>, seconds: u32) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        "-c64",
        &format!("-d{seconds}s"),
        "--latency",
        "-H",
        &format!("Authorization: Bearer {token}"),
    ]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("running wrk (scripts/bench.sh installs it): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| {
        text.lines().find(|l| l.trim_start().starts_with(prefix)).map(str::trim).map(str::to_owned)
    };
    let p50 = line("50%").and_then(|l| l.split_whitespace().nth(1).and_then(parse_ms));
    let p99 = line("99%").and_then(|l| l.split_whitespace().nth(1).and_then(parse_ms));
    let rps = line("Requests/sec:").and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()));
    let errors = text.lines().any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    anyhow::ensure!(!errors, "wrk saw errors:\n{text}");
    match (p50, p99, rps) {
        (Some(p50_ms), Some(p99_ms), Some(per_sec)) => Ok(Wrk { p50_ms, p99_ms, per_sec }),
        _ => anyhow::bail!("unexpected wrk output:\n{text}"),
    }
}

pub(crate) async fn run(agents: usize, incidents: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(0, "bench-reads").await?;
    let pool = &setup.stack.db.pool;
    sqlx::query(
        "INSERT INTO agents (id, hostname, status, last_seen_at, status_changed_at, enrolled_at)
         SELECT lpad(to_hex(i), 12, '0'), 'host-' || lpad(i::text, 6, '0'),
                CASE WHEN i % 10 = 0 THEN 'offline' ELSE 'online' END, now(), now(), now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(agents)?)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO incidents (agent_id, type, source, raw_error, severity, status, event_id, fingerprint, dedup_key,
                                occurrences, first_seen_at, last_seen_at, created_at)
         SELECT lpad(to_hex(i % $2 + 1), 12, '0'), 'oom', 'kernel', 'Out of memory: killed process ' || i, 'error',
                CASE WHEN i % 3 = 0 THEN 'new' ELSE 'resolved' END, gen_random_uuid(), md5(i::text), md5(i::text),
                1, now(), now(), now() - (i || ' seconds')::interval
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(incidents)?)
    .bind(i64::try_from(agents)?)
    .execute(pool)
    .await?;
    // A database in service has had its rows vacuumed; freshly loaded ones would have
    // every first read set hint bits and dirty its page, which is the load, not the API.
    sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;

    let gw = gateway::start(&setup.stack).await?;
    // Incidents of many different agents, so no cache can answer them all.
    let script = std::env::temp_dir().join(format!("opspilot-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "math.randomseed(42)\nrequest = function()\n  local id = string.format('%012x', math.random(1, {agents}))\n  \
             return wrk.format('GET', '/api/v1/agents/' .. id .. '/incidents?limit=100')\nend\n"
        ),
    )?;
    let health = wrk(&format!("{}/healthz", gw.base), &gw.token, None, 5)?;
    let list = wrk(&format!("{}/api/v1/agents?limit=100", gw.base), &gw.token, None, 10)?;
    let incidents_page = wrk(&gw.base, &gw.token, Some(&script), 10)?;
    let _ = std::fs::remove_file(&script);
    rows.push(Row::new("reads", "baseline: GET /healthz c=64", health.per_sec, "req/s"));
    for (name, run) in
        [("GET /agents (100) c=64", &list), ("GET /agents/{id}/incidents c=64", &incidents_page)]
    {
        rows.push(Row::new("reads", &format!("{name} p50"), run.p50_ms, "ms"));
        rows.push(
            Row::new("reads", &format!("{name} p99"), run.p99_ms, "ms").floor("< 20 ms", run.p99_ms < 20.0),
        );
        rows.push(Row::new("reads", name, run.per_sec, "req/s").baseline("/healthz", health.per_sec));
    }
    gw.service.stop().await;
    let _ = gw.port;
    Ok(())
}
