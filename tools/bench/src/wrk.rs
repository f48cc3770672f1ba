//! wrk, the HTTP load generator the API scenarios drive the gateway with. Its event
//! loop in C costs the shared cores a fraction of what a Rust HTTP client costs per
//! request, so the cores measured are the service's, not the load generator's.

use std::path::{Path, PathBuf};

pub(crate) struct Wrk {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) per_sec: f64,
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

/// Runs wrk against `url` for `seconds` with `connections`, as the bearer of `token`,
/// with `script` (Lua) shaping the requests. Any error or non-2xx answer fails the run.
pub(crate) async fn run(
    url: &str,
    token: &str,
    script: Option<&Path>,
    seconds: u32,
    connections: u32,
) -> anyhow::Result<Wrk> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args([
        &format!("-t{}", connections.min(2)),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        // Past wrk's default of 2 s a slow answer would count as an error, not as latency.
        "--timeout",
        "30s",
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
        .await
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

/// Writes a wrk script (Lua) named after `name` and this process; the caller removes it.
pub(crate) fn script(name: &str, lua: &str) -> anyhow::Result<PathBuf> {
    let file = std::env::temp_dir().join(format!("opspilot-bench-{}-{name}.lua", std::process::id()));
    std::fs::write(&file, lua)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn latencies_are_read_in_every_unit_wrk_prints() {
        assert_eq!(parse_ms("250.00us"), Some(0.25));
        assert_eq!(parse_ms("1.50ms"), Some(1.5));
        assert_eq!(parse_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_ms("3m"), None);
        assert_eq!(parse_ms("12"), None);
    }
}
