//! The command line and the order of a run: scenarios, hostile agents, HTTP, fuzzing,
//! then the secrets check over everything the run wrote; one summary at the end.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::accounting::{self, Accounting};
use crate::binaries::Binaries;
use crate::scenarios::{self, Ctx, Scenario, Sizes};
use crate::secrets::Secrets;
use crate::{fuzz, hostile, http};

/// What a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Scenario 1: SIGKILL ingestors under load.
    Kill,
    /// Scenario 2: restart the NATS server.
    Nats,
    /// Scenario 3: cut Postgres, then Redis.
    Deps,
    /// Scenario 4: SIGTERM every service.
    Sigterm,
    /// Scenario 5: the ai-analyzer gone.
    Analyzer,
    /// Scenario 6: on a three-node cluster, SIGKILL the events stream's leader.
    Leader,
    /// Scenario 7: a rolling restart of a three-node cluster under load.
    Rolling,
    /// Scenario 8: on a three-node cluster, cut the events stream's leader off from its
    /// peers and its clients, then let it back in.
    Partition,
    /// Hostile agents on the bus: a flooder and identity takeover attempts.
    Hostile,
    /// The hostile HTTP set and schemathesis.
    Http,
    /// Fuzzing every wire-models parser.
    Fuzz,
}

/// OpsPilot under faults and hostile input.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "opspilot-chaos", version, about)]
pub struct Args {
    /// A short run (about a minute): 10,000 events in the kill scenario, 2,000 in the
    /// others, shorter outages, a 5 s flood, 5 s of fuzzing, fewer schemathesis examples.
    #[arg(long)]
    pub quick: bool,
    /// Events in the SIGKILL scenario [default: 100000, quick 10000].
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per second in the SIGKILL scenario [default: 5000, quick 2500].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events in each of the other scenarios [default: 20000, quick 2000].
    #[arg(long)]
    pub scenario_events: Option<u64>,
    /// Events per second in the other scenarios [default: 1500, quick 1000].
    #[arg(long)]
    pub scenario_rate: Option<f64>,
    /// Agents in each scenario's simulated fleet [default: 200, quick 30].
    #[arg(long)]
    pub fleet: Option<usize>,
    /// Time between two SIGKILLs [default: 2.5s, quick 1.5s].
    #[arg(long, value_parser = parse_duration)]
    pub kill_every: Option<Duration>,
    /// How long Postgres and Redis stay cut [default: 8s, quick 2s].
    #[arg(long, value_parser = parse_duration)]
    pub outage: Option<Duration>,
    /// How long the NATS server stays down (a cluster node: at least until ingest has
    /// resumed without it).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub nats_outage: Duration,
    /// Steps to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,nats,deps,sigterm,analyzer,leader,rolling,partition,hostile,http,fuzz"
    )]
    pub only: Vec<Step>,
    /// Seconds the hostile agent floods the bus [default: 30, quick 5].
    #[arg(long)]
    pub hostile_seconds: Option<u64>,
    /// Seconds of fuzzing [default: 40, quick 5].
    #[arg(long)]
    pub fuzz_seconds: Option<u64>,
    /// Seed of the fuzzer (reproduces a run) [default: random].
    #[arg(long)]
    pub fuzz_seed: Option<u64>,
    /// The schemathesis executable [default: .stack/venv-chaos/bin/schemathesis when present].
    #[arg(long)]
    pub schemathesis: Option<PathBuf>,
    /// Schemathesis test cases per API operation [default: 100, quick 5].
    #[arg(long)]
    pub max_examples: Option<u32>,
    /// Schemathesis checks: no 5xx; status codes, content types and bodies as the
    /// schema says.
    #[arg(
        long,
        default_value = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    )]
    pub schemathesis_checks: String,
    /// Where logs and reports go [default: target/chaos/<time>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Directory of the service binaries [default: next to this executable].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 500ms, 5s)"))
}

impl Args {
    fn sizes(&self) -> Sizes {
        let q = self.quick;
        Sizes {
            kill_events: self.events.unwrap_or(if q { 10_000 } else { 100_000 }),
            kill_rate: self.rate.unwrap_or(if q { 2500.0 } else { 5000.0 }),
            events: self.scenario_events.unwrap_or(if q { 2_000 } else { 20_000 }),
            rate: self.scenario_rate.unwrap_or(if q { 1000.0 } else { 1500.0 }),
            fleet: self.fleet.unwrap_or(if q { 30 } else { 200 }),
            kill_every: self.kill_every.unwrap_or(if q {
                Duration::from_millis(1500)
            } else {
                Duration::from_millis(2500)
            }),
            outage: self.outage.unwrap_or(if q { Duration::from_secs(2) } else { Duration::from_secs(8) }),
            nats_outage: self.nats_outage,
        }
    }
}

/// Everything a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub scenarios: Vec<Accounting>,
    pub hostile: Option<hostile::HostileReport>,
    pub http: Option<http::HttpReport>,
    pub fuzz: Option<fuzz::FuzzReport>,
    pub secrets: Option<crate::secrets::ScanReport>,
    /// What kinds of secret were searched for.
    pub secret_kinds: Vec<String>,
    pub errors: Vec<String>,
    pub run_dir: PathBuf,
    pub elapsed: Duration,
}

impl Report {
    pub fn pass(&self) -> bool {
        self.errors.is_empty()
            && self.scenarios.iter().all(Accounting::pass)
            && self.hostile.as_ref().is_none_or(hostile::HostileReport::pass)
            && self.http.as_ref().is_none_or(http::HttpReport::pass)
            && self.fuzz.as_ref().is_none_or(fuzz::FuzzReport::pass)
            && self.secrets.as_ref().is_some_and(|s| s.leaks.is_empty())
    }

    /// The whole summary: the accounting table, hostile agents, HTTP, fuzzing, secrets,
    /// the verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.scenarios.is_empty() {
            out.push_str("== accounting ==\n");
            out.push_str(&accounting::table(&self.scenarios));
            out.push('\n');
        }
        if let Some(hostile) = &self.hostile {
            let _ = writeln!(out, "== hostile agents on the bus ({:.0}s) ==", hostile.elapsed.as_secs_f64());
            for note in &hostile.notes {
                let _ = writeln!(out, "  - {note}");
            }
            for failure in &hostile.failures {
                let _ = writeln!(out, "  FAIL {failure}");
            }
            let _ = writeln!(out, "  {}", if hostile.pass() { "PASS" } else { "FAIL" });
            out.push('\n');
        }
        if let Some(http) = &self.http {
            let _ = writeln!(out, "== http ({:.0}s) ==", http.elapsed.as_secs_f64());
            for note in &http.notes {
                let _ = writeln!(out, "  - {note}");
            }
            for failure in &http.failures {
                let _ = writeln!(out, "  FAIL {failure}");
            }
            let _ = writeln!(out, "  {}", if http.pass() { "PASS" } else { "FAIL" });
            out.push('\n');
        }
        if let Some(fuzz) = &self.fuzz {
            out.push_str("== fuzzing ==\n");
            out.push_str(&fuzz.table());
            let _ = writeln!(out, "  {}\n", if fuzz.pass() { "PASS" } else { "FAIL" });
        }
        out.push_str("== secrets ==\n");
        match &self.secrets {
            Some(scan) => {
                let _ = writeln!(
                    out,
                    "  {} secrets searched for in {} files ({} lines, {:.1} MB) under {}",
                    scan.secrets,
                    scan.files,
                    scan.lines,
                    scan.bytes as f64 / 1e6,
                    self.run_dir.display()
                );
                let _ = writeln!(out, "  kinds: {}", self.secret_kinds.join(", "));
                for leak in &scan.leaks {
                    let _ =
                        writeln!(out, "  FAIL {} found in {}:{}", leak.label, leak.file.display(), leak.line);
                }
                let _ = writeln!(out, "  {}\n", if scan.leaks.is_empty() { "PASS" } else { "FAIL" });
            }
            None => out.push_str("  FAIL not run\n\n"),
        }
        for error in &self.errors {
            let _ = writeln!(out, "ERROR {error}");
        }
        let _ = writeln!(
            out,
            "{} in {:.0}s (logs: {})",
            if self.pass() { "PASS" } else { "FAIL" },
            self.elapsed.as_secs_f64(),
            self.run_dir.display()
        );
        out
    }
}

/// What the binary sets up before a run: the TLS crypto provider the HTTP clients need
/// (rustls without a built-in one, as in the services) and its own logs, warnings only
/// unless `RUST_LOG` asks for more (the services' logs go to the run directory).
pub fn init_tool() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,natsbus=error,async_nats=off,sqlx=error")
    });
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs the selected steps and the secrets check.
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run_dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => PathBuf::from("target/chaos").join(chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()),
    };
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let needs_binaries = args.only.iter().any(|s| *s != Step::Fuzz);
    let secrets = Secrets::default();
    let mut report = Report { run_dir: run_dir.clone(), ..Report::default() };
    if needs_binaries {
        let bins = Binaries::locate(args.bin_dir.as_deref())?;
        println!("chaos: binaries from {}, logs in {}", bins.dir().display(), run_dir.display());
        let ctx = Ctx { run_dir: run_dir.clone(), bins, secrets: secrets.clone(), sizes: args.sizes() };
        for scenario in Scenario::ALL {
            let step = match scenario {
                Scenario::Kill => Step::Kill,
                Scenario::Nats => Step::Nats,
                Scenario::Deps => Step::Deps,
                Scenario::Sigterm => Step::Sigterm,
                Scenario::Analyzer => Step::Analyzer,
                Scenario::Leader => Step::Leader,
                Scenario::Rolling => Step::Rolling,
                Scenario::Partition => Step::Partition,
            };
            if !args.only.contains(&step) {
                continue;
            }
            println!("chaos: scenario {} ...", scenario.label());
            let accounting = scenarios::run(scenario, &ctx).await;
            println!(
                "chaos: scenario {}: {} in {:.1}s",
                scenario.label(),
                if accounting.pass() { "PASS" } else { "FAIL" },
                accounting.elapsed.as_secs_f64()
            );
            report.scenarios.push(accounting);
        }
        if args.only.contains(&Step::Hostile) {
            let flood = Duration::from_secs(args.hostile_seconds.unwrap_or(if args.quick { 5 } else { 30 }));
            println!("chaos: hostile agents on the bus ({flood:?} of flood) ...");
            let hostile = hostile::run(&ctx, flood).await;
            println!(
                "chaos: hostile agents: {} in {:.1}s",
                if hostile.pass() { "PASS" } else { "FAIL" },
                hostile.elapsed.as_secs_f64()
            );
            report.hostile = Some(hostile);
        }
        if args.only.contains(&Step::Http) {
            println!("chaos: hostile HTTP and schemathesis ...");
            let options = http::SchemathesisOptions {
                executable: args.schemathesis.clone().or_else(default_schemathesis),
                max_examples: args.max_examples.unwrap_or(if args.quick { 5 } else { 100 }),
                seed: 20_261_126,
                workers: 1,
                checks: args.schemathesis_checks.clone(),
            };
            report.http = Some(http::run(&ctx, &options).await);
        }
    }
    if args.only.contains(&Step::Fuzz) {
        let budget = Duration::from_secs(args.fuzz_seconds.unwrap_or(if args.quick { 5 } else { 40 }));
        let seed = args.fuzz_seed.unwrap_or_else(rand::random);
        println!("chaos: fuzzing for {budget:?} (seed {seed}) ...");
        let crash_dir = run_dir.join("fuzz");
        let fuzzed = tokio::task::spawn_blocking(move || fuzz::run(budget, seed, Some(&crash_dir))).await;
        match fuzzed {
            Ok(fuzz) => report.fuzz = Some(fuzz),
            Err(err) => report.errors.push(format!("the fuzzer died: {err}")),
        }
    }
    report.elapsed = started.elapsed();
    // The summary goes into the run directory before the scan, so it is checked too.
    std::fs::write(run_dir.join("summary.txt"), report.render())?;
    report.secrets = Some(secrets.scan(&run_dir)?);
    report.secret_kinds = secrets.kinds();
    if needs_binaries && secrets.is_empty() {
        report.errors.push("no secrets were registered; the secrets check proved nothing".into());
    }
    report.elapsed = started.elapsed();
    std::fs::write(run_dir.join("summary.txt"), report.render())?;
    Ok(report)
}

/// `.stack/venv-chaos/bin/schemathesis` in the workspace, where `make chaos` installs it.
fn default_schemathesis() -> Option<PathBuf> {
    let path = test_support::workspace_root().join(".stack/venv-chaos/bin/schemathesis");
    path.is_file().then_some(path)
}
