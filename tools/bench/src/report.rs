//! The results table and its JSON twin.

use serde::Serialize;

/// One line of the report: the project's figure, the baseline measured in the same
/// run, and their ratio.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) metric: String,
    pub(crate) value: f64,
    pub(crate) unit: String,
    pub(crate) baseline: Option<f64>,
    pub(crate) baseline_name: Option<String>,
    pub(crate) ratio: Option<f64>,
    /// The floor the issue sets, and whether the value meets it.
    pub(crate) floor: Option<String>,
    pub(crate) pass: Option<bool>,
}

impl Row {
    pub(crate) fn new(scenario: &str, metric: &str, value: f64, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            baseline: None,
            baseline_name: None,
            ratio: None,
            floor: None,
            pass: None,
        }
    }

    /// Adds a baseline; the ratio is value / baseline (higher is better for rates).
    pub(crate) fn baseline(mut self, name: &str, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self.baseline_name = Some(name.into());
        self.ratio = (baseline > 0.0).then(|| self.value / baseline);
        self
    }

    pub(crate) fn floor(mut self, text: &str, pass: bool) -> Self {
        self.floor = Some(text.into());
        self.pass = Some(pass);
        self
    }
}

/// The `p` quantile (0..=1) of sorted values; NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

pub(crate) fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<10} {:<60} {:>12} {:<8} {:>12} {:<26} {:>7}  floor",
        "scenario", "metric", "value", "unit", "baseline", "baseline of", "ratio"
    );
    println!("{}", "-".repeat(156));
    for r in rows {
        let baseline = r.baseline.map(fmt).unwrap_or_default();
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
        let floor = match (&r.floor, r.pass) {
            (Some(f), Some(true)) => format!("ok   {f}"),
            (Some(f), Some(false)) => format!("FAIL {f}"),
            _ => String::new(),
        };
        println!(
            "{:<10} {:<60} {:>12} {:<8} {:>12} {:<26} {:>7}  {}",
            r.scenario,
            r.metric,
            fmt(r.value),
            r.unit,
            baseline,
            r.baseline_name.clone().unwrap_or_default(),
            ratio,
            floor
        );
    }
    println!();
}

fn fmt(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Machine description for the report.
pub(crate) fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    serde_json::json!({"cpu": cpu, "cores": cores, "memory_gib": mem_kib / 1024 / 1024})
}
