//! The process-wide Prometheus recorder. Installed once; every service renders it on
//! its `/metrics` endpoint.
//!
//! Every family it serves has HELP text: what the recorder itself adds
//! (`opspilot_build_info`, the standard `process_*` metrics) is described here, and
//! each crate or service that records metrics describes them in a `describe()` of its
//! own, which its `start` passes to [`init`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::version::{REVISION, VERSION};

/// The recorder's handle and the process collector, refreshed on every render.
struct Recorder {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static RECORDER: OnceLock<Option<Recorder>> = OnceLock::new();

/// The process collector's families that every service's `/metrics` has (the standard
/// names of Prometheus's process collector).
pub const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// Latency buckets in seconds, from 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// Installs the recorder (first call) and returns its handle. Returns `None` only if
/// another recorder was installed by someone else in this process.
pub fn install() -> Option<PrometheusHandle> {
    recorder().map(|r| r.handle.clone())
}

/// Installs the recorder if this process has none yet, then runs a service's
/// `describe` (its `metrics::describe_*!` calls) against it. Called at the start of
/// every service's `start`, before anything is recorded: in tests no `main` installs
/// the recorder first, and descriptions given to no recorder are lost.
pub fn init(describe: fn()) {
    install();
    describe();
}

/// Renders the current metrics in the Prometheus text format, with the process
/// metrics read just now. Reads `/proc`: call it off the async threads.
pub fn render() -> String {
    match recorder() {
        Some(recorder) => {
            recorder.process.collect();
            recorder.handle.render()
        }
        None => String::new(),
    }
}

fn recorder() -> Option<&'static Recorder> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS));
            let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => handle,
                Err(err) => {
                    tracing::warn!(error = %err, "prometheus recorder not installed; /metrics will be empty");
                    return None;
                }
            };
            let upkeep = handle.clone();
            // Histograms keep raw samples until upkeep folds them; without it memory grows.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            describe();
            metrics::gauge!("opspilot_build_info", "version" => VERSION, "revision" => REVISION).set(1.0);
            let process = metrics_process::Collector::default();
            process.describe();
            // Once now, so the families exist before the first scrape.
            process.collect();
            Some(Recorder { handle, process })
        })
        .as_ref()
}

/// HELP text of what the recorder records by itself (the process collector describes
/// its own families).
fn describe() {
    metrics::describe_gauge!(
        "opspilot_build_info",
        "Always 1: the version and git revision this binary was built from, as labels."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD_INFO: &str = "opspilot_build_info";

    #[test]
    fn build_and_process_metrics_are_served_described() {
        install();
        let text = render();
        let exposition = test_support::metrics::assert_exposition(&text);
        for name in PROCESS_METRICS.iter().chain([&BUILD_INFO]) {
            let family = exposition.family(name).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
            assert!(!family.help.is_empty(), "{name} has no HELP:\n{text}");
        }
        let info = &exposition.family(BUILD_INFO).unwrap().samples;
        assert_eq!(info.len(), 1, "{text}");
        assert_eq!(info[0].labels.get("version").map(String::as_str), Some(VERSION));
        assert_eq!(info[0].labels.get("revision").map(String::as_str), Some(REVISION));
        assert_eq!(info[0].value, 1.0);
        let fds = exposition.family("process_open_fds").unwrap().samples[0].value;
        assert!(fds > 0.0, "{text}");
    }

    #[test]
    fn init_gives_the_recorder_a_services_descriptions() {
        fn describe() {
            metrics::describe_counter!("opspilot_kit_test_total", "A counter only this test records.");
        }
        init(describe);
        metrics::counter!("opspilot_kit_test_total").increment(1);
        let text = render();
        let exposition = test_support::metrics::assert_exposition(&text);
        let family = exposition.family("opspilot_kit_test_total").unwrap();
        assert_eq!(family.help, "A counter only this test records.");
    }
}
