//! Scenario 5b: the operator console's first screen with the read scenario's fleet in
//! the database (100,000 agents, 1,000,000 incidents), in headless Chromium driven
//! through chromedriver, as an operator opens it.
//!
//! Every load is a new document (a full navigation, as a reload or a bookmark is), and
//! waits out the API's page cache first, so each one reads the database. What is
//! measured is the page's own mark (`opspilot:{page}`, set once its data is painted):
//! the time from the start of the navigation, through the assets, the scripts and the
//! API requests, to the first screen; the assets are revalidated (the browser has them
//! from the login page), as a returning operator's browser does. The total size of the
//! assets is taken from the first page of an empty browser cache. The baseline is the
//! same browser loading `/healthz`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::gateway::Gateway;
use crate::report::{Row, percentile};

/// Loads per page: the first (cold) and enough after it for a maximum worth quoting.
const LOADS: usize = 6;
/// The bound on the first screen.
const FIRST_SCREEN_MS: f64 = 1000.0;

/// Chromedriver in a process group of its own with the browser it starts, so both end
/// with the scenario even when it fails half-way.
struct Driver {
    child: std::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ =
            std::process::Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

async fn browser() -> anyhow::Result<(Driver, Client)> {
    use std::os::unix::process::CommandExt;
    let port = test_support::free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("chromedriver (scripts/dev-services.sh --test installs it): {e}"))?;
    let driver = Driver { child };
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let capabilities = test_support::browser::chromium_capabilities(1280, 1000);
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await?;
    Ok((driver, client))
}

/// Waits for the mark `opspilot:{page}` in the current document; its time in ms.
async fn mark(client: &Client, page: &str) -> anyhow::Result<f64> {
    let script = "const m = performance.getEntriesByName(arguments[0], 'mark')[0]; \
                  return m ? m.startTime : (document.querySelector('.notice.error') ? -1 : null);";
    let started = Instant::now();
    loop {
        match client.execute(script, vec![json!(format!("opspilot:{page}"))]).await? {
            Value::Number(n) if n.as_f64().is_some_and(|ms| ms >= 0.0) => {
                return n.as_f64().ok_or_else(|| anyhow::anyhow!("a mark's time"));
            }
            Value::Number(_) => anyhow::bail!("the {page} page showed an error"),
            _ if started.elapsed() > Duration::from_secs(30) => {
                anyhow::bail!("the {page} page showed nothing within 30 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// What the document loaded and when, for a load that was slow.
async fn timeline(client: &Client) -> String {
    let script = "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')) \
                  .map(e => `${new URL(e.name).pathname}${new URL(e.name).search.slice(0, 40)} at ${e.startTime.toFixed(0)} for ${e.duration.toFixed(0)} ms`) \
                  .join('; ');";
    match client.execute(script, vec![]).await {
        Ok(Value::String(s)) => s,
        other => format!("(no timeline: {other:?})"),
    }
}

/// The console's files the current document fetched: (count, bytes as served).
async fn assets(client: &Client) -> anyhow::Result<(usize, f64)> {
    let script = "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')) \
                  .filter(e => new URL(e.name).pathname === '/' || new URL(e.name).pathname.startsWith('/console/')) \
                  .map(e => e.decodedBodySize);";
    let sizes: Vec<f64> = serde_json::from_value(client.execute(script, vec![]).await?)?;
    Ok((sizes.len(), sizes.iter().sum()))
}

pub(crate) async fn run(
    gw: &Gateway,
    incident: i64,
    cache_ttl: Duration,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let (driver, client) = browser().await?;
    let result = measure(&client, gw, incident, cache_ttl, rows).await;
    let _ = client.close().await;
    drop(driver);
    result
}

async fn measure(
    client: &Client,
    gw: &Gateway,
    incident: i64,
    cache_ttl: Duration,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    // The browser alone: a document with nothing to run.
    let mut health = Vec::new();
    for _ in 0..LOADS {
        client.goto(&format!("{}/healthz", gw.base)).await?;
        let script = "return performance.getEntriesByType('navigation')[0].loadEventEnd;";
        health.push(client.execute(script, vec![]).await?.as_f64().unwrap_or(0.0));
    }
    health.sort_by(f64::total_cmp);
    let baseline = percentile(&health, 0.5);
    rows.push(Row::new("console", "baseline: the browser loading /healthz, median", baseline, "ms"));

    // The first document of an empty browser cache: every file of the console is fetched.
    client.goto(&format!("{}/#/login", gw.base)).await?;
    let started = Instant::now();
    while client.execute("return !!document.getElementById('email');", vec![]).await? != json!(true) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the login page did not show");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (files, bytes) = assets(client).await?;
    rows.push(Row::new("console", &format!("assets of a first visit ({files} files)"), bytes, "bytes"));
    // Signed in as the console signs in: the token in this tab's storage.
    client
        .execute("sessionStorage.setItem('opspilot.access_token', arguments[0]);", vec![json!(gw.token)])
        .await?;
    let pages: [(&str, &str, String); 4] = [
        ("fleet", "fleet (agents)", "#/fleet".to_owned()),
        ("incidents", "incidents (the list)", "#/incidents".to_owned()),
        ("incidents-summary", "incidents (their counts)", "#/incidents".to_owned()),
        ("incident", "one incident", format!("#/incidents/{incident}")),
    ];
    for (mark_name, name, hash) in &pages {
        let mut times = Vec::new();
        for load in 0..LOADS {
            // Past the page cache's TTL: this load's API reads go to the database.
            tokio::time::sleep(cache_ttl + Duration::from_millis(300)).await;
            client.goto(&format!("{}/?load={load}{hash}", gw.base)).await?;
            let ms = mark(client, mark_name).await?;
            if ms > FIRST_SCREEN_MS {
                eprintln!(
                    "[bench] console: {name} took {ms:.0} ms on load {load}: {}",
                    timeline(client).await
                );
            }
            times.push(ms);
        }
        let mut sorted = times;
        sorted.sort_by(f64::total_cmp);
        let max = sorted[sorted.len() - 1];
        rows.push(Row::new(
            "console",
            &format!("{name}: first screen, median of {LOADS}"),
            percentile(&sorted, 0.5),
            "ms",
        ));
        rows.push(
            Row::new("console", &format!("{name}: first screen, slowest of {LOADS}"), max, "ms")
                .baseline("the browser loading /healthz", baseline)
                .floor("< 1000 ms", max < FIRST_SCREEN_MS),
        );
    }
    Ok(())
}
