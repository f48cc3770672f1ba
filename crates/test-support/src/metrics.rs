//! Checks of what a service serves on `/metrics` and of what it describes.
//!
//! [`check_exposition`] reads the Prometheus text format (0.0.4) and holds it to the
//! rules a scraper and `promtool check metrics` hold it to, plus ours: every family has
//! a `# TYPE` and a non-empty `# HELP`, so a metric recorded without a description fails
//! the test that scrapes it. [`assert_every_metric_described`] finds the metrics a
//! crate's source records and checks its `describe()` names each one, so a metric that
//! no test happens to record cannot slip through either.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// A scrape, read: each family by name.
#[derive(Debug)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

/// One metric family: its `# TYPE`, its `# HELP` (unescaped) and its samples in order.
#[derive(Debug, Default, Clone)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `opspilot_rpc_seconds_bucket`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// The names of the families that have samples.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.families.iter().filter(|(_, f)| !f.samples.is_empty()).map(|(n, _)| n.as_str())
    }
}

const KINDS: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

/// Not base units: Prometheus wants seconds and bytes.
const NON_BASE_UNITS: &[&str] = &[
    "_milliseconds",
    "_microseconds",
    "_nanoseconds",
    "_ms",
    "_minutes",
    "_hours",
    "_kilobytes",
    "_megabytes",
    "_gigabytes",
    "_kib",
    "_mib",
];

/// Reads `text` in the Prometheus text format and checks it: the syntax of every line,
/// metric and label names, a `# TYPE` of a known kind before each family's samples, a
/// non-empty `# HELP` for each family, a family's samples together and no series twice,
/// counters named `_total` (and nothing else), base units, and histograms with
/// cumulative buckets up to `+Inf` that match their `_count`. Every problem is listed.
pub fn check_exposition(text: &str) -> Result<Exposition, Vec<String>> {
    let mut errors = Vec::new();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut typed = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut finished = BTreeSet::new();
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let at = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, [' ', '\t']);
            let keyword = words.next().unwrap_or_default();
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let name = words.next().unwrap_or_default();
            let rest = words.next().unwrap_or_default();
            if !is_metric_name(name) {
                errors.push(format!("line {at}: # {keyword} of an invalid metric name {name:?}"));
                continue;
            }
            let family = families.entry(name.to_owned()).or_default();
            if keyword == "HELP" {
                if !helped.insert(name.to_owned()) {
                    errors.push(format!("line {at}: a second # HELP for {name}"));
                }
                match unescape_help(rest) {
                    Ok(help) => family.help = help,
                    Err(e) => errors.push(format!("line {at}: # HELP of {name}: {e}")),
                }
            } else {
                if !typed.insert(name.to_owned()) {
                    errors.push(format!("line {at}: a second # TYPE for {name}"));
                }
                if !family.samples.is_empty() {
                    errors.push(format!("line {at}: # TYPE of {name} after its samples"));
                }
                let kind = rest.trim();
                if !KINDS.contains(&kind) {
                    errors.push(format!("line {at}: {name} has the unknown type {kind:?}"));
                }
                family.kind = kind.to_owned();
            }
            continue;
        }
        let sample = match parse_sample(line) {
            Ok(sample) => sample,
            Err(e) => {
                errors.push(format!("line {at}: {e}: {line:?}"));
                continue;
            }
        };
        let family_name = family_of(&sample.name, &families);
        if current.as_deref() != Some(family_name.as_str()) {
            if let Some(previous) = current.take() {
                finished.insert(previous);
            }
            if finished.contains(&family_name) {
                errors.push(format!("line {at}: the samples of {family_name} are not all together"));
            }
            current = Some(family_name.clone());
        }
        if !series.insert((sample.name.clone(), sample.labels.clone())) {
            errors.push(format!("line {at}: the series {} {:?} a second time", sample.name, sample.labels));
        }
        families.entry(family_name).or_default().samples.push(sample);
    }
    for (name, family) in &families {
        if family.samples.is_empty() {
            continue;
        }
        check_family(name, family, &mut errors);
    }
    if errors.is_empty() { Ok(Exposition { families }) } else { Err(errors) }
}

/// [`check_exposition`], panicking with every problem and the text.
pub fn assert_exposition(text: &str) -> Exposition {
    match check_exposition(text) {
        Ok(exposition) => exposition,
        Err(errors) => {
            panic!("/metrics is not valid exposition format:\n  {}\n---\n{text}", errors.join("\n  "))
        }
    }
}

/// What every service's `/metrics` has besides being well formed: `opspilot_build_info`
/// = 1 with this build's version and revision, and the standard process metrics.
pub fn assert_service_metrics(text: &str) -> Exposition {
    let exposition = assert_exposition(text);
    let info = exposition
        .family("opspilot_build_info")
        .unwrap_or_else(|| panic!("no opspilot_build_info in:\n{text}"));
    assert_eq!(info.kind, "gauge", "opspilot_build_info");
    assert_eq!(info.samples.len(), 1, "one opspilot_build_info series:\n{text}");
    let labels = &info.samples[0].labels;
    assert_eq!(labels.get("version").map(String::as_str), Some(service_kit::version::VERSION), "{text}");
    assert_eq!(labels.get("revision").map(String::as_str), Some(service_kit::version::REVISION), "{text}");
    assert_eq!(info.samples[0].value, 1.0, "opspilot_build_info");
    for name in service_kit::metrics::PROCESS_METRICS {
        let family = exposition.family(name).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        let value = family.samples.first().map(|s| s.value).unwrap_or_default();
        assert!(value > 0.0 || *name == "process_cpu_seconds_total", "{name} is {value}");
    }
    exposition
}

/// `GET {admin_base}/metrics`: answered 200 in the text format; returns the body.
pub async fn scrape(admin_base: &str) -> String {
    let response = reqwest::get(format!("{admin_base}/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), 200, "GET {admin_base}/metrics");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type:?}");
    response.text().await.expect("the /metrics body")
}

fn check_family(name: &str, family: &Family, errors: &mut Vec<String>) {
    if family.kind.is_empty() {
        errors.push(format!("{name} has no # TYPE"));
    }
    if family.help.trim().is_empty() {
        errors.push(format!("{name} has no # HELP (describe it where it is recorded)"));
    }
    if let Some(unit) = NON_BASE_UNITS.iter().find(|u| name.ends_with(*u) || name.contains(&format!("{u}_")))
    {
        errors.push(format!("{name}: {unit} is not a base unit (seconds, bytes)"));
    }
    let counter = family.kind == "counter";
    if counter != name.ends_with("_total") {
        errors.push(format!(
            "{name}: a {} {}",
            family.kind,
            if counter { "not named _total" } else { "named _total" }
        ));
    }
    match family.kind.as_str() {
        "histogram" => check_histogram(name, family, errors),
        "summary" => {
            for s in &family.samples {
                let ok = if s.name == name {
                    s.labels.get("quantile").is_some_and(|q| q.parse::<f64>().is_ok())
                } else {
                    s.name == format!("{name}_sum") || s.name == format!("{name}_count")
                };
                if !ok {
                    errors.push(format!("{name}: {} {:?} is no summary series", s.name, s.labels));
                }
            }
        }
        _ => {
            for s in &family.samples {
                if s.name != name {
                    errors.push(format!("{name}: the {} has a series {}", family.kind, s.name));
                }
                if counter && (s.value.is_nan() || s.value < 0.0) {
                    errors.push(format!("{name}: the counter is {}", s.value));
                }
            }
        }
    }
}

fn check_histogram(name: &str, family: &Family, errors: &mut Vec<String>) {
    // Per label set (without `le`): its buckets in order and its count.
    let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &family.samples {
        let mut labels = s.labels.clone();
        if s.name == format!("{name}_bucket") {
            match labels.remove("le").map(|le| parse_value(&le)) {
                Some(Ok(le)) => buckets.entry(labels).or_default().push((le, s.value)),
                _ => errors.push(format!("{name}: a bucket without a numeric le: {:?}", s.labels)),
            }
        } else if s.name == format!("{name}_count") {
            counts.insert(labels, s.value);
        } else if s.name != format!("{name}_sum") {
            errors.push(format!("{name}: {} is no histogram series", s.name));
        }
    }
    for (labels, list) in &buckets {
        if list.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
            errors.push(format!("{name} {labels:?}: the last bucket is not le=\"+Inf\""));
        }
        if list.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
            errors.push(format!("{name} {labels:?}: buckets not cumulative in increasing le"));
        }
        let inf = list.last().map(|(_, v)| *v);
        if counts.get(labels).copied() != inf {
            errors.push(format!("{name} {labels:?}: _count is not the +Inf bucket"));
        }
    }
}

/// The family a series belongs to: its own name if typed, else the histogram or
/// summary its suffix points at, else its own name (which then has no TYPE).
fn family_of(series: &str, families: &BTreeMap<String, Family>) -> String {
    if families.get(series).is_some_and(|f| !f.kind.is_empty()) {
        return series.to_owned();
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
    ] {
        if let Some(base) = series.strip_suffix(suffix)
            && families.get(base).is_some_and(|f| kinds.contains(&f.kind.as_str()))
        {
            return base.to_owned();
        }
    }
    series.to_owned()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("invalid timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no space before the value".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Reads `name="value",...}`; returns what follows the closing brace.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("a label without =")?;
        let name = s[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[eq + 1..].trim_start().strip_prefix('"').ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!("invalid escape {:?} in a label value", other.map(|(_, c)| c)));
                    }
                },
                Some((_, '\n')) | None => return Err("an unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("the label {name} twice"));
        }
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by a comma".into());
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        // Rust also takes `inf`, `infinity` and `nan` in any case; Prometheus does not.
        _ if s.chars().any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => {
            Err(format!("invalid value {s:?}"))
        }
        _ => s.parse().map_err(|_| format!("invalid value {s:?}")),
    }
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => return Err(format!("invalid escape {other:?}")),
        }
    }
    Ok(out)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__` (reserved for Prometheus itself).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// The kind of metric a `metrics` macro records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// What a `describe_*!` call said about one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: String,
}

/// Runs `describe` against a recorder of its own and returns every description it
/// gave, by name. A name described twice as different kinds panics.
pub fn described(describe: impl FnOnce()) -> BTreeMap<String, Description> {
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, describe);
    let conflicts = capture.conflicts.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(conflicts.is_empty(), "described twice, differently: {conflicts:?}");
    capture.descriptions.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Capture {
    descriptions: Mutex<BTreeMap<String, Description>>,
    conflicts: Mutex<Vec<String>>,
}

impl Capture {
    fn put(&self, kind: Kind, key: KeyName, unit: Option<Unit>, help: SharedString) {
        let description = Description { kind, unit, help: help.into_owned() };
        let mut all = self.descriptions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(before) = all.insert(key.as_str().to_owned(), description.clone())
            && before != description
        {
            self.conflicts.lock().unwrap_or_else(|e| e.into_inner()).push(key.as_str().to_owned());
        }
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, help: SharedString) {
        self.put(Kind::Counter, key, unit, help);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, help: SharedString) {
        self.put(Kind::Gauge, key, unit, help);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, help: SharedString) {
        self.put(Kind::Histogram, key, unit, help);
    }

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Where a metric is recorded in the source.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub kind: Kind,
    pub at: String,
}

/// Every `counter!`, `gauge!` and `histogram!` in the `.rs` files under `src`, by metric
/// name (one entry per call). A name that is not a string literal is an error: neither
/// these checks nor `make deploy-check` could follow it.
pub fn recorded_in(src: &Path) -> Result<BTreeMap<String, Vec<Recorded>>, Vec<String>> {
    let mut found: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    let mut errors = Vec::new();
    for file in rust_files(src) {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for (index, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (macro_name, kind) in
                [("counter!(", Kind::Counter), ("gauge!(", Kind::Gauge), ("histogram!(", Kind::Histogram)]
            {
                for (pos, _) in line.match_indices(macro_name) {
                    let before = line[..pos].chars().next_back();
                    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                        continue; // describe_counter!, or another macro of that name
                    }
                    let at = format!("{}:{}", file.display(), index + 1);
                    // The name is the macro's first argument, on this line or the next.
                    let after: String = line[pos + macro_name.len()..]
                        .chars()
                        .chain(text.lines().nth(index + 1).unwrap_or_default().chars())
                        .collect();
                    let after = after.trim_start();
                    match after.strip_prefix('"').and_then(|s| s.split_once('"')) {
                        Some((name, _)) => {
                            found.entry(name.to_owned()).or_default().push(Recorded { kind, at })
                        }
                        None => errors.push(format!("{at}: the metric name is not a string literal")),
                    }
                }
            }
        }
    }
    if errors.is_empty() { Ok(found) } else { Err(errors) }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Defines the test `every_metric_recorded_here_is_described` for the invoking crate:
/// [`assert_every_metric_described`] on its `src/`, which only the invoking crate's
/// `CARGO_MANIFEST_DIR` locates. `describe` is the crate's own; the `shared` ones are
/// the describes of crates whose metrics it records through them.
#[macro_export]
macro_rules! every_metric_described_test {
    ($describe:path $(, shared: [$($shared:path),* $(,)?])? $(,)?) => {
        #[test]
        fn every_metric_recorded_here_is_described() {
            let src = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            $crate::metrics::assert_every_metric_described(&src, $describe, &[$($($shared),*)?]);
        }
    };
}

/// The metrics the source under `src` records are exactly the ones `describe` describes
/// (apart from those `shared`, the describes of crates it uses, cover), each as the
/// kind it is recorded as and with HELP text.
pub fn assert_every_metric_described(src: &Path, describe: fn(), shared: &[fn()]) {
    let recorded = recorded_in(src).unwrap_or_else(|errors| panic!("{}", errors.join("\n")));
    let descriptions = described(describe);
    let shared: BTreeSet<String> = shared.iter().flat_map(|d| described(*d).into_keys()).collect();
    let mut errors = Vec::new();
    for (name, calls) in &recorded {
        let Some(description) = descriptions.get(name) else {
            errors.push(format!("{name} (recorded at {}) is not described", calls[0].at));
            continue;
        };
        for call in calls {
            if call.kind != description.kind {
                errors.push(format!(
                    "{name} is described as a {:?} but recorded as a {:?} at {}",
                    description.kind, call.kind, call.at
                ));
            }
        }
        if description.help.trim().is_empty() {
            errors.push(format!("{name} is described without HELP text"));
        }
    }
    for name in descriptions.keys() {
        if !recorded.contains_key(name) && !shared.contains(name) {
            errors.push(format!("{name} is described but nothing under {} records it", src.display()));
        }
    }
    assert!(errors.is_empty(), "metric descriptions out of step with the code:\n  {}", errors.join("\n  "));
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# HELP opspilot_requests_total Requests served.
# TYPE opspilot_requests_total counter
opspilot_requests_total{route="/a",status="200"} 3
opspilot_requests_total{route="/b \"q\" \\ \n",status="500"} 0

# HELP opspilot_latency_seconds How long a request took.
# TYPE opspilot_latency_seconds histogram
opspilot_latency_seconds_bucket{route="/a",le="0.1"} 1
opspilot_latency_seconds_bucket{route="/a",le="1"} 2
opspilot_latency_seconds_bucket{route="/a",le="+Inf"} 3
opspilot_latency_seconds_sum{route="/a"} 4.5
opspilot_latency_seconds_count{route="/a"} 3
# HELP opspilot_rows A summary of rows.
# TYPE opspilot_rows summary
opspilot_rows{quantile="0.5"} 2
opspilot_rows_sum 10
opspilot_rows_count 4
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 12 1700000000000
"#;

    fn errors(text: &str) -> String {
        check_exposition(text).expect_err("must be refused").join("\n")
    }

    #[test]
    fn a_well_formed_scrape_is_read() {
        let exposition = check_exposition(GOOD).unwrap();
        let requests = exposition.family("opspilot_requests_total").unwrap();
        assert_eq!(requests.kind, "counter");
        assert_eq!(requests.help, "Requests served.");
        assert_eq!(requests.samples[1].labels["route"], "/b \"q\" \\ \n");
        assert_eq!(exposition.family("opspilot_latency_seconds").unwrap().samples.len(), 5);
        assert_eq!(exposition.family("process_open_fds").unwrap().samples[0].value, 12.0);
        assert_eq!(exposition.names().count(), 4);
    }

    #[test]
    fn a_family_without_help_or_type_is_refused() {
        let text = "# TYPE opspilot_x_total counter\nopspilot_x_total 1\n";
        assert!(errors(text).contains("opspilot_x_total has no # HELP"), "{}", errors(text));
        let text = "# HELP opspilot_x_total  \n# TYPE opspilot_x_total counter\nopspilot_x_total 1\n";
        assert!(errors(text).contains("no # HELP"), "{}", errors(text));
        let text = "# HELP opspilot_x X.\nopspilot_x 1\n";
        assert!(errors(text).contains("opspilot_x has no # TYPE"), "{}", errors(text));
        let text = "# HELP opspilot_x X.\n# TYPE opspilot_x gauge\nopspilot_x 1\nopspilot_y 2\n";
        assert!(errors(text).contains("opspilot_y has no # TYPE"), "{}", errors(text));
    }

    #[test]
    fn bad_names_types_and_values_are_refused() {
        for (text, wanted) in [
            ("# HELP 1x X.\n# TYPE 1x gauge\n1x 1\n", "invalid metric name"),
            ("# HELP x X.\n# TYPE x gauge\nx{1a=\"b\"} 1\n", "invalid label name"),
            ("# HELP x X.\n# TYPE x gauge\nx{__a=\"b\"} 1\n", "invalid label name"),
            ("# HELP x X.\n# TYPE x gauge\nx{a=b} 1\n", "without quotes"),
            ("# HELP x X.\n# TYPE x gauge\nx{a=\"b\" c=\"d\"} 1\n", "comma"),
            ("# HELP x X.\n# TYPE x gauge\nx{a=\"b\\t\"} 1\n", "invalid escape"),
            ("# HELP x X.\n# TYPE x gauge\nx one\n", "invalid value"),
            ("# HELP x X.\n# TYPE x gauge\nx inf\n", "invalid value"),
            ("# HELP x X.\n# TYPE x gauge\nx 1 2 3\n", "after the timestamp"),
            ("# HELP x X.\n# TYPE x meter\nx 1\n", "unknown type"),
            ("# HELP x X \\q.\n# TYPE x gauge\nx 1\n", "invalid escape"),
            ("# HELP x X.\n# HELP x X.\n# TYPE x gauge\nx 1\n", "a second # HELP"),
            ("# HELP x X.\n# TYPE x gauge\nx 1\n# TYPE x gauge\n", "a second # TYPE"),
            ("# HELP x X.\n# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n", "a second time"),
            (
                "# HELP x X.\n# TYPE x gauge\n# HELP y Y.\n# TYPE y gauge\nx 1\ny 1\nx{a=\"1\"} 1\n",
                "not all together",
            ),
        ] {
            let found = errors(text);
            assert!(found.contains(wanted), "{text:?}: wanted {wanted:?}, got {found}");
        }
    }

    #[test]
    fn naming_conventions_are_held() {
        for (text, wanted) in [
            ("# HELP x_count X.\n# TYPE x_count counter\nx_count 1\n", "not named _total"),
            ("# HELP x_total X.\n# TYPE x_total gauge\nx_total 1\n", "named _total"),
            ("# HELP x_latency_ms X.\n# TYPE x_latency_ms gauge\nx_latency_ms 1\n", "not a base unit"),
            ("# HELP x_total X.\n# TYPE x_total counter\nx_total -1\n", "the counter is -1"),
        ] {
            let found = errors(text);
            assert!(found.contains(wanted), "{text:?}: wanted {wanted:?}, got {found}");
        }
    }

    #[test]
    fn histograms_must_add_up() {
        let head = "# HELP h_seconds H.\n# TYPE h_seconds histogram\n";
        let no_inf = format!("{head}h_seconds_bucket{{le=\"1\"}} 1\nh_seconds_sum 1\nh_seconds_count 1\n");
        assert!(errors(&no_inf).contains("+Inf"), "{}", errors(&no_inf));
        let shrinking = format!(
            "{head}h_seconds_bucket{{le=\"1\"}} 2\nh_seconds_bucket{{le=\"+Inf\"}} 1\nh_seconds_sum 1\nh_seconds_count 1\n"
        );
        assert!(errors(&shrinking).contains("cumulative"), "{}", errors(&shrinking));
        let miscounted =
            format!("{head}h_seconds_bucket{{le=\"+Inf\"}} 2\nh_seconds_sum 1\nh_seconds_count 1\n");
        assert!(errors(&miscounted).contains("_count"), "{}", errors(&miscounted));
    }

    #[test]
    fn descriptions_are_captured_and_compared_with_the_source() {
        fn describe() {
            metrics::describe_counter!("opspilot_a_total", Unit::Count, "A.");
            metrics::describe_histogram!("opspilot_b_seconds", Unit::Seconds, "B.");
        }
        let found = described(describe);
        assert_eq!(found["opspilot_a_total"].kind, Kind::Counter);
        assert_eq!(found["opspilot_b_seconds"].unit, Some(Unit::Seconds));
        assert_eq!(found["opspilot_b_seconds"].help, "B.");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.rs"),
            "fn f() {\n    metrics::counter!(\"opspilot_a_total\").increment(1);\n    metrics::histogram!(\n        \"opspilot_b_seconds\", \"x\" => \"y\")\n        .record(1.0);\n}\n",
        )
        .unwrap();
        assert_every_metric_described(dir.path(), describe, &[]);

        std::fs::write(dir.path().join("b.rs"), "fn g() { metrics::gauge!(\"opspilot_c\").set(1.0); }\n")
            .unwrap();
        let missing = std::panic::catch_unwind(|| assert_every_metric_described(dir.path(), describe, &[]));
        let message = *missing.expect_err("an undescribed metric").downcast::<String>().unwrap();
        assert!(message.contains("opspilot_c (recorded at"), "{message}");

        std::fs::write(dir.path().join("b.rs"), "fn g() { metrics::gauge!(NAME).set(1.0); }\n").unwrap();
        let errors = recorded_in(dir.path()).expect_err("a name that is no literal");
        assert!(errors[0].contains("not a string literal"), "{errors:?}");
    }
}
